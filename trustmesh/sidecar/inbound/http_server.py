"""HTTP/1.1 on an authenticated inbound connection: requests from the peer sidecar to the app.

Per request: read the head (within `head_timeout` of its first byte, at most
`max_head_bytes`), authorize it, rewrite it (hop-by-hop fields out, any outside XFCC out,
ours in), and relay it to the local app over a kept-alive plain connection from the pool.
Between requests the connection waits at most `idle_timeout`, and not at all once a drain
has begun.

Each limit breach and each refusal is answered (431, 408, 400, 403, 502) with an
`x-trustmesh-error` code and logged as one event with a `reason`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import structlog
import trio

from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.sidecar.config import InboundConfig, Limits
from trustmesh.sidecar.conn import Conn, connect_tcp
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.exchange import DownstreamGone, UpstreamFailed, relay
from trustmesh.sidecar.http.errors import HttpError, error_response
from trustmesh.sidecar.http.headers import forward_request_head
from trustmesh.sidecar.http.parser import RequestHead, RequestParser
from trustmesh.sidecar.http_connection import (
    discard_request_body,
    send_error,
    send_raw,
    serve_http_connection,
)
from trustmesh.sidecar.inbound.authorize import Authorizer
from trustmesh.sidecar.inbound.set_identity_header import STRIP, xfcc_field
from trustmesh.sidecar.listener import IdleConnections
from trustmesh.sidecar.pool import ConnPool
from trustmesh.sidecar.tls import VerifiedPeer

log = structlog.get_logger(__name__)

_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_APP = "app"  # the pool key: an inbound listener has exactly one app behind it
_MAX_IDLE_APP_CONNECTIONS = 256


class InboundHttp:
    """One inbound HTTP listener's shared state: the app pool, limits, counters."""

    def __init__(
        self,
        cfg: InboundConfig,
        own_id: SpiffeId,
        authorizer: Authorizer,
        limits: Limits,
        *,
        drain: Drain,
        idle: IdleConnections,
        counters: ProxyCounters,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        self._cfg = cfg
        # False once our SVID has expired: kept-alive connections stop carrying requests too.
        self._serving = serving
        self._own_id = own_id
        self._authorizer = authorizer
        self._limits = limits
        self._drain = drain
        self._idle = idle
        self._counters = counters
        self._head_timeout = limits.head_timeout.total_seconds()
        self._idle_timeout = limits.idle_timeout.total_seconds()
        self._connect_timeout = limits.connect_timeout.total_seconds()
        self.pool: ConnPool[str] = ConnPool(
            max_idle_per_key=_MAX_IDLE_APP_CONNECTIONS, idle_timeout=self._idle_timeout
        )
        self._listener = str(cfg.listen)
        self.port = cfg.listen.port  # the bound port, set by serve_inbound when binding port 0

    async def serve_connection(self, conn: Conn, peer: VerifiedPeer) -> None:
        """Serve requests on `conn` until the peer closes, a limit closes it, or a drain."""
        xfcc = xfcc_field(self._own_id, peer)

        async def handle(conn: Conn, parser: RequestParser, head: RequestHead) -> bool:
            return await self._serve_request(conn, parser, head, xfcc, peer)

        await serve_http_connection(
            conn,
            handle,
            self._limits,
            drain=self._drain,
            idle=self._idle,
            listener=self._listener,
            peer=str(peer.spiffe_id),
        )

    def _is_draining(self) -> bool:
        return self._drain.draining

    async def _serve_request(
        self, conn: Conn, parser: RequestParser, head: RequestHead, xfcc: bytes, peer: VerifiedPeer
    ) -> bool:
        """Authorize and relay one request; True if the connection may serve another."""
        self._counters.requests += 1
        if not self._serving():
            # Failed closed: a connection opened while our SVID was valid gets no more requests.
            log.warning("request_refused", listener=self._listener, reason="not_serving")
            await self._send_error(conn, 503, "not-serving")
            return False
        decision = self._authorizer.authorize_http(
            peer.spiffe_id,
            head.method.decode("latin-1"),
            head.target.decode("latin-1"),
            self.port,
        )
        if not decision.allowed:
            return await self._forbid(conn, parser, head, peer, decision.reason)
        with self._drain.request():
            head_bytes = forward_request_head(head, strip=STRIP, add=xfcc)
            for attempt in (1, 2):
                up, reused = await self._app_connection()
                if up is None:
                    await self._send_error(conn, 502, "app-unreachable")
                    return False
                try:
                    outcome = await relay(
                        conn,
                        parser,
                        head,
                        head_bytes,
                        up,
                        max_head_bytes=self._limits.max_head_bytes,
                        closing=self._is_draining,
                    )
                except UpstreamFailed as exc:
                    up.close()
                    if reused and attempt == 1 and not exc.response_started and not head.has_body:
                        continue  # a pooled connection the app had closed: one fresh try
                    log.warning(
                        "app_exchange_failed",
                        listener=self._listener,
                        reason="app-reset",
                        detail=exc.reason,
                        response_started=exc.response_started,
                    )
                    if not exc.response_started:
                        await self._send_error(conn, 502, "app-reset")
                    return False
                except DownstreamGone:
                    up.close()
                    return False
                except HttpError as exc:
                    up.close()  # the app saw part of a body that will never be completed
                    log.warning(
                        "request_refused",
                        listener=self._listener,
                        peer_id=str(peer.spiffe_id),
                        reason=exc.code,
                        status=exc.status,
                        detail=exc.detail,
                    )
                    await self._send_error(conn, exc.status, exc.code)
                    return False
                if outcome.upstream_reusable:
                    self.pool.put(_APP, up)
                else:
                    up.close()
                return outcome.downstream_keep_alive and not self._drain.draining
        return False  # unreachable: the loop returns on its second attempt

    async def _app_connection(self) -> tuple[Conn | None, bool]:
        conn = self.pool.get(_APP)
        if conn is not None:
            return conn, True
        app = self._cfg.app
        try:
            with trio.fail_after(self._connect_timeout):
                sock = await connect_tcp(app.host, app.port)
        except (OSError, trio.TooSlowError) as exc:
            log.error("app_unreachable", listener=self._listener, app=str(app), error=str(exc) or "timeout")
            return None, False
        self._counters.upstream_connects += 1
        return Conn(sock), False

    async def _forbid(
        self, conn: Conn, parser: RequestParser, head: RequestHead, peer: VerifiedPeer, reason: str
    ) -> bool:
        request_id = _request_id(head)
        log.warning(
            "request_denied",
            listener=self._listener,
            peer_id=str(peer.spiffe_id),
            reason=reason,
            method=head.method.decode("latin-1"),
            path=head.target.decode("latin-1"),
            request_id=request_id,
        )
        # A path that could mean two things to two parsers (`%2F`, `..` above the root) is
        # refused as a bad request: no policy can be judged on it.
        status, code = (400, "ambiguous-path") if reason == "ambiguous-path" else (403, "forbidden")
        body = code.encode("ascii") + b": request " + request_id.encode("ascii") + b"\n"
        # A body still arriving is not read: the connection closes after the answer.
        close = not discard_request_body(parser) or not head.keep_alive
        response = error_response(status, code, close=close, body=body)
        response = response.replace(
            b"\r\n\r\n", b"\r\nx-request-id: " + request_id.encode("ascii") + b"\r\n\r\n", 1
        )
        await self._send_raw(conn, response)
        return not close

    async def _send_error(self, conn: Conn, status: int, code: str) -> None:
        await send_error(conn, status, code)

    async def _send_raw(self, conn: Conn, data: bytes) -> None:
        await send_raw(conn, data)


def _request_id(head: RequestHead) -> str:
    """The caller's `x-request-id` if it sent a sane one, else a fresh random id."""
    for name, value in head.headers:
        if name.lower() == b"x-request-id" and 0 < len(value) <= 64 and _ID_CHARS.issuperset(value):
            return value.decode("ascii")
    return secrets.token_hex(8)
