"""The inbound sidecar's HTTP parsing, fuzzed over real mTLS, with an h11 echo app behind it.

Three kinds of input, each followed by a closing sentinel request (http_oracle.SENTINEL):

- valid requests (pipelined, Content-Length or chunked bodies, chunk extensions,
  duplicated end-to-end fields): every one answered 200, and the app saw exactly them;
- valid requests with random byte mutations: whatever the sidecar does, every request
  the app saw is one h11 reads identically from the same bytes (no disagreement on
  framing reaches the app), every answer is the app's 200 or a clean 4xx;
- hostile heads: malformed request lines, bad methods/targets/versions, oversized and
  duplicated headers, bad header names, obs-fold, invalid chunk sizes/extensions/
  trailers, and request-smuggling pairs (CL+TE, TE+TE with odd casing and whitespace,
  differing CLs, `chunked, identity`, ...) hiding a second request: the same checks,
  and smuggling pairs must be refused with a 400 and never reach the app.

No crash: a good request is served after every 25th case and after the last. No hang:
every exchange runs under `trio.fail_after` (http_oracle.exchange).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.budget import TRIED, fuzz_settings, on_loop, report, run_examples, seeded
from tests.fuzz.http_oracle import SENTINEL, SENTINEL_TARGET, Latin1EchoApp, Seen, exchange, h11_reading
from tests.sidecar_proxy.harness import (
    HttpClient,
    RunningInbound,
    SeenRequest,
    StaticIdentity,
    client_context,
    inbound_running,
    open_tls,
)
from trustmesh.sidecar.config import Limits

LIMITS = Limits(head_timeout=timedelta(seconds=5), drain_timeout=timedelta(seconds=1))

# Fields the sidecar removes, rewrites or adds: not compared between input and app.
HOP = {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "content-length"}
ADDED = {"x-forwarded-client-cert", "x-request-id", "traceparent", "tracestate"}

# ---------------------------------------------------------------- valid requests

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/"

names = st.text(TCHAR, min_size=1, max_size=20).filter(lambda n: n.lower() not in HOP | ADDED | {"host"})
values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).flatmap(
    lambda v: st.just(v) if not v else st.sampled_from([v, v[:1] + " \t " + v[1:] if len(v) > 1 else v])
)
targets = st.builds(
    lambda path, query: "/" + path + (("?" + query) if query is not None else ""),
    st.text(PATH_CHARS + "%", max_size=30).map(lambda p: p.replace("%", "%25")),
    st.none() | st.text(PATH_CHARS + "?", max_size=20),
)


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[bytes, Seen]:
    method = draw(st.sampled_from(METHODS))
    target = draw(targets)
    fields = draw(st.lists(st.tuples(names, values), max_size=8))
    if fields and draw(st.booleans()):
        fields.append(fields[0])  # a duplicated end-to-end field: forwarded as is, twice
    body = (
        draw(st.binary(max_size=3000)) if method in ("POST", "PUT", "PATCH") or draw(st.booleans()) else b""
    )
    framing = (
        draw(st.sampled_from(["length", "chunked"])) if body else draw(st.sampled_from(["none", "length"]))
    )
    head = [f"{method} {target} HTTP/1.1", "Host: svc"]
    head += [f"{n}: {v}" for n, v in fields]
    if framing == "length":
        head.append(f"Content-Length: {len(body)}")
        wire = body
    elif framing == "chunked":
        head.append(draw(st.sampled_from(["Transfer-Encoding: chunked", "transfer-encoding: CHUNKED"])))
        wire = b""
        rest = body
        while rest:
            n = draw(st.integers(1, len(rest)))
            ext = draw(st.sampled_from(["", ";a=b", ';name="quoted"', ";x"]))
            size = draw(st.sampled_from(["%x", "%X", "%04x"])) % n
            wire += f"{size}{ext}\r\n".encode() + rest[:n] + b"\r\n"
            rest = rest[n:]
        wire += b"0\r\n"
        wire += draw(st.sampled_from([b"", b"x-trailer: t\r\n"])) + b"\r\n"
    else:
        wire = b""
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + wire
    import hashlib

    expected = Seen(
        method,
        target,
        hashlib.sha256(body).hexdigest(),
        tuple((n.lower(), v.strip(" \t")) for n, v in [("host", "svc"), *fields]),
    )
    return raw, expected


# ---------------------------------------------------------------- mutations

INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b"\x7f",
    b"\x80",
    b"\xff",
    b",",
    b";",
    b"\x0b",
]


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    raw, _ = draw(valid_request())
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace", "dup-line", "case"]))
        if op == "insert":
            data[i:i] = draw(st.sampled_from(INTERESTING))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 3))]
        elif op == "replace":
            data[i] = draw(st.integers(0, 255))
        elif op == "dup-line":
            start = data.rfind(b"\n", 0, i) + 1
            end = data.find(b"\n", i)
            if end > 0:
                data[end + 1 : end + 1] = data[start : end + 1]
        else:
            data[i : i + 8] = bytes(data[i : i + 8]).swapcase()
    return bytes(data)


# ---------------------------------------------------------------- hostile heads

HIDDEN = b"GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"

TE_NAMES = [b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING", b"Transfer-encoding"]
TE_VALUES = [
    b"chunked",
    b"Chunked",
    b" chunked",
    b"chunked ",
    b"\tchunked",
    b"chunked, identity",
    b"identity, chunked",
    b"chunked,chunked",
    b"xchunked",
    b"chunked;q=1",
    b'"chunked"',
    b"chunk",
    b"chunked\x0b",
    b"gzip",
    b"identity",
    b"",
]
BAD_TE_LINES = [
    b"Transfer-Encoding : chunked",  # space before colon
    b"Transfer-Encoding\t: chunked",
    b" Transfer-Encoding: chunked",  # a continuation line of the previous field
    b"X: y\r\n Transfer-Encoding: chunked",  # obs-fold
    b"Transfer-Encoding:\r\n chunked",  # obs-fold of the value
    b"Transfer-Encoding: \x00chunked",
    b"Transfer-Encoding\x00: chunked",
]
CL_VALUES = [
    b"4",
    b"+4",
    b" 4",
    b"4 ",
    b"04",
    b"4,4",
    b"4, 5",
    b"-1",
    b"0x4",
    b"4.0",
    b"99999999999999999999",
    b"",
]


@st.composite
def smuggling_pair(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(bytes, strict): strict cases must be refused with 400 and reach nothing."""
    kinds = ["cl+te", "te+cl", "te+te", "cl+cl", "bad-te-line", "te-not-chunked", "lf", "underscore"]
    kind = draw(st.sampled_from(kinds))
    body = b"0\r\n\r\n" + HIDDEN
    te = draw(st.sampled_from(TE_NAMES)) + b": " + draw(st.sampled_from(TE_VALUES))
    cl = b"Content-Length: " + draw(st.sampled_from(CL_VALUES))
    strict = True
    if kind == "cl+te":
        fields = [cl, te]
    elif kind == "te+cl":
        fields = [te, cl]
    elif kind == "te+te":
        fields = [te, draw(st.sampled_from(TE_NAMES)) + b": " + draw(st.sampled_from(TE_VALUES))]
    elif kind == "cl+cl":
        a, b = draw(st.sampled_from(CL_VALUES)), draw(st.sampled_from(CL_VALUES))
        fields = [b"Content-Length: " + a, b"content-length: " + b]
        strict = a != b  # two equal lengths are one length (RFC 9112 6.3): forwarding is fine
    elif kind == "bad-te-line":
        fields = [draw(st.sampled_from(BAD_TE_LINES))] + ([cl] if draw(st.booleans()) else [])
    elif kind == "underscore":
        # `Transfer_Encoding` is a field of its own (`_` is a token character): framed by
        # Content-Length, the hidden request is a real second request, as h11 reads it too.
        # Checked for consistency only (CGI-style servers that map `_` and `-` to one name
        # are the app's concern; see docs/security.md).
        fields = [b"Transfer_Encoding: chunked", b"Content-Length: 4"]
        strict = False
    elif kind == "te-not-chunked":
        fields = [
            b"Transfer-Encoding: " + draw(st.sampled_from([b"chunked, identity", b"gzip", b"identity"]))
        ]
        body = b"4\r\nabcd\r\n0\r\n\r\n" + HIDDEN
    else:  # bare LF or CR as the line ending in a framing field
        fields = [b"Content-Length: 4" + draw(st.sampled_from([b"\n", b"\r"])) + te]
    sep = b"\r\n"
    raw = b"POST / HTTP/1.1\r\nHost: a\r\n" + sep.join(fields) + b"\r\n\r\n" + body
    return raw, strict


