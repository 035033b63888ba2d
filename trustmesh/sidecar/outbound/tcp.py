"""Opaque TCP from the local app to a service: one mTLS connection per app connection."""

from __future__ import annotations

import time

import structlog

from trustmesh.sidecar.config import OutboundConfig
from trustmesh.sidecar.conn import Conn
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.outbound.balance import Balancer
from trustmesh.sidecar.outbound.endpoints import EndpointSource
from trustmesh.sidecar.outbound.secure_connect import SecureConnector, UpstreamError
from trustmesh.sidecar.pump import pump
from trustmesh.tracing.metrics import SidecarMetrics

log = structlog.get_logger(__name__)


async def serve_tcp_connection(
    conn: Conn,
    cfg: OutboundConfig,
    endpoints: EndpointSource,
    balancer: Balancer,
    connector: SecureConnector,
    *,
    drain: Drain,
    listener: str,
    metrics: SidecarMetrics | None = None,
) -> None:
    """Connect to an endpoint of the service (secure naming applies) and copy bytes both ways.

    Any failure to connect closes the app's connection: TCP has no way to say why (the
    log event does).
    """
    if metrics is not None:
        metrics.connection_opened("outbound")
    try:
        eps = endpoints.endpoints(cfg.service)
        if not eps:
            log.warning("connection_failed", listener=listener, service=cfg.service, reason="no-endpoints")
            return
        try:
            up = await connector.connect(balancer.pick(eps, time.monotonic()))
        except UpstreamError:
            return  # logged by the connector
        try:
            with drain.request():
                moved = await pump(conn, up)
            if metrics is not None:
                # pump counts both directions together: what the app sent plus what came back.
                metrics.add_bytes("outbound", read=moved)
        finally:
            up.close()
    finally:
        conn.close()
        if metrics is not None:
            metrics.connection_closed("outbound")
