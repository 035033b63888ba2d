"""Whether a process traces at all, decided without importing OpenTelemetry.

A sidecar traces only when it has somewhere to send spans: an `--otlp-endpoint`, or
`OTEL_EXPORTER_OTLP_ENDPOINT`/`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. Without one, spans nobody
can read would still cost every request (and the SDK ~5 MB of memory), so OpenTelemetry is not
even imported: requests still get an `x-request-id`, trace headers pass through untouched.
`OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn it off even with an endpoint
in the environment; an explicit flag wins over both.
"""

from __future__ import annotations

from collections.abc import Mapping


def tracing_wanted(endpoint_flag: str | None, env: Mapping[str, str]) -> bool:
    if endpoint_flag:
        return True
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )
