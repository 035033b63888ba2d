"""W3C trace context and B3 on raw header lists: what the next hop receives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from trustmesh.tracing.propagation import (
    REQUEST_ID_HEADER,
    TraceParent,
    extract,
    format_traceparent,
    format_tracestate,
    inject,
    next_hop_fields,
    parse_b3_multi,
    parse_b3_single,
    parse_traceparent,
    parse_tracestate,
    serialize_fields,
)

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN = 0x00F067AA0BA902B7
TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MY_SPAN = 0x1111111111111111

ids = st.integers(min_value=1, max_value=2**128 - 1)
span_ids = st.integers(min_value=1, max_value=2**64 - 1)


def child(sampled: bool = True) -> SpanContext:
    return SpanContext(TRACE, MY_SPAN, is_remote=False, trace_flags=TraceFlags(1 if sampled else 0))


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


# --- traceparent -----------------------------------------------------------------------------------


def test_traceparent_spec_example() -> None:
    assert parse_traceparent(TP) == TraceParent(TRACE, SPAN, True)
    assert parse_traceparent(TP[:-2] + b"00") == TraceParent(TRACE, SPAN, False)


def test_traceparent_rejects_what_the_spec_rejects() -> None:
    bad = [
        b"",
        TP.upper(),  # hex must be lowercase
        b"ff" + TP[2:],  # version ff is invalid
        TP.replace(b"4bf92f3577b34da6a3ce929d0e0e4736", b"0" * 32),  # all-zero trace id
        TP.replace(b"00f067aa0ba902b7", b"0" * 16),  # all-zero parent id
        TP + b"-extra",  # version 00 has exactly four fields
        TP[:-1],
        TP.replace(b"-", b"_"),
        b"00-4bf92f3577b34da6a3ce929d0e0e473_-00f067aa0ba902b7-01",  # int() would accept "_"
    ]
    for value in bad:
        assert parse_traceparent(value) is None, value


def test_traceparent_future_version_keeps_known_fields() -> None:
    assert parse_traceparent(b"01" + TP[2:] + b"-whatever") == TraceParent(TRACE, SPAN, True)
    assert parse_traceparent(b"01" + TP[2:]) == TraceParent(TRACE, SPAN, True)


@given(ids, span_ids, st.booleans())
def test_traceparent_round_trip(trace_id: int, span_id: int, sampled: bool) -> None:
    assert parse_traceparent(format_traceparent(trace_id, span_id, sampled)) == TraceParent(
        trace_id, span_id, sampled
    )


@given(st.binary(max_size=80))
def test_traceparent_parser_never_raises(value: bytes) -> None:
    result = parse_traceparent(value)
    if result is not None:
        assert 0 < result.trace_id < 2**128 and 0 < result.span_id < 2**64


# --- tracestate ------------------------------------------------------------------------------------


def test_tracestate_members_and_tenant_keys() -> None:
    assert parse_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,") == (
        ("rojo", "00f067aa0ba902b7"),
        ("congo", "t61rcWkgMzE"),
    )
    assert parse_tracestate("tenant@vendor=x") == (("tenant@vendor", "x"),)


def test_tracestate_invalid_is_dropped_whole() -> None:
    assert parse_tracestate("Upper=1") is None
    assert parse_tracestate("a=1,a=2") is None  # duplicate key
    assert parse_tracestate("a=") is None
    assert parse_tracestate(",".join(f"k{i}=v" for i in range(33))) is None


tracestate_keys = st.from_regex(r"[a-z][_0-9a-z\-*/]{0,20}", fullmatch=True)
tracestate_values = st.from_regex(r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]{1,30}", fullmatch=True)


@given(st.dictionaries(tracestate_keys, tracestate_values, max_size=32))
def test_tracestate_round_trip(members: dict[str, str]) -> None:
    items = tuple(members.items())
    assert parse_tracestate(format_tracestate(items).decode()) == items


@given(st.text(max_size=200))
def test_tracestate_parser_never_raises(value: str) -> None:
    parse_tracestate(value)


# --- B3 --------------------------------------------------------------------------------------------


def test_b3_single_forms() -> None:
    assert parse_b3_single(b"%032x-%016x-1" % (TRACE, SPAN)) == TraceParent(TRACE, SPAN, True)
    assert parse_b3_single(b"%032x-%016x-d-%016x" % (TRACE, SPAN, 5)) == TraceParent(TRACE, SPAN, True)
    assert parse_b3_single(b"%032x-%016x-0" % (TRACE, SPAN)) == TraceParent(TRACE, SPAN, False)
    # 64-bit trace ids are accepted and zero-extended.
    assert parse_b3_single(b"a3ce929d0e0e4736-%016x-1" % SPAN) == TraceParent(0xA3CE929D0E0E4736, SPAN, True)
    # Deferred (no flag) is not sampled, as in OpenTelemetry's B3 propagator.
    assert parse_b3_single(b"%032x-%016x" % (TRACE, SPAN)) == TraceParent(TRACE, SPAN, False)
    for sampling_only in (b"0", b"1", b"d", b"", b"%032x" % TRACE):
        assert parse_b3_single(sampling_only) is None


def test_b3_multi() -> None:
    t, s = b"%032x" % TRACE, b"%016x" % SPAN
    assert parse_b3_multi(t, s, b"1", None) == TraceParent(TRACE, SPAN, True)
    assert parse_b3_multi(t, s, b"true", None) == TraceParent(TRACE, SPAN, True)
    assert parse_b3_multi(t, s, None, b"1") == TraceParent(TRACE, SPAN, True)
    assert parse_b3_multi(t, s, b"0", None) == TraceParent(TRACE, SPAN, False)
    assert parse_b3_multi(t, None, b"1", None) is None
    assert parse_b3_multi(b"xyz", s, b"1", None) is None


@given(ids, span_ids, st.sampled_from([b"0", b"1", b"d"]))
def test_b3_single_round_trip(trace_id: int, span_id: int, flag: bytes) -> None:
    parsed = parse_b3_single(b"%032x-%016x-%s" % (trace_id, span_id, flag))
    assert parsed == TraceParent(trace_id, span_id, flag != b"0")


@given(st.binary(max_size=80))
def test_b3_parser_never_raises(value: bytes) -> None:
    parse_b3_single(value)


# --- extract / inject: what the app behind the sidecar receives ------------------------------------


def test_continues_the_apps_traceparent_and_keeps_tracestate() -> None:
    headers = [(b"Host", b"o"), (b"TraceParent", TP), (b"tracestate", b"rojo=1"), (b"X-Request-Id", b"ab")]
    incoming = extract(headers)
    assert incoming.parent is not None
    assert (incoming.parent.trace_id, incoming.parent.span_id) == (TRACE, SPAN)
    assert incoming.parent.is_remote and incoming.parent.trace_flags.sampled
    assert incoming.request_id == b"ab" and not incoming.request_id_generated

    ctx = SpanContext(TRACE, MY_SPAN, False, TraceFlags(1), incoming.parent.trace_state)
    out = inject(headers, incoming, ctx)
    assert header(out, b"traceparent") == [b"00-%032x-%016x-01" % (TRACE, MY_SPAN)]
    assert header(out, b"tracestate") == [b"rojo=1"]
    assert header(out, REQUEST_ID_HEADER) == [b"ab"]
    assert header(out, b"host") == [b"o"]


def test_no_context_means_new_trace_and_a_generated_request_id() -> None:
    incoming = extract([(b"host", b"x")])
    assert incoming.parent is None and incoming.style is None
    assert incoming.request_id_generated and len(incoming.request_id) == 32
    out = inject([(b"host", b"x")], incoming, child())
    assert header(out, REQUEST_ID_HEADER) == [incoming.request_id]
    assert parse_traceparent(header(out, b"traceparent")[0]) == TraceParent(TRACE, MY_SPAN, True)


def test_request_ids_are_distinct() -> None:
    assert len({extract([]).request_id for _ in range(1000)}) == 1000


def test_unusable_request_id_is_replaced() -> None:
    for bad in (b"", b"a b", b"x" * 129, b"\x00"):
        incoming = extract([(b"x-request-id", bad)])
        assert incoming.request_id_generated
        out = inject([(b"x-request-id", bad)], incoming, child())
        assert header(out, REQUEST_ID_HEADER) == [incoming.request_id]


def test_b3_input_is_answered_in_kind_and_with_w3c() -> None:
    headers = [(b"b3", b"%032x-%016x-1" % (TRACE, SPAN))]
    incoming = extract(headers)
    assert incoming.style == "b3" and incoming.parent is not None and incoming.parent.span_id == SPAN
    out = inject(headers, incoming, child())
    assert header(out, b"b3") == [b"%032x-%016x-1" % (TRACE, MY_SPAN)]
    assert header(out, b"traceparent") == [b"00-%032x-%016x-01" % (TRACE, MY_SPAN)]

    multi = [(b"X-B3-TraceId", b"%032x" % TRACE), (b"X-B3-SpanId", b"%016x" % SPAN), (b"X-B3-Sampled", b"1")]
    incoming = extract(multi)
    assert incoming.style == "b3multi"
    out = inject(multi, incoming, child(sampled=False))
    assert header(out, b"x-b3-spanid") == [b"%016x" % MY_SPAN]
    assert header(out, b"x-b3-sampled") == [b"0"]
    assert len(out) == 5  # the stale x-b3-* were dropped: three new, traceparent, request id


def test_traceparent_wins_over_b3() -> None:
    headers = [(b"b3", b"%032x-%016x-1" % (1, 2)), (b"traceparent", TP)]
    incoming = extract(headers)
    assert incoming.style == "w3c" and incoming.parent is not None and incoming.parent.trace_id == TRACE


def test_invalid_traceparent_falls_back_to_b3_then_to_a_new_trace() -> None:
    incoming = extract([(b"traceparent", b"garbage"), (b"b3", b"%032x-%016x-1" % (TRACE, SPAN))])
    assert incoming.style == "b3"
    assert extract([(b"traceparent", b"garbage")]).parent is None


def test_untraced_sidecar_is_transparent() -> None:
    headers = [(b"traceparent", TP), (b"x-request-id", b"abc")]
    assert inject(headers, extract(headers), None) == headers


NAMES = [b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"X-Request-Id", b"a"]


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.binary(max_size=60)), max_size=8))
def test_any_headers_yield_exactly_one_traceparent_and_request_id(headers: list[tuple[bytes, bytes]]) -> None:
    incoming = extract(headers)
    out = inject(headers, incoming, child())
    assert header(out, b"traceparent") == [b"00-%032x-%016x-01" % (TRACE, MY_SPAN)]
    assert header(out, REQUEST_ID_HEADER) == [incoming.request_id]
    assert [h for h in out if h[0] == b"a"] == [h for h in headers if h[0] == b"a"]


@given(
    st.lists(st.tuples(st.sampled_from(NAMES), st.binary(max_size=60)), max_size=8),
    st.booleans(),
    st.lists(st.sampled_from(["a", "b", "vendor"]), max_size=2, unique=True),
)
def test_next_hop_fields_are_the_injected_headers_serialized(
    headers: list[tuple[bytes, bytes]], sampled: bool, state_keys: list[str]
) -> None:
    """The proxies' fast path writes exactly what `inject` would, whatever came in (W3C, B3, junk)."""
    incoming = extract(headers)
    span = SpanContext(
        TRACE,
        MY_SPAN,
        is_remote=False,
        trace_flags=TraceFlags(1 if sampled else 0),
        trace_state=TraceState([(k, "1") for k in state_keys]) if state_keys else None,
    )
    assert next_hop_fields(incoming, span) == serialize_fields(inject([], incoming, span))


def test_next_hop_fields_plain_w3c() -> None:
    incoming = extract([(b"traceparent", TP), (b"x-request-id", b"abc")])
    assert next_hop_fields(incoming, child(sampled=False)) == (
        b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-00\r\nx-request-id: abc\r\n"
    )


B3_SINGLE = b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"traceparent", TP), (b"tracestate", b"vendor=1")],
        [(b"b3", B3_SINGLE)],
        [(b"x-b3-traceid", b"%032x" % TRACE), (b"x-b3-spanid", b"%016x" % SPAN), (b"x-b3-sampled", b"1")],
    ],
    ids=["none", "w3c-with-state", "b3-single", "b3-multi"],
)
def test_next_hop_fields_answer_each_style_as_inject_does(headers: list[tuple[bytes, bytes]]) -> None:
    incoming = extract(headers)
    assert incoming.parent is not None or not headers
    fields = next_hop_fields(incoming, child())
    assert fields == serialize_fields(inject([], incoming, child()))
    assert fields.startswith(b"traceparent: 00-")
