"""Without an OTLP endpoint a sidecar never imports OpenTelemetry (memory, start-up, hot path)."""

from __future__ import annotations

import subprocess
import sys

from trustmesh.tracing.switch import tracing_wanted


def test_the_sidecar_process_code_does_not_import_opentelemetry() -> None:
    code = (
        "import sys\n"
        "import trustmesh.cli.sidecar, trustmesh.sidecar.app, trustmesh.sidecar.telemetry\n"
        "from trustmesh.tracing.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "import structlog; structlog.get_logger('t').info('hello')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
    assert '"event": "hello"' in done.stderr


def test_tracing_is_on_only_with_an_endpoint() -> None:
    assert not tracing_wanted(None, {})
    assert tracing_wanted("http://jaeger:4318", {})
    assert tracing_wanted(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"})
    assert tracing_wanted(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing_wanted(
        None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318", "OTEL_SDK_DISABLED": "true"}
    )
    assert not tracing_wanted(
        None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318", "OTEL_TRACES_EXPORTER": "none"}
    )
    # An explicit flag wins over the environment.
    assert tracing_wanted("http://jaeger:4318", {"OTEL_SDK_DISABLED": "true"})
