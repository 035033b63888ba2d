"""`serve_outbound`: plain in from the local app, mTLS out to the service's sidecars.

accept (listener: connection limit, drain) → http_client (per request: deadline, endpoint
choice by the balancer among endpoints not ejected, pooled mTLS connection under secure
naming, relay, retries within the budget) or tcp (one mTLS connection, byte copy).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import structlog
import trio

from trustmesh.clock import Clock, SystemClock
from trustmesh.sidecar.config import HostPort, Limits, OutboundConfig, StaticEndpoint
from trustmesh.sidecar.conn import Conn
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.identity_view import IdentityView
from trustmesh.sidecar.listener import IdleConnections, bind, serve_listener
from trustmesh.sidecar.outbound.balance import Balancer, RoundRobin
from trustmesh.sidecar.outbound.endpoints import EndpointSource, StaticEndpoints
from trustmesh.sidecar.outbound.http_client import OutboundHttp, TrafficCounters
from trustmesh.sidecar.outbound.secure_connect import SecureConnector
from trustmesh.sidecar.outbound.tcp import serve_tcp_connection
from trustmesh.sidecar.outbound.traffic_settings import FixedTrafficSettings, TrafficSettingsProvider
from trustmesh.sidecar.telemetry import Telemetry
from trustmesh.sidecar.tls import PeerValidator

log = structlog.get_logger(__name__)


async def serve_outbound(
    cfg: OutboundConfig,
    identity: IdentityView,
    endpoints: EndpointSource | Sequence[StaticEndpoint],
    limits: Limits,
    *,
    drain: Drain,
    counters: ProxyCounters | None = None,
    validator: PeerValidator | None = None,
    balancer: Balancer | None = None,
    settings: TrafficSettingsProvider | None = None,
    clock: Clock | None = None,
    traffic_counters: TrafficCounters | None = None,
    telemetry: Telemetry | None = None,
    task_status: trio.TaskStatus[HostPort] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the app's calls to `cfg.service` on `cfg.listen` until `drain` completes.

    `endpoints` is an `EndpointSource`, or the `--endpoints` flags as parsed (all services;
    only `cfg.service`'s are used). `settings` gives the service's TrafficSettings per
    request (a `TrafficSettingsStore` follows policy revisions; default: the built-in
    defaults); `balancer` fixes the balancer instead of the settings' choice; `clock` times
    outlier ejections and the retry budget. `task_status.started(address)` reports the
    bound address.
    """
    counters = counters if counters is not None else ProxyCounters()
    validator = validator if validator is not None else PeerValidator()
    tcp_balancer = balancer if balancer is not None else RoundRobin()
    source: EndpointSource = StaticEndpoints(endpoints) if isinstance(endpoints, Sequence) else endpoints
    listen = bind(cfg.listen)
    host, port = listen.getsockname()[:2]
    bound = HostPort(str(host), int(port))
    name = "outbound " + cfg.service + " " + str(bound)
    idle = IdleConnections(drain)
    if telemetry is None:
        from trustmesh.tracing.metrics import SidecarMetrics

        telemetry = Telemetry(SidecarMetrics(), service=cfg.service)
    connector = SecureConnector(
        identity, limits, counters=counters, validator=validator, listener=name, metrics=telemetry.metrics
    )
    http = OutboundHttp(
        cfg,
        source,
        connector,
        limits,
        settings=settings if settings is not None else FixedTrafficSettings(),
        clock=clock if clock is not None else SystemClock(),
        drain=drain,
        idle=idle,
        counters=counters,
        listener=name,
        balancer=balancer,
        traffic_counters=traffic_counters,
        telemetry=telemetry,
    )

    async def handle(sock: socket.socket) -> None:
        conn = Conn(sock)
        if not identity.serving():
            log.warning("connection_refused", listener=name, reason="not_serving")
            conn.close()
            return
        if cfg.protocol == "tcp":
            await serve_tcp_connection(
                conn,
                cfg,
                source,
                tcp_balancer,
                connector,
                drain=drain,
                listener=name,
                metrics=telemetry.metrics,
            )
        else:
            await http.serve_connection(conn, "app")

    log.info("outbound_listening", listener=name, service=cfg.service, protocol=cfg.protocol)
    task_status.started(bound)
    try:
        async with trio.open_nursery() as timers:
            timers.start_soon(http.deadlines.run)
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
            timers.cancel_scope.cancel()
    finally:
        connector.pool.close_all()
    log.info("outbound_stopped", listener=name)
