"""HTTP/1.1 on an authenticated inbound connection: requests from the peer sidecar to the app.

Per request: read the head (within `head_timeout` of its first byte, at most
`max_head_bytes`), authorize it, rewrite it (hop-by-hop fields out, any outside XFCC out,
ours in), and relay it to the local app over a kept-alive plain connection from the pool.
Between requests the connection waits at most `idle_timeout`, and not at all once a drain
has begun.

Each limit breach and each refusal is answered (431, 408, 400, 403, 502) with an
`x-trustmesh-error` code and logged as one event with a `reason`.

Every request is reported through `Telemetry`: a SERVER span (when tracing), the
`x-request-id` the app receives and every error body names, one `access` event, metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.sidecar.config import InboundConfig, Limits
from trustmesh.sidecar.conn import Conn, connect_tcp
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.exchange import DownstreamGone, UpstreamFailed, relay
from trustmesh.sidecar.http.errors import HttpError
from trustmesh.sidecar.http.headers import forward_request_head
from trustmesh.sidecar.http.parser import RequestHead, RequestParser
from trustmesh.sidecar.http_connection import discard_request_body, send_raw, serve_http_connection
from trustmesh.sidecar.inbound.authorize import Authorizer
from trustmesh.sidecar.inbound.set_identity_header import STRIP, xfcc_field
from trustmesh.sidecar.listener import IdleConnections
from trustmesh.sidecar.pool import ConnPool
from trustmesh.sidecar.telemetry import Exchange, Telemetry, service_from_spiffe_id
from trustmesh.sidecar.tls import VerifiedPeer
from trustmesh.tracing.metrics import SidecarMetrics

log = structlog.get_logger(__name__)

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
        telemetry: Telemetry | None = None,
    ) -> None:
        self._cfg = cfg
        self._telemetry = (
            telemetry
            if telemetry is not None
            else Telemetry(SidecarMetrics(), service=service_from_spiffe_id(str(own_id)))
        )
        self._app = str(cfg.app)
        self._server_host = cfg.listen.host
        # False once our SVID has expired: kept-alive connections stop carrying requests too.
        self._serving = serving
        self._own_id = own_id
        self._authorizer = authorizer
        self._limits = limits
        self._drain = drain
        self._idle = idle
        self._counters = counters
        self._head_timeout = limits.head_timeout.total_seconds()
        self._body_timeout = limits.body_timeout.total_seconds()
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
        peer_id = str(peer.spiffe_id)
        # The TCP peer, for the SERVER span: asked once per connection, and only when tracing.
        address = _peer_address(conn) if self._telemetry.tracer is not None else None

        async def handle(conn: Conn, parser: RequestParser, head: RequestHead) -> bool:
            ex, strip, add = self._telemetry.begin_inbound(
                head,
                peer_spiffe_id=peer_id,
                peer_address=address,
                server_address=self._server_host,
                server_port=self.port,
            )
            try:
                return await self._serve_request(conn, parser, head, xfcc + add, strip, peer, ex)
            finally:
                self._telemetry.end(ex)

        try:
            await serve_http_connection(
                conn,
                handle,
                self._limits,
                drain=self._drain,
                idle=self._idle,
                listener=self._listener,
                peer=peer_id,
            )
        finally:
            self._telemetry.metrics.connection_closed("inbound")

    def _is_draining(self) -> bool:
        return self._drain.draining

    async def _serve_request(
        self,
        conn: Conn,
        parser: RequestParser,
        head: RequestHead,
        add: bytes,
        strip: frozenset[bytes],
        peer: VerifiedPeer,
        ex: Exchange,
    ) -> bool:
        """Authorize and relay one request; True if the connection may serve another.

        `add` is XFCC plus the trace and request-id fields; `strip` what they replace.
        """
        self._counters.requests += 1
        if not self._serving():
            # Failed closed: a connection opened while our SVID was valid gets no more requests.
            log.warning("request_refused", listener=self._listener, reason="not_serving")
            await send_raw(conn, ex.error_response(503, "not-serving"))
            return False
        decision = self._authorizer.authorize_http(
            peer.spiffe_id,
            head.method.decode("latin-1"),
            head.target.decode("latin-1"),
            self.port,
        )
        self._telemetry.policy(ex, decision)
        if not decision.allowed:
            return await self._forbid(conn, parser, head, peer, decision.reason, ex)
        drain = self._drain
        drain.enter()  # in flight until answered (not `with drain.request()`: per request)
        try:
            head_bytes = forward_request_head(head, strip=STRIP | strip if strip else STRIP, add=add)
            ex.upstream = self._app
            for attempt in (1, 2):
                up, reused = await self._app_connection()
                if up is None:
                    await send_raw(conn, ex.error_response(502, "app-unreachable"))
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
                        body_timeout=self._body_timeout,
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
                        await send_raw(conn, ex.error_response(502, "app-reset"))
                    else:
                        ex.fail(ex.status or 502, "app-reset")
                    return False
                except DownstreamGone:
                    up.close()
                    ex.error_code = "downstream-gone"
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
                    await send_raw(conn, ex.error_response(exc.status, exc.code))
                    return False
                ex.status = outcome.status
                if outcome.upstream_reusable:
                    self.pool.put(_APP, up)
                else:
                    up.close()
                return outcome.downstream_keep_alive and not self._drain.draining
        finally:
            drain.exit()
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
        self,
        conn: Conn,
        parser: RequestParser,
        head: RequestHead,
        peer: VerifiedPeer,
        reason: str,
        ex: Exchange,
    ) -> bool:
        request_id = ex.request_id
        log.warning(
            "request_denied",
            listener=self._listener,
            peer_id=str(peer.spiffe_id),
            reason=reason,
            method=head.method.decode("latin-1"),
            path=_path(head.target),
            request_id=request_id,
        )
        # A path that could mean two things to two parsers (`%2F`, `..` above the root) is
        # refused as a bad request: no policy can be judged on it.
        status, code = (400, "ambiguous-path") if reason == "ambiguous-path" else (403, "forbidden")
        # A body still arriving is not read: the connection closes after the answer.
        close = not discard_request_body(parser) or not head.keep_alive
        await send_raw(conn, ex.error_response(status, code, close=close))
        return not close


def _path(target: bytes) -> str:
    """The path without its query: a query can carry secrets, and logs are widely read."""
    q = target.find(b"?")
    return (target if q < 0 else target[:q]).decode("latin-1")


def _peer_address(conn: Conn) -> tuple[str, int] | None:
    try:
        host, port = conn.sock.getpeername()[:2]
    except OSError:
        return None
    return str(host), int(port)
