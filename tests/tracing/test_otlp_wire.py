"""otlp_wire writes the same ExportTraceServiceRequest as the SDK's reference encoder."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from trustmesh.tracing.otlp_wire import encode_request


def _spans() -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    resource = Resource({"service.name": "orders", "k": "v"}, schema_url="https://example/schema")
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("trustmesh", "1.2.3", schema_url="https://example/scope")
    other = TracerProvider(resource=Resource({"service.name": "web"}))
    other.add_span_processor(SimpleSpanProcessor(memory))

    remote = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "a=1"), ("other", "x")]),
    )
    attributes: dict[str, AttributeValue] = {
        "http.request.method": "GET",
        "url.path": "/orders/é",
        "server.port": 8443,
        "negative": -5,
        "big": 2**62,
        "ratio": 0.25,
        "flag": True,
        "off": False,
        "list": ["a", "b"],
        "ints": [1, 2, 3],
        "long.value": "x" * 300,
    }
    with tracer.start_as_current_span(
        "GET",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        attributes=attributes,
    ) as server:
        server.add_event("retry", {"attempt": 2})
        server.set_status(Status(StatusCode.ERROR, "upstream_connect_failed"))
        with tracer.start_as_current_span("child", links=[Link(remote, {"why": "batch"})]) as child:
            child.set_status(Status(StatusCode.OK))
    with tracer.start_as_current_span("", kind=SpanKind.CLIENT):
        pass
    try:
        with tracer.start_as_current_span("fails"):
            raise ValueError("boom")
    except ValueError:
        pass
    other.get_tracer("x").start_span("other", kind=SpanKind.PRODUCER).end()
    return list(memory.get_finished_spans())


def test_same_message_as_the_reference_encoder() -> None:
    spans = _spans()
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    reference = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    assert ours == reference
    assert len(ours.resource_spans) == 2
    assert sum(len(s.spans) for r in ours.resource_spans for s in r.scope_spans) == len(spans) == 5


def test_empty_batch() -> None:
    assert encode_request([]) == b""


def test_equal_values_of_different_types_are_not_confused() -> None:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for value in (True, 1, 1.0, "1"):
        tracer.start_span("s", attributes={"v": value}).end()
    spans = list(memory.get_finished_spans())
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    values = [s.attributes[0].value for s in ours.resource_spans[0].scope_spans[0].spans]
    assert [v.WhichOneof("value") for v in values] == [
        "bool_value",
        "int_value",
        "double_value",
        "string_value",
    ]