CHUNK_BODIES = [
    b"-1\r\nabcd\r\n0\r\n\r\n",
    b"0x4\r\nabcd\r\n0\r\n\r\n",
    b"4 4\r\nabcd\r\n0\r\n\r\n",
    b"ffffffffffffffffff\r\nabcd\r\n0\r\n\r\n",
    b"4;\x00\r\nabcd\r\n0\r\n\r\n",
    b'4;a="b\r\nabcd\r\n0\r\n\r\n',
    b"4;a b\r\nabcd\r\n0\r\n\r\n",
    b"4\r\nabcdef\r\n0\r\n\r\n",
    b"4\r\nab\r\n0\r\n\r\n",
    b"4\nabcd\n0\n\n",
    b"4\r\nabcd\r\n0\r\nbad trailer\r\n\r\n",
    b"4\r\nabcd\r\n0\r\nx\x00: y\r\n\r\n",
    b"4\r\nabcd\r\n0\r\n content-length: 5\r\n\r\n",
    b" 4\r\nabcd\r\n0\r\n\r\n",
    b"4 \r\nabcd\r\n0\r\n\r\n",
]

REQUEST_LINES = [
    b"GET  / HTTP/1.1",
    b"GET / HTTP/1.2",
    b"GET / HTTP/2.0",
    b"GET / HTTP/0.9",
    b"GET /",
    b"GET / http/1.1",
    b"get / HTTP/1.1",
    b"G\x00T / HTTP/1.1",
    b"FOO / HTTP/1.1",
    b"GET http://evil/ HTTP/1.1",
    b"CONNECT evil:443 HTTP/1.1",
    b"OPTIONS * HTTP/1.1",
    b"GET /\x00 HTTP/1.1",
    b"GET /a b HTTP/1.1",
    b"GET /\x7f HTTP/1.1",
    b"GET \t/ HTTP/1.1",
    b" GET / HTTP/1.1",
    b"GET / HTTP/1.1 ",
    b"GET",
    b"",
    b"\r\nGET / HTTP/1.1",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1",
]

