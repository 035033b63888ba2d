"""Build one process's OpenTelemetry TracerProvider from the standard `OTEL_*` variables and flags.

Why a per-process object and not only the global provider: a test (or the demo) runs several
sidecars in one interpreter, each with its own `service.name`, exporter and shutdown. `Tracing`
owns exactly one provider; `set_global()` is there for code that wants the OTel global too.

Settings are resolved once, at the edge, by `resolve_settings(options, env)`: explicit options
(CLI flags) win over the environment, which wins over the defaults below. Nothing else in
trustmesh reads `OTEL_*`.

The hot path never waits for the collector: ended spans go into the BatchSpanProcessor's bounded
queue (a deque append) and a background thread exports them. When the collector is down the queue
fills, the oldest spans are dropped, and the failure is reported as one structured log event per
`EXPORT_ERROR_LOG_INTERVAL`, not one line per batch.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, get_args

import structlog
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.version import __version__ as _sdk_version

from trustmesh.clock import Clock, SystemClock
from trustmesh.tracing.otlp_wire import encode_request

_log = structlog.get_logger("trustmesh.tracing")

SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
_SAMPLERS: Final[frozenset[str]] = frozenset(get_args(SamplerName))

# Parent-based, so a sidecar always follows the decision already made upstream (the app's
# `traceparent` sampled flag, or the calling sidecar's): one request is never half-traced.
DEFAULT_SAMPLER: Final[SamplerName] = "parentbased_traceidratio"
# 1.0, the OpenTelemetry default (parentbased_always_on): a newcomer pointing trustmesh at Jaeger
# sees every request. Busy meshes lower it with OTEL_TRACES_SAMPLER_ARG=0.05 or --trace-sample-ratio.
DEFAULT_SAMPLE_RATIO: Final = 1.0
# The OTLP exporter retries within this budget; shorter than the SDK's 10 s so shutdown is prompt
# and a dead collector ties up the export thread less. Overridden by OTEL_EXPORTER_OTLP_TIMEOUT.
DEFAULT_EXPORT_TIMEOUT_S: Final = 5.0
# Queue bound (spans) between the hot path and the export thread; beyond it the oldest are dropped.
DEFAULT_MAX_QUEUE_SIZE: Final = 2048
DEFAULT_SCHEDULE_DELAY_MS: Final = 1000
# One `otlp_export_failed` event per interval, whatever the number of failed batches in between.
EXPORT_ERROR_LOG_INTERVAL_S: Final = 60.0
DEFAULT_SERVICE_NAME: Final = "unknown_service:trustmesh"
TRACES_PATH: Final = "/v1/traces"


@dataclass(frozen=True)
class TracingOptions:
    """Explicit settings (CLI flags). `None` means: take it from the environment, then the default."""

    service_name: str | None = None
    # Base URL of an OTLP/HTTP collector (`http://jaeger:4318`); `/v1/traces` is appended unless present.
    endpoint: str | None = None
    sampler: SamplerName | None = None
    sample_ratio: float | None = None
    disabled: bool | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    export_timeout_s: float | None = None
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    schedule_delay_ms: int = DEFAULT_SCHEDULE_DELAY_MS


@dataclass(frozen=True)
class TracingSettings:
    """The resolved configuration: what `Tracing` will actually do, loggable as one event."""

    enabled: bool
    service_name: str
    traces_endpoint: str | None  # None: spans are made (ids propagate, logs carry them) but not exported
    sampler: SamplerName
    sample_ratio: float
    resource_attributes: Mapping[str, str]
    export_timeout_s: float
    max_queue_size: int
    schedule_delay_ms: int


class TracingConfigError(ValueError):
    """An OTEL_* variable or flag has a value trustmesh cannot use; the message names it."""


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise TracingConfigError(f"{name}={text!r}: expected true or false")


def parse_resource_attributes(text: str) -> dict[str, str]:
    """`OTEL_RESOURCE_ATTRIBUTES` syntax: `key1=value1,key2=value2`, values percent-encoded."""
    attributes: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TracingConfigError(f"OTEL_RESOURCE_ATTRIBUTES item {item!r}: expected key=value")
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def _traces_endpoint(base: str) -> str:
    base = base.strip().rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def resolve_settings(options: TracingOptions, env: Mapping[str, str]) -> TracingSettings:
    """Merge flags over `OTEL_*` over defaults; raise TracingConfigError naming a bad value."""
    disabled = options.disabled
    if disabled is None:
        disabled = _parse_bool("OTEL_SDK_DISABLED", env.get("OTEL_SDK_DISABLED", "false"))

    resource = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    resource.update(options.resource_attributes)
    service_name = (
        options.service_name
        or env.get("OTEL_SERVICE_NAME", "").strip()
        or resource.get("service.name")
        or DEFAULT_SERVICE_NAME
    )
    resource["service.name"] = service_name

    endpoint: str | None
    if options.endpoint:
        endpoint = _traces_endpoint(options.endpoint)
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        # The signal-specific variable is used as-is (OTel specification).
        endpoint = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip()
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        endpoint = _traces_endpoint(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    else:
        # Unlike the SDK we do not default to localhost:4318: a mesh without a collector would log
        # export failures forever. No endpoint = no export; set one to send spans anywhere.
        endpoint = None
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none" and not options.endpoint:
        endpoint = None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise TracingConfigError(f"OTLP endpoint {endpoint!r}: expected an http:// or https:// URL")

    sampler_text = options.sampler or env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    if sampler_text not in _SAMPLERS:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={sampler_text!r}: expected one of {sorted(_SAMPLERS)}")
    ratio = options.sample_ratio
    if ratio is None:
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            ratio = float(arg) if arg else DEFAULT_SAMPLE_RATIO
        except ValueError:
            message = f"OTEL_TRACES_SAMPLER_ARG={arg!r}: expected a number in [0, 1]"
            raise TracingConfigError(message) from None
    if not 0.0 <= ratio <= 1.0:
        raise TracingConfigError(f"sample ratio {ratio!r}: expected a number in [0, 1]")

    timeout = options.export_timeout_s
    if timeout is None:
        text = env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
        try:
            # The specification gives this variable in milliseconds.
            timeout = float(text) / 1000.0 if text else DEFAULT_EXPORT_TIMEOUT_S
        except ValueError:
            raise TracingConfigError(f"OTEL_EXPORTER_OTLP_TIMEOUT={text!r}: expected milliseconds") from None

    return TracingSettings(
        enabled=not disabled,
        service_name=service_name,
        traces_endpoint=endpoint,
        sampler=sampler_text,  # type: ignore[arg-type]  # checked against _SAMPLERS above
        sample_ratio=ratio,
        resource_attributes=MappingProxyType(resource),
        export_timeout_s=timeout,
        max_queue_size=options.max_queue_size,
        schedule_delay_ms=options.schedule_delay_ms,
    )


def build_sampler(name: SamplerName, ratio: float) -> Sampler:
    ratio_sampler = TraceIdRatioBased(ratio)
    table: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio_sampler,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio_sampler),
    }
    return table[name]


# --- quiet, rate-limited export errors ---------------------------------------------------------

# The OTLP exporter reports each failure through stdlib logging (and, with no handler configured,
# Python prints them raw on stderr). While a `_GuardedExporter.export` runs on the export thread,
# this filter swallows those records and remembers the first one for the guard to report.
_capture = threading.local()
_EXPORTER_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.http.transport._requests",
)


class _CaptureExportErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_capture, "active", False):
            # Keep the first message: the cause ("Connection refused"), not the final "gave up".
            if _capture.first_error is None:
                _capture.first_error = record.getMessage()
            return False
        return True


_CAPTURE_FILTER: Final = _CaptureExportErrors()


@dataclass
class ExportStats:
    """Counts kept by the guard; read by tests and worth a metric later."""

    exported_spans: int = 0
    failed_batches: int = 0
    failed_spans: int = 0
    last_error: str | None = None


class _GuardedExporter(SpanExporter):
    """Wraps the OTLP exporter: never raises into the SDK, logs failures at most once per interval."""

    def __init__(
        self,
        inner: SpanExporter,
        *,
        endpoint: str,
        clock: Clock,
        interval_s: float = EXPORT_ERROR_LOG_INTERVAL_S,
    ) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._clock = clock
        self._interval = interval_s
        self._next_report = float("-inf")
        self._pending_batches = 0
        self._pending_spans = 0
        self._failing = False
        self.stats = ExportStats()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        _capture.active, _capture.first_error = True, None
        try:
            result = self._inner.export(spans)
            error = _capture.first_error
        except Exception as exc:  # an exporter bug must not kill the export thread; it is reported below
            result, error = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        finally:
            _capture.active = False
        if result is SpanExportResult.SUCCESS:
            self.stats.exported_spans += len(spans)
            if self._failing:
                self._failing = False
                _log.info("otlp_export_recovered", endpoint=self._endpoint)
            return result
        self._failing = True
        self.stats.failed_batches += 1
        self.stats.failed_spans += len(spans)
        self.stats.last_error = error
        self._pending_batches += 1
        self._pending_spans += len(spans)
        now = self._clock.monotonic()
        if now >= self._next_report:
            self._next_report = now + self._interval
            _log.warning(
                "otlp_export_failed",
                endpoint=self._endpoint,
                error=error or "export failed",
                failed_batches=self._pending_batches,
                dropped_spans=self._pending_spans,
                next_report_in_s=self._interval,
            )
            self._pending_batches = self._pending_spans = 0
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _WireOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter with `otlp_wire`'s encoder: same bytes on the wire, ~10x cheaper.

    Sending (session, retries, compression, headers, timeout) stays the SDK's own `_client`; only
    the protobuf encoding is replaced, because it ran on the export thread inside the proxy's
    process and took a third of the cost of tracing.
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if client is None or self._shutdown:  # a different SDK layout: the SDK's own path
            return super().export(spans)
        data = encode_request(spans)
        if len(data) > self._max_request_size:
            logging.getLogger(_EXPORTER_LOGGERS[0]).warning(
                "Dropping span batch: serialized size %d bytes exceeds max_request_size", len(data)
            )
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if client.export(data).success else SpanExportResult.FAILURE


# --- the per-process object --------------------------------------------------------------------


class Tracing:
    """One process's tracing: its provider, its tracer, its exporter, its shutdown.

    Build it with `setup_tracing(...)`. When disabled (`OTEL_SDK_DISABLED=true`) `provider` is None
    and `tracer` is OpenTelemetry's no-op tracer, so callers need no branches.
    """

    def __init__(
        self,
        settings: TracingSettings,
        provider: TracerProvider | None,
        processor: BatchSpanProcessor | None,
        exporter: _GuardedExporter | None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self._processor = processor
        self._exporter = exporter
        self.tracer: trace.Tracer = (
            provider.get_tracer("trustmesh") if provider is not None else trace.NoOpTracer()
        )
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    @property
    def export_stats(self) -> ExportStats:
        return self._exporter.stats if self._exporter is not None else ExportStats()

    def set_global(self) -> None:
        """Also make this the OTel global provider (allowed once per process by OTel)."""
        if self.provider is not None:
            trace.set_tracer_provider(self.provider)

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is queued now; False if that took longer than `timeout_s`.

        Blocking: from trio, call it through `trio.to_thread.run_sync`.
        """
        if self.provider is None or self._closed:
            return True
        return _run_bounded(self.provider.force_flush, timeout_s, "trustmesh-trace-flush")

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush queued spans for at most `timeout_s`, then stop the export thread. Idempotent.

        Blocking: from trio, `await trio.to_thread.run_sync(tracing.shutdown)`. A dead or silent
        collector costs at most `timeout_s` here; what is left runs on in a daemon thread.
        """
        if self._closed or self.provider is None:
            self._closed = True
            return
        self._closed = True
        provider = self.provider

        def stop() -> bool:
            provider.shutdown()
            return True

        if not _run_bounded(stop, timeout_s, "trustmesh-trace-shutdown"):
            endpoint = self.settings.traces_endpoint
            _log.warning("tracing_shutdown_timeout", timeout_s=timeout_s, endpoint=endpoint)


def _run_bounded(work: Callable[[], bool], timeout_s: float, name: str) -> bool:
    """Run `work` on a daemon thread and wait at most `timeout_s`.

    The SDK's own flush and shutdown ignore their timeouts (opentelemetry-python#4568); a thread
    join is the only bound we can put on an export stuck on a silent collector.
    """
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(work()), name=name, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(outcome and outcome[0])


def setup_tracing(
    options: TracingOptions | None = None,
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    exporter: SpanExporter | None = None,
) -> Tracing:
    """Build a `Tracing` from flags over `env` (pass `os.environ` at the edge).

    `exporter` replaces the OTLP exporter (tests); it still goes through the guard and the batch
    processor, so the hot path behaves the same.
    """
    settings = resolve_settings(options or TracingOptions(), env if env is not None else {})
    if not settings.enabled:
        _log.info("tracing_disabled", reason="OTEL_SDK_DISABLED")
        return Tracing(settings, None, None, None)

    resource = Resource(
        {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": _sdk_version,
            **settings.resource_attributes,
        }
    )
    provider = TracerProvider(
        sampler=build_sampler(settings.sampler, settings.sample_ratio),
        resource=resource,
        # Span processors are called inline on end(); we have one, so no need for the
        # concurrent multi-processor.
    )
    processor: BatchSpanProcessor | None = None
    guard: _GuardedExporter | None = None
    if exporter is None and settings.traces_endpoint is not None:
        exporter = _WireOTLPSpanExporter(endpoint=settings.traces_endpoint, timeout=settings.export_timeout_s)
    if exporter is not None:
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).addFilter(_CAPTURE_FILTER)  # idempotent
        label = settings.traces_endpoint or type(exporter).__name__
        guard = _GuardedExporter(exporter, endpoint=label, clock=clock or SystemClock())
        processor = BatchSpanProcessor(
            guard,
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay_ms,
            max_export_batch_size=min(512, settings.max_queue_size),
            export_timeout_millis=settings.export_timeout_s * 1000,
        )
        provider.add_span_processor(processor)
    _log.info(
        "tracing_configured",
        service_name=settings.service_name,
        endpoint=settings.traces_endpoint,
        sampler=settings.sampler,
        sample_ratio=settings.sample_ratio,
    )
    return Tracing(settings, provider, processor, guard)
