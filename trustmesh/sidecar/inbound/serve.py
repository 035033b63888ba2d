"""`serve_inbound`: one inbound listener, as a pipeline of one-job steps.

accept (listener: connection limit, drain) → require_identity (TLS 1.3, client SVID
re-validated) → http_server (per request: limits, authorize, XFCC, relay to the app pool)
or tcp (authorize once, byte copy with half-close).
"""

from __future__ import annotations

import socket

import structlog
import trio

from trustmesh.sidecar.config import HostPort, InboundConfig, Limits
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.identity_view import IdentityView
from trustmesh.sidecar.inbound.authorize import Authorizer
from trustmesh.sidecar.inbound.http_server import InboundHttp
from trustmesh.sidecar.inbound.require_identity import require_identity
from trustmesh.sidecar.inbound.tcp import serve_tcp_connection
from trustmesh.sidecar.listener import IdleConnections, bind, serve_listener
from trustmesh.sidecar.telemetry import Telemetry, service_from_spiffe_id
from trustmesh.sidecar.tls import PeerValidator

log = structlog.get_logger(__name__)


async def serve_inbound(
    cfg: InboundConfig,
    identity: IdentityView,
    authorizer: Authorizer,
    limits: Limits,
    *,
    drain: Drain,
    counters: ProxyCounters | None = None,
    validator: PeerValidator | None = None,
    telemetry: Telemetry | None = None,
    task_status: trio.TaskStatus[HostPort] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve mTLS on `cfg.listen` and forward to `cfg.app` until `drain` completes.

    `task_status.started(address)` reports the bound address (port 0 picks a free port).
    Returns after a drain: nothing accepted, in-flight requests finished or, after
    `limits.drain_timeout`, cancelled.
    """
    counters = counters if counters is not None else ProxyCounters()
    validator = validator if validator is not None else PeerValidator()
    if telemetry is None:
        from trustmesh.tracing.metrics import SidecarMetrics

        telemetry = Telemetry(SidecarMetrics(), service=service_from_spiffe_id(str(identity.spiffe_id)))
    metrics = telemetry.metrics
    listen = bind(cfg.listen)
    host, port = listen.getsockname()[:2]
    bound = HostPort(str(host), int(port))
    name = "inbound " + str(bound)
    idle = IdleConnections(drain)
    http = InboundHttp(
        cfg,
        identity.spiffe_id,
        authorizer,
        limits,
        drain=drain,
        idle=idle,
        counters=counters,
        serving=identity.serving,
        telemetry=telemetry,
    )
    http.port = bound.port
    handshake_timeout = limits.head_timeout.total_seconds()

    async def handle(sock: socket.socket) -> None:
        if not identity.serving():
            # Our SVID has expired: fail closed rather than handshake with a dead identity.
            log.warning("connection_refused", listener=name, reason="not_serving")
            sock.close()
            return
        accepted = await require_identity(
            sock,
            identity,
            validator,
            handshake_timeout=handshake_timeout,
            counters=counters,
            listener=name,
            metrics=metrics,
        )
        if accepted is None:
            return
        conn, peer = accepted
        if cfg.protocol == "tcp":
            await serve_tcp_connection(
                conn, peer, cfg, authorizer, limits, drain=drain, counters=counters, metrics=metrics
            )
        else:
            await http.serve_connection(conn, peer)

    log.info("inbound_listening", listener=name, app=str(cfg.app), protocol=cfg.protocol)
    task_status.started(bound)
    try:
        await serve_listener(
            listen,
            handle,
            name=name,
            max_connections=limits.max_connections,
            drain=drain,
            drain_timeout=limits.drain_timeout.total_seconds(),
            idle=idle,
            counters=counters,
        )
    finally:
        http.pool.close_all()
    log.info("inbound_stopped", listener=name)