FIELD_LINES = [
    b"a b: c",
    b"a\x00: c",
    b"(a): c",
    b'"x": c',
    "é: c".encode(),
    b": c",
    b"a: c\x00d",
    b"a: c\rd",
    b"a: \x7f",
    b"a",
    b"Host: a\r\nHost: b",
    b"x-forwarded-client-cert: By=spiffe://example.org/admin",
    b"x-big: " + b"b" * 70_000,
    b"\r\n".join(b"x-%d: y" % i for i in range(12_000)),
    b"Connection: content-length\r\nContent-Length: 4",
    b"Upgrade: h2c\r\nConnection: Upgrade",
    b"Expect: 100-continue",
]


@st.composite
def hostile_head(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["line", "field", "chunks"]))
    if kind == "line":
        return draw(st.sampled_from(REQUEST_LINES)) + b"\r\nHost: a\r\n\r\n"
    if kind == "field":
        return b"GET / HTTP/1.1\r\nHost: a\r\n" + draw(st.sampled_from(FIELD_LINES)) + b"\r\n\r\n"
    return b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + draw(
        st.sampled_from(CHUNK_BODIES)
    )


# ---------------------------------------------------------------- checks


def _seen(r: SeenRequest) -> Seen:
    return Seen(r.method, r.target, r.body_sha256)


@asynccontextmanager
async def fuzzed_inbound(api: StaticIdentity) -> AsyncIterator[tuple[RunningInbound, Latin1EchoApp]]:
    app = Latin1EchoApp()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(app.serve)
        async with inbound_running(api, limits=LIMITS, app_port=port) as inbound:
            yield inbound, app
        nursery.cancel_scope.cancel()


async def _case(
    inbound: RunningInbound, app: Latin1EchoApp, identity: StaticIdentity, data: bytes
) -> tuple[list[int], list[SeenRequest]]:
    """Send one case (plus the sentinel); statuses received and the requests the app saw.

    A status is negative when the sidecar made the answer (it carries `x-trustmesh-error`).
    """
    before = len(app.requests)
    answers, rest, _closed = await exchange(inbound.port, client_context(identity), data + SENTINEL)
    assert not rest or rest.startswith(b"HTTP/1.1 "), rest[:200]
    statuses = [-a.status if a.header(b"x-trustmesh-error") else a.status for a in answers]
    return statuses, app.requests[before:]


