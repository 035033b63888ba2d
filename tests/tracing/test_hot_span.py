"""The sidecar's request spans (`HotSpan`, `Recorder`, the batch append): the SDK's results, cheaper.

Each shortcut is checked against what the SDK itself does with the same input: the sampling
decision, the protobuf the reference encoder writes, and where ended spans go.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind

from trustmesh.tracing.batch_append import span_sink
from trustmesh.tracing.hot_span import HotSpan, Recorder
from trustmesh.tracing.otlp_wire import encode_request
from trustmesh.tracing.setup import Tracing, TracingOptions, setup_tracing
from trustmesh.tracing.spans import MeshTracer

TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ORDERS = "spiffe://example.org/ns/default/sa/orders"


class Captured(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _tracing(sampler: str = "parentbased_traceidratio", ratio: float = 1.0) -> tuple[Tracing, Captured]:
    captured = Captured()
    options = TracingOptions(service_name="web", sampler=sampler, sample_ratio=ratio)  # type: ignore[arg-type]
    return setup_tracing(options, env={}, exporter=captured), captured


def _one_request(tracer: MeshTracer, app_headers: list[tuple[bytes, bytes]]) -> None:
    """An outbound request with a failed and a good attempt, and the inbound side of the good one."""
    with tracer.outbound(app_headers, method=b"POST", target=b"/orders?x=1", service="orders") as request:
        with request.attempt(endpoint_address="127.0.0.1", endpoint_port=8443, attempt=0) as first:
            first.finish(503, error_code="upstream_connect_failed")
        with request.attempt(
            endpoint_address="127.0.0.1", endpoint_port=8443, peer_spiffe_id=ORDERS, attempt=1
        ) as second:
            wire = second.forward_headers([])
            with tracer.inbound(
                wire,
                method=b"POST",
                target=b"/orders?x=1",
                peer_spiffe_id="spiffe://example.org/ns/default/sa/web",
                peer_address="127.0.0.1",
                peer_port=50123,
                server_address="127.0.0.1",
                server_port=8443,
            ) as server:
                server.set_policy("allow", 7, policy="web-to-orders", rule=0, reason="matched")
                server.span.record_exception(ValueError("noted"))
                server.finish(201, response_bytes=12)
            second.finish(201)
        request.finish(201)


@pytest.mark.parametrize("app_headers", [[], [(b"traceparent", TP), (b"tracestate", b"vendor=a")]])
def test_hot_spans_encode_as_the_reference_encoder_does(app_headers: list[tuple[bytes, bytes]]) -> None:
    tracing, captured = _tracing()
    try:
        _one_request(MeshTracer(tracing.tracer, service="web"), app_headers)
        assert tracing.force_flush()
    finally:
        tracing.shutdown()
    spans = captured.spans
    assert spans and all(type(s) is HotSpan for s in spans)  # the fast encoder's branch ran
    assert len(spans) == (4 if not app_headers else 3)  # INTERNAL root only without app context
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert ours == ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    encoded = [s for r in ours.resource_spans for sc in r.scope_spans for s in sc.spans]
    assert {s.trace_id for s in encoded} == {spans[0].context.trace_id.to_bytes(16, "big")}  # one trace


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_root_decisions_are_the_ratio_samplers(ratio: float) -> None:
    tracing, _ = _tracing(ratio=ratio)
    recorder = Recorder.for_tracer(tracing.tracer)
    assert recorder is not None
    reference = TraceIdRatioBased(ratio)
    sampled = 0
    for _ in range(2000):
        span = recorder.start("GET", None, SpanKind.CLIENT, {})
        ctx = span.get_span_context()
        expected = reference.should_sample(None, ctx.trace_id, "GET").decision.is_sampled()
        assert ctx.trace_flags.sampled is expected
        assert ctx.trace_flags.random_trace_id  # W3C level 2 flag, as the SDK sets it on roots
        sampled += expected
        span.end()
    tracing.shutdown()
    if 0 < ratio < 1:
        assert 0.5 * ratio * 2000 < sampled < 1.5 * ratio * 2000
    else:
        assert sampled == ratio * 2000


def test_always_off_starts_no_recorded_span() -> None:
    tracing, captured = _tracing(sampler="parentbased_always_off")
    _one_request(MeshTracer(tracing.tracer, service="web"), [])
    tracing.force_flush()
    tracing.shutdown()
    assert captured.spans == []


def test_a_full_batch_wakes_the_export_thread_through_the_fast_append() -> None:
    captured = Captured()
    options = TracingOptions(service_name="web", sample_ratio=1.0, schedule_delay_ms=600_000)
    tracing = setup_tracing(options, env={}, exporter=captured)
    recorder = Recorder.for_tracer(tracing.tracer)
    assert recorder is not None and span_sink(recorder.processor) is not None  # the fast append
    for _ in range(600):  # more than one batch of 512; the timer alone would wait 10 minutes
        recorder.start("GET", None, SpanKind.SERVER, {}).end()
    deadline = time.monotonic() + 10
    while len(captured.spans) < 512 and time.monotonic() < deadline:
        time.sleep(0.01)
    exported_by_wake_up = len(captured.spans)
    tracing.force_flush()
    tracing.shutdown()
    assert exported_by_wake_up >= 512
    assert len(captured.spans) == 600


def test_a_processor_added_later_sees_every_span_after_it() -> None:
    tracing, captured = _tracing()
    assert tracing.provider is not None
    recorder = Recorder.for_tracer(tracing.tracer)
    assert recorder is not None
    recorder.start("before", None, SpanKind.SERVER, {}).end()
    memory = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(memory))
    recorder.start("after", None, SpanKind.SERVER, {}).end()
    tracing.force_flush()
    tracing.shutdown()
    assert [s.name for s in captured.spans] == ["before", "after"]
    assert [s.name for s in memory.get_finished_spans()] == ["after"]


def test_after_shutdown_spans_are_refused_as_the_sdk_refuses_them(caplog: pytest.LogCaptureFixture) -> None:
    tracing, captured = _tracing()
    recorder = Recorder.for_tracer(tracing.tracer)
    assert recorder is not None
    tracing.shutdown()
    with caplog.at_level(logging.INFO, logger="opentelemetry.sdk._shared_internal"):
        recorder.start("late", None, SpanKind.SERVER, {}).end()  # no error, nothing exported
    # The span went the SDK's way (its shutdown check), not onto a queue nobody drains.
    assert any("Shutdown called, ignoring" in r.getMessage() for r in caplog.records), caplog.records
    assert captured.spans == []


def test_no_fast_sink_without_exactly_one_batch_processor() -> None:
    tracing, _ = _tracing()
    assert tracing.provider is not None
    tracing.provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    recorder = Recorder.for_tracer(tracing.tracer)
    assert recorder is not None
    assert span_sink(recorder.processor) is None
    tracing.shutdown()


def test_a_full_queue_drops_as_the_sdk_does(caplog: pytest.LogCaptureFixture) -> None:
    """The export thread stuck on a slow collector: the queue fills, and the SDK's path drops and says so."""
    release = threading.Event()

    class Stuck(Captured):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            release.wait(10)
            return super().export(spans)

    stuck = Stuck()
    options = TracingOptions(service_name="web", sample_ratio=1.0, max_queue_size=4)
    tracing = setup_tracing(options, env={}, exporter=stuck)
    recorder = Recorder.for_tracer(tracing.tracer)
    assert recorder is not None
    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk._shared_internal"):
        for _ in range(20):  # the worker takes at most one batch of 4, then waits in export
            recorder.start("GET", None, SpanKind.SERVER, {}).end()
    release.set()
    tracing.shutdown()
    # The SDK logs the first drop (its logger filters repeats); a silent deque would log none.
    assert any("Queue full" in r.getMessage() for r in caplog.records)
    assert len(stuck.spans) <= 8  # 12 or more of the 20 were dropped, none queued past the bound
