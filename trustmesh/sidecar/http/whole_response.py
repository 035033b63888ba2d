"""The common response, relayed without being taken apart: one read, one llhttp pass, one write.

Most answers a sidecar relays arrive whole in the first read: a head with Content-Length
and the whole body after it (nginx, our own peer sidecar, most apps). For those, parsing
every field into Python objects and writing the head again (`parser` + `headers`) cost
about four times what this does (docs/sidecar-design.md). Here llhttp still checks the
whole message (framing, bad bytes, duplicate Content-Length: anything it refuses makes
this return None), but without a Python callback per field; the hop-by-hop fields are
then cut out of the head bytes as they are, and the rest leaves untouched, in order.

Anything unusual returns None and the caller takes the general path, which handles every
case: a 1xx, 204/304, chunked or close-delimited bodies, a head or body still arriving,
bytes beyond the message, a Connection field naming other fields, HTTP/1.0, an answer
to HEAD. So this module only ever decides "fast" for messages whose relayed form it can
produce exactly as the general path would (the tests compare the two).
"""

from __future__ import annotations

from typing import Final

import httptools

_END_OF_HEAD: Final = b"\r\n\r\n"
_CONTENT_LENGTH: Final = b"\r\ncontent-length:"
_CONNECTION: Final = b"\r\nconnection:"
# Hop-by-hop fields (RFC 9110 7.6.1) that may be cut out as they are. Transfer-Encoding
# never reaches this point (a message with it takes the general path).
_DROP: Final = (_CONNECTION, b"\r\nkeep-alive:", b"\r\nproxy-connection:", b"\r\nte:", b"\r\nupgrade:")
# What a Connection field may say for the message to stay on this path: only its own
# persistence. A field naming other fields (which must go too) takes the general path.
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})


class _Ends:
    """httptools callbacks: count completed messages and note how the first ended; nothing per field.

    Status and persistence are read inside the callback: llhttp resets them for the next
    message as soon as this one is complete.
    """

    __slots__ = ("complete", "keep_alive", "parser", "status")

    def __init__(self) -> None:
        self.complete = 0
        self.status = 0
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_complete(self) -> None:
        self.complete += 1
        parser = self.parser
        if parser is not None and self.complete == 1:
            self.status = parser.get_status_code()
            self.keep_alive = parser.should_keep_alive()


class WholeResponse:
    """A complete response found in one buffer: what the relay needs to forward it."""

    __slots__ = ("head", "keep_alive", "rest", "status")

    def __init__(self, status: int, keep_alive: bool, head: bytes, rest: bytes) -> None:
        self.status = status
        self.keep_alive = keep_alive  # the upstream connection may carry another request
        self.head = head  # the head to forward, hop-by-hop fields removed, without its blank line
        self.rest = rest  # the blank line and the whole body


def parse_whole_response(data: bytes, max_head_bytes: int) -> WholeResponse | None:
    """`data` as one complete HTTP/1.1 response with a Content-Length body, or None.

    None also for anything llhttp refuses: the general path then reports it properly.
    """
    end = data.find(_END_OF_HEAD)
    if end < 0 or end + 4 > max_head_bytes or not data.startswith(b"HTTP/1.1 "):
        return None
    head = data[:end]
    low = head.lower()
    at = low.find(_CONTENT_LENGTH)
    if at < 0 or b"\r\ntransfer-encoding:" in low:
        return None
    value_end = low.find(b"\r\n", at + 2)
    value = low[at + len(_CONTENT_LENGTH) : value_end if value_end >= 0 else end].strip(b" \t")
    if not value.isdigit() or end + 4 + int(value) != len(data):
        return None
    ends = _Ends()
    parser = ends.parser = httptools.HttpResponseParser(ends)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    finally:
        ends.parser = None  # no reference cycle left for the garbage collector
    status = ends.status
    if ends.complete != 1 or status < 200 or status in (204, 304):
        return None
    forwarded = _drop_hop_by_hop(head, low)
    if forwarded is None:
        return None
    return WholeResponse(status, ends.keep_alive, forwarded, data[end:])


def _drop_hop_by_hop(head: bytes, low: bytes) -> bytes | None:
    """`head` without its hop-by-hop lines; None if a Connection field names other fields."""
    for name in _DROP:
        at = low.find(name)
        while at >= 0:
            line_end = low.find(b"\r\n", at + 2)
            if line_end < 0:
                line_end = len(low)
            if name is _CONNECTION:
                value = low[at + len(name) : line_end].strip(b" \t")
                if value not in _PLAIN_CONNECTION and any(
                    token.strip(b" \t") not in _PLAIN_CONNECTION for token in value.split(b",")
                ):
                    return None
            head = head[:at] + head[line_end:]
            low = low[:at] + low[line_end:]
            at = low.find(name)
    return head


def forward_whole_response(response: WholeResponse, *, close: bool) -> bytes:
    """The bytes to send downstream: the head (plus `connection: close` if `close`) and body."""
    if close:
        return response.head + b"\r\nconnection: close" + response.rest
    return response.head + response.rest