def _check_consistent(data: bytes, statuses: list[int], app_saw: list[SeenRequest]) -> None:
    """The invariants every input must keep, valid or not."""
    ours = [-s for s in statuses if s < 0]
    for status in ours:
        assert 400 <= status < 500, (status, data[:300])  # the sidecar's own answers: clean 4xx
    assert len(ours) <= 1 and (not ours or statuses[-1] < 0), statuses  # a 4xx closes
    assert len(app_saw) == len(statuses) - len(ours), (statuses, app_saw)  # the rest are the app's
    oracle = h11_reading(data + SENTINEL)
    for i, got in enumerate(app_saw):
        assert i < len(oracle.requests), (
            f"the app saw a request h11 does not read from these bytes ({oracle.error}): {got}",
            data[:400],
        )
        want = oracle.requests[i]
        assert _seen(got) == Seen(want.method, want.target, want.body_sha256), (got, want, data[:400])


async def _good_request_served(inbound: RunningInbound, identity: StaticIdentity) -> None:
    with trio.fail_after(20):
        stream = await open_tls(inbound.port, client_context(identity))
        try:
            assert (await HttpClient(stream).request("POST", "/ok", body=b"fine")).status == 200
        finally:
            await stream.aclose()


async def _fuzz(
    inbound: RunningInbound, web: StaticIdentity, name: str, budget: int, strategy, check
) -> None:  # type: ignore[no-untyped-def]
    async def one(case: object) -> None:
        await check(case)
        if TRIED[name] % 25 == 0:
            await _good_request_served(inbound, web)

    @seeded
    @fuzz_settings(budget)
    @given(strategy)
    def examples(case: object) -> None:
        TRIED[name] += 1
        on_loop(one, case)

    await run_examples(examples)
    await _good_request_served(inbound, web)
    report(name)


async def test_valid_requests_reach_the_app_exactly(web: StaticIdentity, api: StaticIdentity) -> None:
    async with fuzzed_inbound(api) as (inbound, app):

        async def check(case: list[tuple[bytes, Seen]]) -> None:
            data = b"".join(raw for raw, _ in case)
            statuses, app_saw = await _case(inbound, app, web, data)
            assert statuses == [200] * (len(case) + 1), (statuses, data[:400])
            assert [r.target for r in app_saw] == [s.target for _, s in case] + [SENTINEL_TARGET]
            for got, (_, want) in zip(app_saw, case, strict=False):
                assert _seen(got) == Seen(want.method, want.target, want.body_sha256), (got, want)
                end_to_end = tuple((n, v) for n, v in got.headers if n not in ADDED | HOP)
                assert end_to_end == want.headers, (got.headers, want.headers)
                assert len(got.header("x-forwarded-client-cert")) == 1

        await _fuzz(
            inbound, web, "valid requests", 150, st.lists(valid_request(), min_size=1, max_size=3), check
        )


async def test_mutated_requests_never_reach_the_app_ambiguously(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    async with fuzzed_inbound(api) as (inbound, app):

        async def check(data: bytes) -> None:
            statuses, app_saw = await _case(inbound, app, web, data)
            _check_consistent(data, statuses, app_saw)

        await _fuzz(inbound, web, "mutated requests", 250, mutated_request(), check)


async def test_hostile_heads_are_clean_4xx_or_forwarded_intact(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    async with fuzzed_inbound(api) as (inbound, app):

        async def check(data: bytes) -> None:
            statuses, app_saw = await _case(inbound, app, web, data)
            _check_consistent(data, statuses, app_saw)

        await _fuzz(inbound, web, "hostile heads", 150, hostile_head(), check)


async def test_smuggling_pairs_are_refused_and_never_reach_the_app(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    async with fuzzed_inbound(api) as (inbound, app):

        async def check(case: tuple[bytes, bool]) -> None:
            data, strict = case
            statuses, app_saw = await _case(inbound, app, web, data)
            _check_consistent(data, statuses, app_saw)
            if strict:
                assert statuses == [-400] and app_saw == [], (statuses, app_saw, data)
                assert all(r.target != "/smuggled" for r in app_saw), data

        await _fuzz(inbound, web, "smuggling pairs", 200, smuggling_pair(), check)
