"""One HTTP/1.1 exchange relayed between a downstream and an upstream connection.

Shared by inbound (client sidecar → local app) and outbound (local app → server sidecar):
both send a rewritten head, stream the request body, and stream the response back. What
differs (which head, which upstream, which errors) stays in inbound/ and outbound/.

Hot-path rules, each measured to matter:
- when the whole request is already parsed (the common case: small requests arrive in
  one read), head and body leave in one `send_all`; the response usually arrives whole in
  one read and then leaves in one `send_all`, its head cut rather than rebuilt
  (`http/whole_response`);
- a body that is still arriving is streamed piece by piece, never buffered whole, and the
  response is read at the same time (an app may answer before it has read the body).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from trustmesh.sidecar.conn import Conn, ConnectionClosed
from trustmesh.sidecar.http.errors import HttpError
from trustmesh.sidecar.http.framing import chunk, last_chunk
from trustmesh.sidecar.http.headers import forward_response_head, response_framing
from trustmesh.sidecar.http.parser import (
    EndOfMessage,
    Event,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from trustmesh.sidecar.http.whole_response import forward_whole_response, parse_whole_response


class UpstreamFailed(Exception):
    """The upstream broke the exchange. `response_started`: bytes already went downstream,
    so no error response can be sent any more (only closing the downstream is left)."""

    def __init__(self, reason: str, *, response_started: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response_started = response_started


class DownstreamGone(Exception):
    """The downstream closed or reset in the middle of an exchange."""


class ResponseRefused(Exception):
    """`accept` declined the final response head (outbound: a status it will retry).

    Nothing of that response went downstream; the upstream connection is mid-response
    and must be closed.
    """

    def __init__(self, status: int) -> None:
        super().__init__(f"response {status} refused")
        self.status = status


# accept(status) -> True to relay this final response downstream, False to refuse it.
Accept = Callable[[int], bool]


@dataclass(slots=True)
class Outcome:
    """How an exchange ended, for the connection loops to decide on reuse."""

    upstream_reusable: bool
    downstream_keep_alive: bool
    status: int


async def relay(
    down: Conn,
    parser: RequestParser,
    head: RequestHead,
    head_bytes: bytes,
    up: Conn,
    *,
    max_head_bytes: int,
    closing: Callable[[], bool],
    accept: Accept | None = None,
    body_timeout: float = math.inf,
) -> Outcome:
    """Send `head_bytes` and the body of `head` (from `parser`/`down`) to `up`; relay the answer.

    `closing()` is asked when the response head is written (a drain may begin while the
    request is in flight): True adds `connection: close` and ends the downstream connection.
    `accept(status)`, if given, is asked just before the final response head is written.
    A body still arriving must send something at least every `body_timeout` seconds.
    Raises `UpstreamFailed`, `DownstreamGone`, `ResponseRefused` (from `accept`), or
    `HttpError` (a broken or stalled request body, the response not begun yet).
    """
    out = [head_bytes]
    complete = _take_body(parser.events, out, head.chunked)
    try:
        await up.send_all(b"".join(out) if len(out) > 1 else head_bytes)
    except ConnectionClosed as exc:
        raise UpstreamFailed(str(exc), response_started=False) from exc
    if complete:
        return await _relay_response(down, up, head, max_head_bytes, closing, accept, body_done=True)

    # The body is still arriving: stream it while reading the response.
    state = _BodyState()
    failure: list[HttpError | DownstreamGone | UpstreamFailed | ResponseRefused] = []
    outcome: Outcome | None = None
    async with trio.open_nursery() as nursery:

        async def body() -> None:
            try:
                await _stream_body(down, parser, head.chunked, up, state, body_timeout)
            except UpstreamFailed:
                # The app stopped reading (it may have answered early, e.g. 413): let the
                # response side read what it sent; the connection is not reused.
                state.upstream_broken = True
            except (HttpError, DownstreamGone) as exc:
                failure.append(exc)
                nursery.cancel_scope.cancel()

        nursery.start_soon(body)
        try:
            outcome = await _relay_response(
                down, up, head, max_head_bytes, closing, accept, body_done=True, state=state
            )
        except (UpstreamFailed, DownstreamGone, HttpError, ResponseRefused) as exc:
            failure.append(exc)
        nursery.cancel_scope.cancel()
    if failure:
        first = failure[0]
        if isinstance(first, HttpError) and state.response_started:
            # Part of the answer already went downstream: no error response can follow it.
            raise DownstreamGone(f"request body failed after the response began: {first.detail}") from first
        raise first
    assert outcome is not None
    if not state.done or state.upstream_broken:
        # The app answered before reading all of the body: the rest of it is still on the
        # downstream connection and in no state to be parsed as the next request.
        outcome.upstream_reusable = False
        outcome.downstream_keep_alive = False
    return outcome


async def relay_whole(
    down: Conn,
    head: RequestHead,
    request: bytes,
    up: Conn,
    *,
    max_head_bytes: int,
    closing: Callable[[], bool],
    accept: Accept | None = None,
) -> Outcome:
    """Like `relay` for a request held whole in `request` (head and framed body): a replay."""
    try:
        await up.send_all(request)
    except ConnectionClosed as exc:
        raise UpstreamFailed(str(exc), response_started=False) from exc
    return await _relay_response(down, up, head, max_head_bytes, closing, accept, body_done=True)


def whole_request(head_bytes: bytes, parser: RequestParser, chunked: bool) -> bytes | None:
    """Head and body of the current request as one buffer, if its end is already parsed.

    Consumes the body events only when the request is whole; None leaves them in place.
    """
    events = parser.events
    for ev in events:
        if isinstance(ev, EndOfMessage):
            break
        if not isinstance(ev, bytes):
            return None
    else:
        return None
    out = [head_bytes]
    _take_body(events, out, chunked)
    return b"".join(out)


class _BodyState:
    __slots__ = ("done", "response_started", "upstream_broken")

    def __init__(self) -> None:
        self.done = False
        self.upstream_broken = False
        self.response_started = False


def _take_body(events: deque[Event], out: list[bytes], chunked: bool) -> bool:
    """Move parsed body events of the current request into `out`; True once it is complete."""
    while events:
        ev = events[0]
        if isinstance(ev, bytes):
            events.popleft()
            out.append(chunk(ev) if chunked else ev)
        elif isinstance(ev, EndOfMessage):
            events.popleft()
            if chunked:
                out.append(last_chunk(ev.trailers))
            return True
        else:
            return True  # a head: the next pipelined request's, which cannot precede our END
    return False


async def _stream_body(
    down: Conn, parser: RequestParser, chunked: bool, up: Conn, state: _BodyState, body_timeout: float
) -> None:
    events = parser.events
    while True:
        try:
            with trio.move_on_after(body_timeout) as stalled:
                data = await down.recv()
        except ConnectionClosed as exc:
            raise DownstreamGone(str(exc)) from exc
        if stalled.cancelled_caught:
            raise HttpError(408, "body-timeout", f"no request body bytes for {body_timeout:g}s")
        if not data:
            raise DownstreamGone("downstream closed in the middle of a request body")
        parser.feed(data)
        out: list[bytes] = []
        complete = _take_body(events, out, chunked)
        # Set before the last send: the response may complete (and cancel us) while the
        # send's checkpoint yields, and by then the whole body was handed to the kernel.
        state.done = complete
        if out:
            try:
                await up.send_all(b"".join(out))
            except ConnectionClosed as exc:
                raise UpstreamFailed(str(exc), response_started=False) from exc
        if complete:
            return


async def _relay_response(
    down: Conn,
    up: Conn,
    request: RequestHead,
    max_head_bytes: int,
    closing: Callable[[], bool],
    accept: Accept | None,
    *,
    body_done: bool,
    state: _BodyState | None = None,
) -> Outcome:
    """Read one response (after any 1xx) from `up` and write it to `down`, re-framed.

    `state`, when the request body is still streaming, learns when the response began.
    """
    # The request has just been sent: its answer cannot be here yet, so the first read
    # waits before trying (a try would fail nearly always); later reads try first.
    try:
        data = await up.recv_wait_first()
    except ConnectionClosed as exc:
        raise UpstreamFailed(str(exc), response_started=False) from exc
    if request.method != b"HEAD":
        # The common case: the whole answer in this one read (see `whole_response`).
        whole = parse_whole_response(data, max_head_bytes)
        if whole is not None:
            if accept is not None and not accept(whole.status):
                raise ResponseRefused(whole.status)
            close = not request.keep_alive or closing()
            if state is not None:
                state.response_started = True  # before the send: its checkpoint may yield
            await _send_down(down, forward_whole_response(whole, close=close))
            return Outcome(whole.keep_alive and body_done, not close, whole.status)
    parser = ResponseParser(max_head_bytes, no_body=request.method == b"HEAD")
    events = parser.events
    downstream_http11 = request.version == "1.1"
    head: ResponseHead | None = None
    framing = ""
    started = False
    close = not request.keep_alive
    while True:  # `data` holds the latest read: the first one above, then each below
        if not data:
            if head is not None and head.body == "close":
                # A close-delimited body ends at EOF; re-chunked downstream, it gets its end.
                if framing == "chunked":
                    await _send_down(down, b"0\r\n\r\n")
                    return Outcome(False, not close, head.status)
                return Outcome(False, False, head.status)
            raise UpstreamFailed("upstream closed before the response ended", response_started=started)
        parser.feed(data)
        out: list[bytes] = []
        finished = False
        while events:
            ev = events.popleft()
            if isinstance(ev, bytes):
                out.append(chunk(ev) if framing == "chunked" else ev)
            elif isinstance(ev, EndOfMessage):
                if head is None:
                    continue  # end of a 1xx interim response: the real one follows
                if framing == "chunked":
                    out.append(last_chunk(ev.trailers))
                finished = True
                break
            elif isinstance(ev, ResponseHead):
                if ev.interim:
                    out.append(forward_response_head(ev, "none", close=False))
                    continue
                if accept is not None and not accept(ev.status):
                    raise ResponseRefused(ev.status)
                head = ev
                framing = response_framing(ev, downstream_http11)
                close = close or framing == "close" or closing()
                out.append(forward_response_head(ev, framing, close=close))
                if framing == "none":
                    finished = True
                    break
        if out:
            if state is not None:
                state.response_started = True  # before the send: its checkpoint may yield
            await _send_down(down, b"".join(out) if len(out) > 1 else out[0])
            started = True
        if finished:
            assert head is not None
            reusable = head.keep_alive and body_done and not events
            return Outcome(reusable, not close, head.status)
        try:
            data = await up.recv()
        except ConnectionClosed as exc:
            raise UpstreamFailed(str(exc), response_started=started) from exc


async def _send_down(down: Conn, data: bytes) -> None:
    try:
        await down.send_all(data)
    except ConnectionClosed as exc:
        raise DownstreamGone(str(exc)) from exc
