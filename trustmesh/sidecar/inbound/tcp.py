"""Opaque TCP on an authenticated inbound connection: authorize once, then copy bytes.

A caller the authorizer refuses is closed right after the handshake (TCP has no way to
say 403); the app never sees the connection.
"""

from __future__ import annotations

import structlog
import trio

from trustmesh.sidecar.config import InboundConfig, Limits
from trustmesh.sidecar.conn import Conn, connect_tcp
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.inbound.authorize import Authorizer
from trustmesh.sidecar.pump import pump
from trustmesh.sidecar.tls import VerifiedPeer
from trustmesh.tracing.metrics import SidecarMetrics

log = structlog.get_logger(__name__)


async def serve_tcp_connection(
    conn: Conn,
    peer: VerifiedPeer,
    cfg: InboundConfig,
    authorizer: Authorizer,
    limits: Limits,
    *,
    drain: Drain,
    counters: ProxyCounters,
    metrics: SidecarMetrics | None = None,
) -> None:
    listener = str(cfg.listen)
    try:
        decision = authorizer.authorize_tcp(peer.spiffe_id, cfg.listen.port)
        if not decision.allowed:
            log.warning(
                "connection_denied", listener=listener, peer_id=str(peer.spiffe_id), reason=decision.reason
            )
            return
        try:
            with trio.fail_after(limits.connect_timeout.total_seconds()):
                sock = await connect_tcp(cfg.app.host, cfg.app.port)
        except (OSError, trio.TooSlowError) as exc:
            log.error("app_unreachable", listener=listener, app=str(cfg.app), error=str(exc) or "timeout")
            return
        counters.upstream_connects += 1
        app = Conn(sock)
        try:
            with drain.request():
                moved = await pump(conn, app)
            if metrics is not None:
                # pump counts both directions together: what the peer sent plus what the app answered.
                metrics.add_bytes("inbound", read=moved)
        finally:
            app.close()
    finally:
        conn.close()
        if metrics is not None:
            metrics.connection_closed("inbound")
