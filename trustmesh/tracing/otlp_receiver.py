"""A small OTLP/HTTP trace receiver: the wire format Jaeger speaks on 4318, kept in memory.

Two users: the control plane mounts `otlp_app(store)` so its GUI (issue 7) can show recent traces
without a Jaeger; tests use it as the collector, so what they assert is what went over the wire
(protobuf decoded with opentelemetry-proto), not what the SDK held in memory.

Only `POST /v1/traces` with `application/x-protobuf` (optionally gzip) is accepted, as the
OpenTelemetry exporters send by default. Storage is bounded: the oldest trace is evicted first.
Read side (JSON, for the GUI): `GET /api/traces?limit=N` and `GET /api/traces/{trace_id}`.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import structlog
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no stubs in the venv
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_log = structlog.get_logger("trustmesh.tracing.receiver")

PROTOBUF: Final = "application/x-protobuf"
TRACES_PATH: Final = "/v1/traces"
DEFAULT_MAX_TRACES: Final = 1000
DEFAULT_MAX_SPANS_PER_TRACE: Final = 1000
# Larger than any batch our exporter sends (512 spans), small enough that a bad client can't
# make the control plane buffer much.
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024

_KINDS: Final = {
    Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS: Final = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}

AttrValue = str | bool | int | float | bytes | list[Any] | dict[str, Any] | None


def _value(v: AnyValue) -> AttrValue:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    value: AttrValue = getattr(v, which)
    return value


def _attributes(kvs: Any) -> dict[str, AttrValue]:
    items: list[KeyValue] = list(kvs)
    return {kv.key: _value(kv.value) for kv in items}


@dataclass(frozen=True)
class StoredSpan:
    """One span as received: ids in W3C hex, times in Unix nanoseconds, attributes decoded."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, …
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, AttrValue]
    status_code: str  # UNSET, OK, ERROR
    status_message: str
    service_name: str
    resource: dict[str, AttrValue] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duration_ns(self) -> int:
        return self.end_time_unix_nano - self.start_time_unix_nano


@dataclass(frozen=True)
class TraceSummary:
    """One line of the "recent traces" list."""

    trace_id: str
    root_name: str
    services: list[str]
    span_count: int
    start_time_unix_nano: int
    duration_ns: int
    error: bool


