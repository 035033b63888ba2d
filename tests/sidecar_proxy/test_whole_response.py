"""The whole-response fast path against the general path it stands in for (no sockets).

`parse_whole_response` may only say "fast" for a response whose relayed bytes the general
path (`ResponseParser` + `forward_response_head`) would write the same way, field for field;
for anything else it must decline and leave the response to the general path.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.sidecar.http.errors import HttpError
from trustmesh.sidecar.http.headers import forward_response_head, response_framing
from trustmesh.sidecar.http.parser import EndOfMessage, ResponseHead, ResponseParser
from trustmesh.sidecar.http.whole_response import forward_whole_response, parse_whole_response

MAX_HEAD = 64 * 1024

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 01:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
    b"Last-Modified: Sat, 28 Nov 2026 00:59:00 GMT\r\nConnection: keep-alive\r\n"
    b'Keep-Alive: timeout=75\r\nETag: "6560-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100
)


def general(data: bytes, *, close: bool) -> tuple[bytes, bool, int] | None:
    """(bytes sent downstream, upstream reusable, status) by the general path, if one read holds it all."""
    parser = ResponseParser(MAX_HEAD)
    try:
        parser.feed(data)
    except HttpError:
        return None
    out: list[bytes] = []
    head: ResponseHead | None = None
    framing = ""
    while parser.events:
        ev = parser.events.popleft()
        if isinstance(ev, ResponseHead):
            if ev.interim:
                return None
            head = ev
            framing = response_framing(ev, True)
            out.append(forward_response_head(ev, framing, close=close))
        elif isinstance(ev, bytes):
            out.append(ev)
        elif isinstance(ev, EndOfMessage):
            assert head is not None
            return b"".join(out), head.keep_alive and not parser.events, head.status
    return None


def fields(message: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """(status line, sorted (lower-case name, value) fields, body): field order aside, what a client reads."""
    head, _, body = message.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    parsed = []
    for line in lines:
        name, _, value = line.partition(b":")
        parsed.append((name.lower(), value.strip(b" \t")))
    return status, sorted(parsed), body


def assert_same_as_general(data: bytes) -> bool:
    """If the fast path takes `data`, it relays exactly what the general path would. True if taken."""
    whole = parse_whole_response(data, MAX_HEAD)
    if whole is None:
        return False
    for close in (False, True):
        expected = general(data, close=close)
        assert expected is not None, data
        sent, reusable, status = expected
        got = forward_whole_response(whole, close=close)
        assert fields(got) == fields(sent), data
        assert (whole.keep_alive, whole.status) == (reusable, status), data
    return True


def test_nginx_answer_takes_the_fast_path_without_its_hop_by_hop_fields() -> None:
    whole = parse_whole_response(NGINX, MAX_HEAD)
    assert whole is not None
    assert (whole.status, whole.keep_alive) == (200, True)
    sent = forward_whole_response(whole, close=False)
    assert b"Connection" not in sent and b"Keep-Alive" not in sent
    assert sent.startswith(b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n")
    assert sent.endswith(b"\r\n\r\n" + b"x" * 100)
    assert assert_same_as_general(NGINX)


def test_close_adds_the_field_and_keeps_the_body_whole() -> None:
    whole = parse_whole_response(NGINX, MAX_HEAD)
    assert whole is not None
    sent = forward_whole_response(whole, close=True)
    assert sent[sent.index(b"\r\nconnection: close") :] == b"\r\nconnection: close\r\n\r\n" + b"x" * 100


def test_upstream_connection_close_is_not_reusable_but_still_fast() -> None:
    data = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    assert assert_same_as_general(data)
    whole = parse_whole_response(data, MAX_HEAD)
    assert whole is not None and not whole.keep_alive


@pytest.mark.parametrize(
    "data",
    [
        # not whole yet
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
        # more than one message, or bytes after it
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n",
        # framings the general path owns
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        # a Connection field naming another field, which must go too
        b"HTTP/1.1 200 OK\r\nConnection: x-internal\r\nX-Internal: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-internal\r\nContent-Length: 2\r\n\r\nok",
        # what llhttp refuses: the general path answers 502 for it
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection : close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_declines_what_it_cannot_relay_exactly(data: bytes) -> None:
    assert parse_whole_response(data, MAX_HEAD) is None


def test_declines_a_head_over_the_limit() -> None:
    data = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200 + b"\r\nContent-Length: 0\r\n\r\n"
    assert parse_whole_response(data, 100) is None
    assert parse_whole_response(data, MAX_HEAD) is not None


@pytest.mark.parametrize(
    "hop",
    [
        b"Connection: keep-alive",
        b"connection: Keep-Alive, close",
        b"CONNECTION: close",
        b"Keep-Alive: timeout=5, max=100",
        b"Proxy-Connection: keep-alive",
        b"TE: trailers",
        b"Upgrade: h2c",
    ],
)
def test_every_hop_by_hop_field_is_cut_as_the_general_path_cuts_it(hop: bytes) -> None:
    data = b"HTTP/1.1 200 OK\r\nA: 1\r\n" + hop + b"\r\nB: 2\r\nContent-Length: 2\r\n\r\nok"
    assert assert_same_as_general(data)
    whole = parse_whole_response(data, MAX_HEAD)
    assert whole is not None
    name = b"\r\n" + hop.split(b":")[0].lower() + b":"
    assert name not in forward_whole_response(whole, close=False).lower()


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)
FIELD_NAMES = st.one_of(
    TOKEN,
    TOKEN,
    st.sampled_from(
        [
            "Connection",
            "Keep-Alive",
            "TE",
            "Upgrade",
            "Proxy-Connection",
            "Content-Length",
            "Transfer-Encoding",
        ]
    ),
)
VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.sampled_from(["keep-alive", "close", "chunked", "2", " 2 ", "x-a"]),
)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(
        st.sampled_from([b"200 OK", b"201 Created", b"404 Not Found", b"503 Unavailable", b"204 X"])
    )
    version = draw(st.sampled_from([b"HTTP/1.1"] * 5 + [b"HTTP/1.0"]))
    body = draw(st.binary(max_size=20))
    lines = [
        (draw(FIELD_NAMES).encode() + b": " + draw(VALUES).encode()) for _ in range(draw(st.integers(0, 6)))
    ]
    if draw(st.integers(0, 3)):
        lines.insert(draw(st.integers(0, len(lines))), b"Content-Length: %d" % len(body))
    data = version + b" " + status + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body
    if not draw(st.integers(0, 2)):
        # one byte changed: whatever it breaks, the fast path must not disagree with the general one
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


def test_fast_path_never_disagrees_with_the_general_path() -> None:
    """Generated responses, a third with one byte changed; a fair share must take the fast
    path, or the comparison would pass without comparing anything."""
    taken = 0

    @settings(max_examples=600, deadline=None, database=None)
    @given(responses())
    def compare(data: bytes) -> None:
        nonlocal taken
        taken += assert_same_as_general(data)

    compare()
    assert taken >= 60
