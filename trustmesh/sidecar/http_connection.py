"""The request loop of one downstream HTTP/1.1 connection, shared by inbound and outbound.

It owns what every HTTP listener must do the same way: wait for the next request at most
`idle_timeout` (and not at all once a drain has begun), read its head within
`head_timeout` of its first byte and within `max_head_bytes`, answer a broken head (400,
431) or a slow one (408) and close, then hand the head to the listener's own handler.

One cancel scope per connection carries both timeouts, and `phase` says which one fired.
The idle timeout is not a deadline on it but an entry in `IdleConnections`, whose timer
cancels the scope (a trio deadline move costs a heap update behind a contextmanager, and
this would move it twice per request); the head deadline is only set when a head comes
in pieces. A request that is already waiting, its head whole in one read, costs neither.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable

import structlog
import trio

from trustmesh.sidecar.config import Limits
from trustmesh.sidecar.conn import Conn, ConnectionClosed
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.http.errors import HttpError, error_response
from trustmesh.sidecar.http.parser import EndOfMessage, RequestHead, RequestParser
from trustmesh.sidecar.listener import IdleConnections

log = structlog.get_logger(__name__)

# Answering a refused request must not hang on a peer that stopped reading.
_ERROR_SEND_TIMEOUT = 1.0
# Lingering close after an error answer (see `linger`): like nginx's lingering_close.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024

RequestHandler = Callable[[Conn, RequestParser, RequestHead], Awaitable[bool]]


async def serve_http_connection(
    conn: Conn,
    handle: RequestHandler,
    limits: Limits,
    *,
    drain: Drain,
    idle: IdleConnections,
    listener: str,
    peer: str,
) -> None:
    """Read requests from `conn` and pass each head to `handle` until one of them says stop.

    `handle(conn, parser, head)` relays the request (its body is in `parser`) and returns
    True if the connection may serve another request. Closes `conn` on return.
    """
    parser = RequestParser(limits.max_head_bytes)
    events = parser.events
    idle_timeout = limits.idle_timeout.total_seconds()
    head_timeout = limits.head_timeout.total_seconds()
    phase = "idle"
    probe = True
    served = 0
    scope = trio.CancelScope()
    try:
        with scope:
            while True:
                if not events:
                    if drain.draining:
                        return
                    # Under load the next request is often already here (a plain app
                    # connection); on others a probe nearly always misses (a sidecar's
                    # requests): probe again only after a hit, or every 8th request.
                    served += 1
                    data = None
                    if probe or not served & 7:
                        data = conn.recv_nowait()
                        probe = data is not None
                    if data is None:
                        phase = "idle"
                        idle.enter(scope, idle_timeout)  # the idle deadline: see IdleConnections
                        data = await conn.recv_wait_first()
                        idle.leave(scope)
                    if not data:
                        return
                    phase = "head"
                    parser.feed(data)
                    if not events:
                        # The head came in pieces: the rest of it within head_timeout of
                        # its first byte.
                        scope.deadline = trio.current_time() + head_timeout
                        while not events:
                            data = await conn.recv()
                            if not data:
                                return
                            parser.feed(data)
                head = events.popleft()
                assert isinstance(head, RequestHead)
                phase = "request"
                if scope.deadline != math.inf:
                    scope.deadline = math.inf
                if not await handle(conn, parser, head):
                    return
    except HttpError as exc:
        # A broken head (400/431): answered, never forwarded, and the connection closed,
        # since what follows in the stream cannot be trusted to start a request.
        log.warning(
            "request_refused",
            listener=listener,
            peer=peer,
            reason=exc.code,
            status=exc.status,
            detail=exc.detail,
        )
        await send_error(conn, exc.status, exc.code)
        await linger(conn)
    except ConnectionClosed:
        pass  # the peer reset: nobody to answer
    finally:
        if scope.cancelled_caught and phase == "head":
            log.warning(
                "request_refused",
                listener=listener,
                peer=peer,
                reason="head-timeout",
                status=408,
                timeout=head_timeout,
            )
            await send_error(conn, 408, "head-timeout")
            await linger(conn)
        elif scope.cancelled_caught and phase == "idle" and not drain.draining:
            log.debug("connection_idle_timeout", listener=listener, peer=peer)
        conn.close()


def discard_request_body(parser: RequestParser) -> bool:
    """Drop the current request's parsed body events when answering it ourselves.

    True if its end was among them (the connection can read the next request); False if
    the body is still arriving, in which case the connection must close after the answer.
    """
    events = parser.events
    while events:
        ev = events.popleft()
        if isinstance(ev, EndOfMessage):
            return True
    return False


async def send_error(conn: Conn, status: int, code: str, *, close: bool = True) -> None:
    """Answer with a sidecar-made error (`x-trustmesh-error: code`); best effort, bounded."""
    await send_raw(conn, error_response(status, code, close=close))


async def linger(conn: Conn) -> None:
    """Half-close, then read and drop what the client is still sending, briefly.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    the error response before the client reads it (the 431 for a head still being sent).
    Bounded in time and bytes, so a client cannot hold the connection open with it.
    """
    budget = _LINGER_BYTES
    with trio.move_on_after(_LINGER_SECONDS), contextlib.suppress(ConnectionClosed):
        await conn.send_eof()
        while budget > 0:
            data = await conn.recv()
            if not data:
                return
            budget -= len(data)


async def send_raw(conn: Conn, data: bytes) -> None:
    with trio.move_on_after(_ERROR_SEND_TIMEOUT), contextlib.suppress(ConnectionClosed):
        await conn.send_all(data)