def decode_request(body: bytes) -> list[StoredSpan]:
    """An ExportTraceServiceRequest (protobuf) as flat spans; DecodeError when it is not one."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[StoredSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", "unknown_service"))
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    StoredSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() or None,
                        name=s.name,
                        kind=_KINDS.get(s.kind, "UNSPECIFIED"),
                        start_time_unix_nano=s.start_time_unix_nano,
                        end_time_unix_nano=s.end_time_unix_nano,
                        attributes=_attributes(s.attributes),
                        status_code=_STATUS.get(s.status.code, "UNSET"),
                        status_message=s.status.message,
                        service_name=service,
                        resource=resource,
                        events=[
                            {
                                "name": e.name,
                                "time_unix_nano": e.time_unix_nano,
                                "attributes": _attributes(e.attributes),
                            }
                            for e in s.events
                        ],
                    )
                )
    return spans


class TraceStore:
    """Recent traces in memory, bounded in traces and in spans per trace; thread-safe.

    Eviction is by arrival of a trace's first span (oldest first), which is "least recent" enough
    for a GUI's recent-traces list and keeps every operation O(1) amortised.
    """

    def __init__(
        self, *, max_traces: int = DEFAULT_MAX_TRACES, max_spans_per_trace: int = DEFAULT_MAX_SPANS_PER_TRACE
    ) -> None:
        self._max_traces = max_traces
        self._max_spans = max_spans_per_trace
        self._traces: OrderedDict[str, list[StoredSpan]] = OrderedDict()
        self._lock = threading.Lock()
        self.dropped_spans = 0

    def add(self, spans: list[StoredSpan]) -> None:
        with self._lock:
            for span in spans:
                bucket = self._traces.get(span.trace_id)
                if bucket is None:
                    bucket = self._traces[span.trace_id] = []
                    while len(self._traces) > self._max_traces:
                        _, evicted = self._traces.popitem(last=False)
                        self.dropped_spans += len(evicted)
                if len(bucket) >= self._max_spans:
                    self.dropped_spans += 1
                    continue
                bucket.append(span)

    def spans(self, trace_id: str) -> list[StoredSpan]:
        """Spans of one trace (32 hex digits), ordered by start time; empty if unknown or evicted."""
        with self._lock:
            found = list(self._traces.get(trace_id.lower(), ()))
        return sorted(found, key=lambda s: s.start_time_unix_nano)

    def trace_ids(self) -> list[str]:
        """Known trace ids, newest first."""
        with self._lock:
            return list(reversed(self._traces))

    def all_spans(self) -> list[StoredSpan]:
        with self._lock:
            return [s for bucket in self._traces.values() for s in bucket]

    def recent(self, limit: int = 20) -> list[TraceSummary]:
        """Summaries of the `limit` newest traces, newest first."""
        with self._lock:
            buckets = [(tid, list(b)) for tid, b in reversed(self._traces.items())][:limit]
        summaries = []
        for trace_id, spans in buckets:
            ids = {s.span_id for s in spans}
            roots = [s for s in spans if s.parent_span_id is None or s.parent_span_id not in ids]
            root = min(roots or spans, key=lambda s: s.start_time_unix_nano)
            start = min(s.start_time_unix_nano for s in spans)
            end = max(s.end_time_unix_nano for s in spans)
            summaries.append(
                TraceSummary(
                    trace_id=trace_id,
                    root_name=f"{root.service_name}: {root.name}",
                    services=sorted({s.service_name for s in spans}),
                    span_count=len(spans),
                    start_time_unix_nano=start,
                    duration_ns=end - start,
                    error=any(s.status_code == "ERROR" for s in spans),
                )
            )
        return summaries

    def __len__(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._traces.values())


def _body_bytes(body: bytes, encoding: str, limit: int) -> bytes | None:
    """Decompress gzip/deflate without letting a small body expand past `limit`; None when it would."""
    if encoding in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise ValueError(f"unsupported content-encoding {encoding!r}")
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, limit + 1)
    return None if len(out) > limit else out


def otlp_app(store: TraceStore, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
    """The receiver as an ASGI app (serve with hypercorn, or mount under the control plane)."""

    async def export(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != PROTOBUF:
            return Response(f"expected {PROTOBUF}\n", status_code=415, media_type="text/plain")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return Response("body too large\n", status_code=413, media_type="text/plain")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return Response("body too large\n", status_code=413, media_type="text/plain")
        try:
            raw = _body_bytes(
                bytes(body), request.headers.get("content-encoding", "").strip().lower(), max_body_bytes
            )
        except (ValueError, zlib.error) as exc:
            return Response(f"{exc}\n", status_code=400, media_type="text/plain")
        if raw is None:
            return Response("body too large\n", status_code=413, media_type="text/plain")
        try:
            spans = decode_request(raw)
        except DecodeError as exc:
            _log.warning("otlp_receive_rejected", reason="decode_error", error=str(exc), bytes=len(raw))
            return Response("invalid ExportTraceServiceRequest\n", status_code=400, media_type="text/plain")
        store.add(spans)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)

    async def recent(request: Request) -> Response:
        text = request.query_params.get("limit", "20")
        limit = int(text) if text.isdigit() else 20
        return JSONResponse([asdict(s) for s in store.recent(min(limit, 1000))])

    async def one_trace(request: Request) -> Response:
        spans = store.spans(str(request.path_params["trace_id"]))
        if not spans:
            return JSONResponse({"error": "trace not found"}, status_code=404)
        return JSONResponse([_jsonable(asdict(s)) for s in spans])

    return Starlette(
        routes=[
            Route(TRACES_PATH, export, methods=["POST"]),
            Route("/api/traces", recent, methods=["GET"]),
            Route("/api/traces/{trace_id}", one_trace, methods=["GET"]),
        ]
    )


def _jsonable(value: Any) -> Any:
    """Bytes attribute values (rare) as hex, so the JSON view never fails."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
