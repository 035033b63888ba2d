"""Trace context on raw header lists: W3C `traceparent`/`tracestate` in and out, B3 accepted in.

Sans-I/O and per request on the hot path, so it works on the sidecar's own representation
(`list[tuple[bytes, bytes]]`, names in any case), scans each list once, and builds no OpenTelemetry
objects unless a context was actually sent.

Two calls, one on each side of the sidecar's span:

    incoming = extract(headers)                     # parent (or None: new trace) + x-request-id
    ... start the span with incoming.parent ...
    headers = inject(headers, incoming, span.get_span_context())   # what the app/upstream receives

`inject` drops every trace header the request came with and writes a `traceparent` naming the
sidecar's span, so the next hop continues the trace from it. When the request came with B3, B3 is
written back too (same style), so B3-only apps downstream stay in the trace.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

# Re-exported: `propagation` was their home first, and callers that trace read them from here.
from trustmesh.tracing.request_id import MAX_REQUEST_ID_LEN as MAX_REQUEST_ID_LEN
from trustmesh.tracing.request_id import REQUEST_ID_HEADER as REQUEST_ID_HEADER
from trustmesh.tracing.request_id import new_request_id as new_request_id
from trustmesh.tracing.request_id import valid_request_id

Headers = list[tuple[bytes, bytes]]
Style = Literal["w3c", "b3", "b3multi"]


_HEX_AND_DASH: Final = b"0123456789abcdef-"
_B3_SINGLE_RE: Final = re.compile(
    rb"([0-9a-f]{16}|[0-9a-f]{32})-([0-9a-f]{16})(?:-([01d]))?(?:-[0-9a-f]{16})?"
)
_HEX16_OR_32: Final = re.compile(rb"[0-9a-f]{16}|[0-9a-f]{32}")
_HEX16: Final = re.compile(rb"[0-9a-f]{16}")
# W3C trace-context §3.3.1: key = simple-key | tenant@system, value = printable without `,` and `=`.
_TRACESTATE_KEY: Final = re.compile(
    r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
)
_TRACESTATE_VALUE: Final = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
MAX_TRACESTATE_MEMBERS: Final = 32

_SAMPLED: Final = 0x01
# Header (lowercase) -> role; one dict lookup per header is the whole cost of a request without any.
_ROLE: Final[dict[bytes, int]] = {
    b"traceparent": 1,
    b"tracestate": 2,
    b"b3": 3,
    b"x-b3-traceid": 4,
    b"x-b3-spanid": 5,
    b"x-b3-sampled": 6,
    b"x-b3-flags": 7,
    b"x-b3-parentspanid": 8,
    REQUEST_ID_HEADER: 9,
}
# Every field `inject` rewrites: a proxy that writes its own head strips these and adds
# `serialize_fields(inject([], ...))`, without building a header list per request.
TRACE_HEADERS: Final = frozenset(_ROLE)


class TraceParent(NamedTuple):
    """The ids one hop passes to the next: which trace, which span is the parent, sampled or not."""

    trace_id: int
    span_id: int
    sampled: bool


def parse_traceparent(value: bytes) -> TraceParent | None:
    """W3C `traceparent` (version 00, and later versions by their 00 prefix); None when invalid."""
    # Hand-checked rather than a regex: this runs on every traced request, and slicing plus one
    # `translate` is about 4x faster than `re.fullmatch` with groups.
    v = value.strip(b" \t")
    if len(v) < 55 or v[2] != 0x2D or v[35] != 0x2D or v[52] != 0x2D:
        return None
    head = v[:55]
    # Only lowercase hex and the three dashes checked above (int() alone would accept "_", "+", "A").
    if head.translate(None, _HEX_AND_DASH) or head.count(b"-") != 3:
        return None
    version = head[:2]
    if version == b"ff":
        return None
    # Version 00 has exactly four fields; later versions may append `-more`.
    if len(v) > 55 and (version == b"00" or v[55] != 0x2D):
        return None
    trace_id, span_id = int(head[3:35], 16), int(head[36:52], 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, bool(int(head[53:55], 16) & _SAMPLED))


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    return b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")


def parse_tracestate(value: str) -> tuple[tuple[str, str], ...] | None:
    """W3C `tracestate` list members in order; None when any member is invalid (then it is dropped)."""
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in value.split(","):
        item = item.strip(" \t")
        if not item:
            continue  # empty list-members are allowed and ignored
        key, sep, val = item.partition("=")
        valid = sep and _TRACESTATE_KEY.fullmatch(key) and _TRACESTATE_VALUE.fullmatch(val)
        if not valid or key in seen:
            return None
        seen.add(key)
        members.append((key, val))
    if len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return tuple(members)


def format_tracestate(members: tuple[tuple[str, str], ...]) -> bytes:
    return ",".join(f"{k}={v}" for k, v in members).encode("ascii")


def parse_b3_single(value: bytes) -> TraceParent | None:
    """`b3: {TraceId}-{SpanId}[-{Sampled}[-{ParentSpanId}]]`; a bare sampling flag carries no parent."""
    m = _B3_SINGLE_RE.fullmatch(value.strip(b" \t"))
    if m is None:
        return None
    trace_hex, span_hex, sampling = m.groups()
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    # `d` (debug) implies sampled. No flag means "deferred": like OpenTelemetry's B3 propagator,
    # we treat it as not sampled, so the parent-based sampler keeps the request untraced.
    return TraceParent(trace_id, span_id, sampling in (b"1", b"d"))


def parse_b3_multi(
    trace_id: bytes | None, span_id: bytes | None, sampled: bytes | None, flags: bytes | None
) -> TraceParent | None:
    """`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (`1`/`0`, legacy `true`/`false`), `X-B3-Flags`."""
    if trace_id is None or span_id is None:
        return None
    trace_id, span_id = trace_id.strip(b" \t"), span_id.strip(b" \t")
    if not _HEX16_OR_32.fullmatch(trace_id) or not _HEX16.fullmatch(span_id):
        return None
    tid, sid = int(trace_id, 16), int(span_id, 16)
    if tid == 0 or sid == 0:
        return None
    is_sampled = (flags is not None and flags.strip() == b"1") or (
        sampled is not None and sampled.strip().lower() in (b"1", b"true", b"d")
    )
    return TraceParent(tid, sid, is_sampled)


class IncomingContext(NamedTuple):
    """What a request brought: its trace parent (None: start a new trace) and its request id.

    A NamedTuple, not a frozen dataclass: built once per request, and a frozen dataclass's
    `__init__` costs several times more.
    """

    parent: SpanContext | None
    request_id: bytes
    request_id_generated: bool
    style: Style | None  # which format the parent came in, so `inject` can answer in kind

    def otel_context(self) -> Context | None:
        """The OpenTelemetry Context to pass as `context=` when starting the child span."""
        if self.parent is None:
            return None
        return trace.set_span_in_context(NonRecordingSpan(self.parent))

    @property
    def request_id_str(self) -> str:
        return self.request_id.decode("ascii")


def extract(headers: Headers) -> IncomingContext:
    """Read the trace parent and x-request-id from a request's headers (one pass, any name case).

    Precedence: a valid `traceparent` (with its `tracestate`), else `b3`, else `x-b3-*`. Invalid
    headers are ignored: the request then starts a new trace, it is never rejected.
    """
    traceparent = tracestate = b3 = request_id = None
    b3_multi: dict[int, bytes] | None = None
    for name, value in headers:
        role = _ROLE.get(name.lower())
        if role is None:
            continue
        if role == 1:
            traceparent = value
        elif role == 2:
            # Several tracestate headers are one list (RFC 9110 field combination).
            tracestate = value if tracestate is None else tracestate + b"," + value
        elif role == 3:
            b3 = value
        elif role == 9:
            request_id = value
        else:
            if b3_multi is None:
                b3_multi = {}
            b3_multi[role] = value

    rid_generated = request_id is None or not valid_request_id(request_id)
    rid = new_request_id() if rid_generated else request_id
    assert rid is not None

    style: Style | None = None
    found: TraceParent | None = None
    if traceparent is not None and (found := parse_traceparent(traceparent)) is not None:
        style = "w3c"
    elif b3 is not None and (found := parse_b3_single(b3)) is not None:
        style, tracestate = "b3", None
    elif b3_multi is not None:
        found = parse_b3_multi(b3_multi.get(4), b3_multi.get(5), b3_multi.get(6), b3_multi.get(7))
        style, tracestate = ("b3multi" if found is not None else None), None
    if found is None:
        return IncomingContext(None, rid, rid_generated, None)

    state = None
    if tracestate is not None:
        members = parse_tracestate(tracestate.decode("latin-1"))
        state = TraceState(list(members)) if members else None
    parent = SpanContext(
        trace_id=found.trace_id,
        span_id=found.span_id,
        is_remote=True,
        trace_flags=TraceFlags(_SAMPLED if found.sampled else 0),
        trace_state=state,
    )
    return IncomingContext(parent, rid, rid_generated, style)


def inject(headers: Headers, incoming: IncomingContext, span_context: SpanContext | None) -> Headers:
    """The headers to send on: trace headers rewritten to continue from `span_context`.

    With no valid `span_context` (tracing disabled) the trace headers pass through untouched, so a
    sidecar without tracing is transparent. Otherwise the result has exactly one `traceparent` and
    one `x-request-id` (the request's, kept or generated here).
    """
    if span_context is None or not span_context.is_valid:
        if not incoming.request_id_generated:
            return headers
        out = [(n, v) for n, v in headers if n.lower() != REQUEST_ID_HEADER]
        out.append((REQUEST_ID_HEADER, incoming.request_id))
        return out

    out = []
    for name, value in headers:
        role = _ROLE.get(name.lower())
        if role is None:
            out.append((name, value))
    sampled = span_context.trace_flags.sampled
    out.append((b"traceparent", format_traceparent(span_context.trace_id, span_context.span_id, sampled)))
    if span_context.trace_state:
        out.append((b"tracestate", format_tracestate(tuple(span_context.trace_state.items()))))
    if incoming.style == "b3":
        b3 = b"%032x-%016x-%s" % (span_context.trace_id, span_context.span_id, b"1" if sampled else b"0")
        out.append((b"b3", b3))
    elif incoming.style == "b3multi":
        out.append((b"x-b3-traceid", b"%032x" % span_context.trace_id))
        out.append((b"x-b3-spanid", b"%016x" % span_context.span_id))
        out.append((b"x-b3-sampled", b"1" if sampled else b"0"))
    # Exactly one x-request-id goes on: the one this request is known by in logs and spans.
    out.append((REQUEST_ID_HEADER, incoming.request_id))
    return out


def next_hop_fields(incoming: IncomingContext, span_context: SpanContext) -> bytes:
    """`serialize_fields(inject([], incoming, span_context))`: the trace fields a proxy appends.

    Why a second way to the same bytes: it runs for every request and attempt, and the common case
    (W3C or no incoming context, no tracestate) is one format operation instead of a header list.
    """
    if span_context.is_valid and not span_context.trace_state and incoming.style in _PLAIN_STYLES:
        return b"traceparent: 00-%032x-%016x-%s\r\nx-request-id: %s\r\n" % (
            span_context.trace_id,
            span_context.span_id,
            b"01" if span_context.trace_flags & _SAMPLED else b"00",
            incoming.request_id,
        )
    return serialize_fields(inject([], incoming, span_context))


_PLAIN_STYLES: Final = (None, "w3c")


def serialize_fields(fields: Headers) -> bytes:
    """`name: value\\r\\n` for each field, as a proxy appends them to a head it writes."""
    return b"".join([name + b": " + value + b"\r\n" for name, value in fields])
