"""HTTP/1.1 message parsing with llhttp (httptools): bytes in, events out.

Measured (docs/sidecar-design.md): httptools parses a typical request head several times
faster than h11, and llhttp is strict where a proxy must be: Content-Length together with
Transfer-Encoding, two Content-Length headers, a bad chunk size or a missing CRLF after a
chunk, obs-fold and bare LF are all parse errors, which become a 400 and a closed
connection (request smuggling needs a proxy and a backend that disagree on where a message
ends; we forward only what llhttp framed, re-framed by us).

Events, in order, in `events` (the caller pops them):
  `RequestHead` / `ResponseHead`, then `bytes` pieces of body (de-chunked), then `EndOfMessage`.
Pipelined requests produce the events of each message one after the other.
"""

from __future__ import annotations

from collections import deque

import httptools

from trustmesh.sidecar.http.errors import HttpError

Headers = list[tuple[bytes, bytes]]

# Headers of a head are counted as name + value + ": " + CRLF, so the limit is on the
# size of the head as sent, to within the request line's spaces.
_HEADER_OVERHEAD = 4


class RequestHead:
    """A parsed request head. Header names keep their case; compare with `.lower()`."""

    __slots__ = (
        "chunked",
        "content_length",
        "has_body",
        "headers",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.has_body = chunked or bool(content_length)  # asked several times per request


class ResponseHead:
    """A parsed response head; `body` says how the body is framed on the wire we read it from."""

    __slots__ = ("body", "content_length", "headers", "keep_alive", "reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool,
        body: str,
        content_length: int | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body  # "none" | "length" | "chunked" | "close" (read until EOF)
        self.content_length = content_length

    @property
    def interim(self) -> bool:
        """1xx other than 101: another head follows for the same request."""
        return 100 <= self.status < 200 and self.status != 101


class EndOfMessage:
    """The end of a message's body, with trailer fields if a chunked body had any."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers = trailers or []


END = EndOfMessage()

Event = RequestHead | ResponseHead | bytes | EndOfMessage


def _framing(headers: Headers) -> tuple[bool, int | None]:
    """(chunked, content_length) from headers llhttp has already checked for consistency."""
    chunked = False
    length: int | None = None
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            length = int(value)
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            chunked = value.lower().rstrip().endswith(b"chunked")
    return chunked, length


def _framing_of(fields: Headers | None) -> tuple[bool, int | None]:
    """`_framing` of the fields `on_header` set aside as candidates (usually one or none)."""
    return _framing(fields) if fields else (False, None)


def _check_request_fields(headers: Headers, version: str) -> None:
    """Fields whose every other reading is an attack: refused with a 400, never forwarded.

    - More than one Host, or HTTP/1.1 without one (RFC 9112 3.2): forwarded, two Hosts
      leave the app to pick one (host-header routing confusion), and a strict app refuses
      both anyway (the fuzzing saw 502s).
    - Transfer-Encoding other than one field saying exactly `chunked` (any case): llhttp
      frames `xchunked` + `chunked`, or `gzip, chunked`, as chunked, while a proxy in
      front of us may not: the TE.TE obfuscation of request smuggling. We decode no other
      coding, so anything else would be forwarded as a body we do not understand.
    """
    hosts = 0
    codings = 0
    for name, value in headers:
        n = len(name)
        if n == 4 and name.lower() == b"host":
            hosts += 1
        elif n == 17 and name.lower() == b"transfer-encoding":
            codings += 1
            if value.strip(b" \t").lower() != b"chunked":
                raise HttpError(400, "bad-request", "Transfer-Encoding other than chunked")
    if hosts > 1:
        raise HttpError(400, "bad-request", "more than one Host field")
    if not hosts and version == "1.1":
        raise HttpError(400, "bad-request", "HTTP/1.1 request without a Host field")
    if codings > 1:
        raise HttpError(400, "bad-request", "more than one Transfer-Encoding field")


class _Parser:
    """What request and response parsing share: size accounting, trailers, event queue."""

    def __init__(self, max_head_bytes: int) -> None:
        self.events: deque[Event] = deque()
        self._max_head = max_head_bytes
        self._head_size = 0
        self._raw_in_head = 0
        self._in_head = True
        self._headers: Headers = []
        self._framing_fields: Headers | None = None
        self._trailers: Headers | None = None

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._max_head:
            raise HttpError(431, "head-too-large", f"request head over {self._max_head} bytes")

    # httptools callbacks, shared
    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = 0
        self._headers = []
        self._framing_fields = None
        self._trailers = None

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per field from C: kept to a few operations (the size check inlined,
        # framing candidates set aside by name length instead of a second pass).
        n = len(name)
        self._head_size += n + len(value) + _HEADER_OVERHEAD
        if self._head_size > self._max_head:
            raise HttpError(431, "head-too-large", f"request head over {self._max_head} bytes")
        if self._in_head:
            self._headers.append((name, value))
            if n == 14 or n == 17:  # len("content-length"), len("transfer-encoding")
                if self._framing_fields is None:
                    self._framing_fields = []
                self._framing_fields.append((name, value))
        else:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(EndOfMessage(self._trailers) if self._trailers else END)
        self._in_head = True
        self._head_size = 0
        self._raw_in_head = 0

    def _feed(
        self,
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
        data: bytes,
        status: int,
        code: str,
    ) -> None:
        """Feed llhttp; a malformed message is `HttpError(status, code)`, our own callbacks'
        HttpErrors surface as they are.

        An Upgrade ends the HTTP part at the head (101 for responses; requests are not
        tunnelled yet and the Upgrade header is stripped as hop-by-hop), so it is not an error.
        """
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, HttpError):
                raise cause from None
            raise
        except httptools.HttpParserError as exc:
            raise HttpError(status, code, str(exc)) from None
        self._after_feed(len(data))

    def _after_feed(self, size: int) -> None:
        # httptools keeps a partial header value to itself until the CRLF, so a single
        # endless header would never reach on_header: bound the raw bytes fed while a
        # head is incomplete too (one receive buffer of slack for a previous body's tail).
        if self._in_head:
            self._raw_in_head += size
            if self._raw_in_head > self._max_head + 65536:
                raise HttpError(431, "head-too-large", f"request head over {self._max_head} bytes")


class RequestParser(_Parser):
    """Parses a stream of requests (one connection's worth, pipelining included)."""

    def __init__(self, max_head_bytes: int) -> None:
        super().__init__(max_head_bytes)
        self._url = b""
        self._p = httptools.HttpRequestParser(self)

    def feed(self, data: bytes) -> None:
        """Parse `data`, appending events; raise `HttpError` (400/431) on a broken request."""
        self._feed(self._p, data, 400, "bad-request")

    # The callbacks below run on every request: each does its part inline rather than
    # through the shared helpers (a Python call each).
    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = 0
        self._headers = []
        self._framing_fields = None
        self._trailers = None
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > self._max_head:
            raise HttpError(431, "head-too-large", f"request head over {self._max_head} bytes")
        self._url += url

    def on_headers_complete(self) -> None:
        p = self._p
        version = p.get_http_version()
        _check_request_fields(self._headers, version)
        fields = self._framing_fields
        chunked, length = _framing(fields) if fields else (False, None)
        persistent = p.should_keep_alive()
        head = RequestHead(p.get_method(), self._url, version, self._headers, persistent, chunked, length)
        self.events.append(head)
        self._in_head = False
        self._raw_in_head = 0


class ResponseParser(_Parser):
    """Parses one response (plus any 1xx interim heads before it).

    `no_body` is for the answer to a HEAD request: llhttp cannot be told about it, so the
    message is ended here at its head; the caller makes a new parser for the next response.
    """

    def __init__(self, max_head_bytes: int, *, no_body: bool = False) -> None:
        super().__init__(max_head_bytes)
        self._reason = b""
        self._no_body = no_body
        self.done = False
        self._p = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self._feed(self._p, data, 502, "bad-response")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._grow_head(len(reason))
        self._reason += reason

    def on_headers_complete(self) -> None:
        p = self._p
        status = p.get_status_code()
        chunked, length = _framing_of(self._framing_fields)
        if self._no_body or status in (204, 304) or 100 <= status < 200:
            body = "none"
        elif chunked:
            body = "chunked"
        elif length is not None:
            body = "length" if length else "none"
        else:
            body = "close"
        head = ResponseHead(
            status, self._reason, p.get_http_version(), self._headers, p.should_keep_alive(), body, length
        )
        self.events.append(head)
        self._in_head = False
        self._raw_in_head = 0
        if self._no_body and not head.interim:
            self.events.append(END)
            self.done = True

    def on_message_complete(self) -> None:
        if not self.done:
            super().on_message_complete()
