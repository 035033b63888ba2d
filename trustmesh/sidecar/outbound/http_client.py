"""HTTP/1.1 from the local app to a service: one request at a time, over pooled mTLS.

Per request: pick an endpoint of the service, take a kept-alive mTLS connection to it (or
make one, checked by secure naming), relay the request and the response. Headers other
than hop-by-hop ones (`traceparent` included) pass untouched. Errors the sidecar makes are
answered with `x-trustmesh-error`: `no-endpoints` (503), `connect-failed` (503),
`connect-timeout` (504), `tls-handshake`/`peer-refused`/`secure-naming` (502),
`upstream-reset` (502).
"""

from __future__ import annotations

import structlog

from trustmesh.sidecar.config import Limits, OutboundConfig
from trustmesh.sidecar.conn import Conn
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.exchange import DownstreamGone, UpstreamFailed, relay
from trustmesh.sidecar.http.errors import HttpError
from trustmesh.sidecar.http.headers import forward_request_head
from trustmesh.sidecar.http.parser import RequestHead, RequestParser
from trustmesh.sidecar.http_connection import discard_request_body, send_error, serve_http_connection
from trustmesh.sidecar.listener import IdleConnections
from trustmesh.sidecar.outbound.balance import Balancer
from trustmesh.sidecar.outbound.endpoints import EndpointSource
from trustmesh.sidecar.outbound.secure_connect import SecureConnector, UpstreamError

log = structlog.get_logger(__name__)


class OutboundHttp:
    def __init__(
        self,
        cfg: OutboundConfig,
        endpoints: EndpointSource,
        balancer: Balancer,
        connector: SecureConnector,
        limits: Limits,
        *,
        drain: Drain,
        idle: IdleConnections,
        counters: ProxyCounters,
        listener: str,
    ) -> None:
        self._cfg = cfg
        self._endpoints = endpoints
        self._balancer = balancer
        self._connector = connector
        self._limits = limits
        self._drain = drain
        self._idle = idle
        self._counters = counters
        self._listener = listener

    async def serve_connection(self, conn: Conn, peer: str) -> None:
        await serve_http_connection(
            conn,
            self._serve_request,
            self._limits,
            drain=self._drain,
            idle=self._idle,
            listener=self._listener,
            peer=peer,
        )

    def _is_draining(self) -> bool:
        return self._drain.draining

    async def _serve_request(self, conn: Conn, parser: RequestParser, head: RequestHead) -> bool:
        """Relay one request; True if the app's connection may send another."""
        self._counters.requests += 1
        endpoints = self._endpoints.endpoints(self._cfg.service)
        if not endpoints:
            log.warning(
                "request_failed", listener=self._listener, service=self._cfg.service, reason="no-endpoints"
            )
            keep = discard_request_body(parser) and head.keep_alive
            await send_error(conn, 503, "no-endpoints", close=not keep)
            return keep
        with self._drain.request():
            head_bytes = forward_request_head(head)
            ep = self._balancer.pick(endpoints)
            for attempt in (1, 2):
                try:
                    up, reused = await self._connector.get(ep)
                except UpstreamError as exc:
                    keep = discard_request_body(parser) and head.keep_alive
                    await send_error(conn, exc.status, exc.code, close=not keep)
                    return keep
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
                        continue  # the server sidecar had closed this pooled connection: retry fresh
                    log.warning(
                        "request_failed",
                        listener=self._listener,
                        service=ep.service,
                        endpoint=str(ep.address),
                        reason="upstream-reset",
                        detail=exc.reason,
                    )
                    if not exc.response_started:
                        await send_error(conn, 502, "upstream-reset")
                    return False
                except DownstreamGone:
                    up.close()
                    return False
                except HttpError as exc:
                    up.close()
                    log.warning(
                        "request_refused",
                        listener=self._listener,
                        reason=exc.code,
                        status=exc.status,
                        detail=exc.detail,
                    )
                    await send_error(conn, exc.status, exc.code)
                    return False
                if outcome.upstream_reusable:
                    self._connector.put(ep, up)
                else:
                    up.close()
                return outcome.downstream_keep_alive and not self._drain.draining
        return False
