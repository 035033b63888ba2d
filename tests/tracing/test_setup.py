"""Tracing set-up: OTEL_* and flags; export off the hot path; quiet when the collector is gone."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from trustmesh.clock import ManualClock
from trustmesh.tracing.setup import (
    DEFAULT_SAMPLE_RATIO,
    DEFAULT_SAMPLER,
    EXPORT_ERROR_LOG_INTERVAL_S,
    TracingConfigError,
    TracingOptions,
    resolve_settings,
    setup_tracing,
)


def events(logs: io.StringIO, name: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == name]


# --- settings --------------------------------------------------------------------------------------


def test_defaults_export_nothing_and_sample_everything_parent_based() -> None:
    s = resolve_settings(TracingOptions(), {})
    assert s.enabled and s.traces_endpoint is None
    assert (s.sampler, s.sample_ratio) == (DEFAULT_SAMPLER, DEFAULT_SAMPLE_RATIO)
    assert (DEFAULT_SAMPLER, DEFAULT_SAMPLE_RATIO) == ("parentbased_traceidratio", 1.0)


def test_standard_environment_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318/",
        "OTEL_SERVICE_NAME": "orders",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,team=pay%20ments",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
    }
    s = resolve_settings(TracingOptions(), env)
    assert s.traces_endpoint == "http://jaeger:4318/v1/traces"
    assert s.service_name == "orders" and s.resource_attributes["service.name"] == "orders"
    assert s.sample_ratio == 0.25
    assert s.resource_attributes["deployment.environment"] == "staging"
    assert s.resource_attributes["team"] == "pay ments"
    assert s.export_timeout_s == 2.5
    # The signal-specific endpoint is taken as-is.
    s = resolve_settings(TracingOptions(), {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:1/custom"})
    assert s.traces_endpoint == "http://c:1/custom"


def test_flags_win_over_environment() -> None:
    env = {"OTEL_SERVICE_NAME": "env", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://e:1", "OTEL_SDK_DISABLED": "1"}
    flags = TracingOptions(service_name="flag", endpoint="http://flag:4318", sample_ratio=0.5, disabled=False)
    s = resolve_settings(flags, env)
    assert (s.service_name, s.traces_endpoint, s.sample_ratio, s.enabled) == (
        "flag",
        "http://flag:4318/v1/traces",
        0.5,
        True,
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "lots"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "sample ratio"),
        ({"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "jaeger:4318"}, "http://"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], names: str) -> None:
    with pytest.raises(TracingConfigError, match=names):
        resolve_settings(TracingOptions(), env)


def test_sdk_disabled_gives_a_no_op_tracer() -> None:
    tracing = setup_tracing(env={"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"})
    assert not tracing.enabled and tracing.provider is None
    with tracing.tracer.start_as_current_span("x") as span:
        assert not span.is_recording()
    tracing.shutdown()


def test_providers_are_per_process_object_not_global() -> None:
    a = setup_tracing(TracingOptions(service_name="a"))
    b = setup_tracing(TracingOptions(service_name="b"))
    try:
        assert a.provider is not None and b.provider is not None and a.provider is not b.provider
        assert a.provider.resource.attributes["service.name"] == "a"
        assert b.provider.resource.attributes["service.name"] == "b"
    finally:
        a.shutdown()
        b.shutdown()


# --- export never on the hot path ------------------------------------------------------------------


class StuckExporter(SpanExporter):
    """A collector that never answers: export() blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait()
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_a_stuck_collector_never_blocks_span_end() -> None:
    stuck = StuckExporter()
    tracing = setup_tracing(TracingOptions(max_queue_size=100, schedule_delay_ms=1), exporter=stuck)
    try:
        with tracing.tracer.start_as_current_span("first"):
            pass
        assert stuck.entered.wait(30)  # the export thread is now blocked inside the exporter
        for i in range(10_000):  # would never finish if end() waited for the exporter
            tracing.tracer.start_span(f"s{i}").end()
    finally:
        stuck.release.set()
        tracing.shutdown(timeout_s=10)
    # The queue is bounded: most of the 10 000 were dropped, not buffered.
    assert stuck.exported <= 1 + 100


class FailingExporter(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_export_failures_are_logged_once_per_interval(captured_logs: io.StringIO) -> None:
    clock = ManualClock()
    failing = FailingExporter()
    tracing = setup_tracing(exporter=failing, clock=clock)
    try:
        for _ in range(3):
            tracing.tracer.start_span("x").end()
            assert tracing.force_flush()
        assert failing.calls == 3
        assert len(events(captured_logs, "otlp_export_failed")) == 1
        clock.advance(EXPORT_ERROR_LOG_INTERVAL_S)
        tracing.tracer.start_span("x").end()
        tracing.force_flush()
    finally:
        tracing.shutdown()
    reported = events(captured_logs, "otlp_export_failed")
    assert len(reported) == 2
    assert reported[1]["failed_batches"] == 3  # the two suppressed ones and this one
    assert tracing.export_stats.failed_batches == 4 and tracing.export_stats.failed_spans == 4


async def test_unreachable_collector_fails_nothing(dead_endpoint: str, captured_logs: io.StringIO) -> None:
    """The real OTLP exporter against a closed port: spans end, nothing raises, one quiet event."""
    tracing = setup_tracing(TracingOptions(endpoint=dead_endpoint, export_timeout_s=0.5, max_queue_size=64))
    try:
        for batch in range(2):
            for i in range(200):
                with tracing.tracer.start_as_current_span(f"req{batch}.{i}") as span:
                    span.set_attribute("i", i)
            await trio.to_thread.run_sync(tracing.force_flush)
    finally:
        await trio.to_thread.run_sync(tracing.shutdown)
    stats = tracing.export_stats
    assert stats.exported_spans == 0 and stats.failed_batches >= 2
    failed = events(captured_logs, "otlp_export_failed")
    assert len(failed) == 1
    assert failed[0]["endpoint"] == f"{dead_endpoint}/v1/traces"
    assert "Failed to export" in str(failed[0]["error"])  # OpenTelemetry's own words, as one field
    # The OTLP exporter's own stdlib records were swallowed, not printed line by line.
    assert captured_logs.getvalue().count("Failed to export") == 1
