"""One sidecar process: admin port, identity lifecycle, proxies, signals and drain, in one nursery.

Start-up order, and why:
1. the admin port first, so `/live` answers and `/ready` says "starting" while we join
   (an orchestrator can tell a slow control plane from a dead sidecar);
2. the identity (persisted SVID, or join with the token; an unreachable control plane
   is retried, a refusal ends the process with one line);
3. the renew loop, then every inbound and outbound listener; only when all are bound does
   `/ready` turn 200.

Shutdown (SIGTERM, SIGINT or `POST /shutdown`) begins a `Drain`: `/ready` turns 503, the
listeners stop accepting, keep-alive connections close after their current request, and
the process waits up to the drain timeout for in-flight requests before cancelling the
rest and returning 0.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client import CollectorRegistry, Info

from trustmesh import __version__
from trustmesh.ca.join_token import JoinToken
from trustmesh.clock import Clock, SystemClock
from trustmesh.durations import format_duration
from trustmesh.sidecar.admin import AdminServer
from trustmesh.sidecar.bootstrap import ControlPlaneClient, ControlPlaneRejected
from trustmesh.sidecar.config import HostPort, SidecarConfig
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.identity_lifecycle import IdentityLifecycle, LifecycleMetrics, NoIdentity, SvidInfo
from trustmesh.sidecar.inbound import serve_inbound
from trustmesh.sidecar.inbound.authorize_policy import PolicyAuthorizer
from trustmesh.sidecar.outbound import serve_outbound
from trustmesh.sidecar.outbound.discovered_endpoints import DiscoveredEndpoints
from trustmesh.sidecar.outbound.traffic_settings import TrafficSettingsStore
from trustmesh.sidecar.policy_follower import PolicyFollower
from trustmesh.sidecar.stream_client import StreamClient
from trustmesh.sidecar.telemetry import Telemetry, service_from_spiffe_id
from trustmesh.startup_gc import freeze_startup_objects
from trustmesh.tracing.metrics import SidecarMetrics
from trustmesh.tracing.switch import tracing_wanted

if TYPE_CHECKING:
    from trustmesh.tracing.setup import Tracing

log = structlog.get_logger(__name__)

# Deregistering from the control plane on shutdown is a courtesy bounded in time: the
# grace period removes us anyway if the control plane cannot be reached.
STREAM_STOP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class TelemetryOptions:
    """Tracing flags as parsed; `env` is the process environment (`OTEL_*`), read once at the edge.

    Tracing is on only with an endpoint (flag or `OTEL_EXPORTER_OTLP_*ENDPOINT`): see
    `trustmesh.tracing.switch`. `service_name` (flag) wins over `OTEL_SERVICE_NAME`, which wins
    over the SPIFFE ID's last path segment.
    """

    otlp_endpoint: str | None = None
    sample_ratio: float | None = None
    service_name: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


class SidecarFailed(Exception):
    """The sidecar cannot run without operator action (no identity, token refused); one line."""


def effective_config(cfg: SidecarConfig) -> dict[str, Any]:
    """The configuration as `/config` shows it: every setting, no secret (no join token)."""

    def dur(d: timedelta) -> str:
        return format_duration(d) if d.total_seconds() >= 1 else f"{int(d.total_seconds() * 1000)}ms"

    return {
        "control_planes": list(cfg.control_planes),
        "data_dir": str(cfg.data_dir),
        "admin": str(cfg.admin) if cfg.admin else None,
        "inbound": [
            {"listen": str(i.listen), "app": str(i.app), "protocol": i.protocol} for i in cfg.inbounds
        ],
        "outbound": [
            {"service": o.service, "listen": str(o.listen), "protocol": o.protocol} for o in cfg.outbounds
        ],
        "endpoints": [
            {"service": e.service, "address": str(e.address), "spiffe_id": str(e.spiffe_id)}
            for e in cfg.endpoints
        ],
        "limits": {
            "max_head_bytes": cfg.limits.max_head_bytes,
            "head_timeout": dur(cfg.limits.head_timeout),
            "body_timeout": dur(cfg.limits.body_timeout),
            "idle_timeout": dur(cfg.limits.idle_timeout),
            "max_connections": cfg.limits.max_connections,
            "drain_timeout": dur(cfg.limits.drain_timeout),
            "connect_timeout": dur(cfg.limits.connect_timeout),
        },
        "policy_dir": str(cfg.policy_dir) if cfg.policy_dir else None,
        "policy_poll": dur(cfg.policy_poll),
        "renew_backoff_max": dur(cfg.renew_backoff_max),
    }


@dataclass
class _State:
    """What the admin port reads: the live parts of the process (implements AdminSource)."""

    cfg: SidecarConfig
    identity: IdentityLifecycle
    drain: Drain
    proxies_up: bool = False
    streams: list[StreamClient] = field(default_factory=list)

    def config_received(self) -> bool:
        """Policy and endpoints in hand: from --policy-dir (read before the listeners bind), or at
        least one snapshot from the control plane (kept across disconnections)."""
        return self.cfg.policy_dir is not None or any(s.snapshots > 0 for s in self.streams)

    def readiness(self) -> tuple[bool, str]:
        if self.drain.draining:
            return False, "draining"
        if self.identity.svid_info() is None:
            return False, "starting: no SVID yet"
        if not self.identity.serving():
            return False, self.identity.not_serving_reason()
        if not self.proxies_up:
            return False, "starting: listeners not bound"
        if not self.config_received():
            return False, "waiting for configuration (policy, endpoints) from the control plane"
        return True, "ready"

    def svid_info(self) -> SvidInfo | None:
        return self.identity.svid_info()

    def renew_soon(self) -> None:
        self.identity.renew_soon()

    def effective_config(self) -> Mapping[str, Any]:
        doc = effective_config(self.cfg)
        info = self.identity.svid_info()
        doc["spiffe_id"] = str(info.spiffe_id) if info else None
        return doc


class Sidecar:
    """The assembled process. `run()` returns the exit code once drained."""

    def __init__(
        self,
        cfg: SidecarConfig,
        *,
        clock: Clock | None = None,
        telemetry: TelemetryOptions | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.cfg = cfg
        # The CLI's process is this sidecar alone; tests run several in one interpreter.
        self.freeze_gc = freeze_gc
        self.telemetry_options = telemetry if telemetry is not None else TelemetryOptions()
        self.tracing: Tracing | None = None
        self.clock = clock or SystemClock()
        self.registry = CollectorRegistry()
        Info(
            "trustmesh_sidecar", "The sidecar's version and configuration shape.", registry=self.registry
        ).info(
            {
                "version": __version__,
                "inbounds": str(len(cfg.inbounds)),
                "outbounds": str(len(cfg.outbounds)),
            }
        )
        # Request, connection, handshake and policy series, on the registry `/metrics` serves;
        # the SVID and anchor expiry gauge is the identity lifecycle's (updated on rotation).
        self.metrics = SidecarMetrics(self.registry, cert_expiry=False)
        self.drain = Drain()
        self.control_plane = ControlPlaneClient(cfg.control_planes)
        self.identity = IdentityLifecycle(
            cfg.data_dir,
            self.control_plane,
            clock=self.clock,
            metrics=LifecycleMetrics(self.registry),
            backoff_cap=cfg.renew_backoff_max.total_seconds(),
        )
        self.state = _State(cfg, self.identity, self.drain)
        self.admin_address: HostPort | None = None
        self.streams: list[StreamClient] = self.state.streams

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run until drained; `task_status.started()` once ready. Raises `SidecarFailed` alone."""
        try:
            await self._run(task_status)
        except BaseExceptionGroup as group:
            # The nursery wraps what its body raises; a lone SidecarFailed is unwrapped
            # so the CLI can print its one line. Anything else is a bug and surfaces whole.
            failed, rest = group.split(SidecarFailed)
            if failed is None or rest is not None:
                raise
            raise _first_leaf(failed) from None
        finally:
            await self._stop_tracing()
        log.info("sidecar_stopped", reason=self.drain.reason)
        return 0

    def _telemetry(self) -> Telemetry:
        """Metrics always; tracing (OpenTelemetry imported here, not before) only with an endpoint."""
        opts = self.telemetry_options
        service = (
            opts.service_name
            or opts.env.get("OTEL_SERVICE_NAME", "").strip()
            or service_from_spiffe_id(str(self.identity.spiffe_id))
        )
        if not tracing_wanted(opts.otlp_endpoint, opts.env):
            log.info("tracing_off", reason="no OTLP endpoint", service=service)
            return Telemetry(self.metrics, service=service)
        from trustmesh.tracing.setup import TracingConfigError, TracingOptions, setup_tracing
        from trustmesh.tracing.spans import MeshTracer

        try:
            self.tracing = setup_tracing(
                TracingOptions(
                    service_name=service, endpoint=opts.otlp_endpoint, sample_ratio=opts.sample_ratio
                ),
                env=opts.env,
            )
        except TracingConfigError as err:
            raise SidecarFailed(f"tracing: {err}") from err
        tracer = MeshTracer(self.tracing.tracer, service=service) if self.tracing.enabled else None
        return Telemetry(self.metrics, service=service, tracer=tracer)

    async def _stop_tracing(self) -> None:
        """Flush what is queued (bounded: a dead collector costs at most the export timeout)."""
        if self.tracing is not None:
            await trio.to_thread.run_sync(self.tracing.shutdown)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        token = JoinToken.parse(self.cfg.join_token) if self.cfg.join_token else None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals)
            if self.cfg.admin is not None:
                admin = AdminServer(self.state, self.registry, self.drain.begin)
                try:
                    self.admin_address = await nursery.start(admin.serve, self.cfg.admin)
                except OSError as err:
                    raise SidecarFailed(
                        f"cannot listen on admin address {self.cfg.admin}: {err.strerror}"
                    ) from err
            # A shutdown while still joining must not wait for the control plane.
            with trio.CancelScope() as startup:
                nursery.start_soon(self._cancel_on_drain, startup)
                try:
                    await self.identity.start(token)
                except (NoIdentity, ControlPlaneRejected) as err:
                    raise SidecarFailed(str(err)) from err
                await nursery.start(self.identity.run)
                telemetry = self._telemetry()
                try:
                    await nursery.start(
                        _serve_proxies,
                        self.cfg,
                        self.identity,
                        self.control_plane,
                        self.drain,
                        telemetry,
                        self.streams,
                    )
                except OSError as err:
                    raise SidecarFailed(f"cannot listen: {err}") from err
                self.state.proxies_up = True
                log.info(
                    "sidecar_ready",
                    spiffe_id=str(self.identity.spiffe_id),
                    inbounds=[str(i.listen) for i in self.cfg.inbounds],
                    outbounds=[str(o.listen) for o in self.cfg.outbounds],
                    admin=str(self.admin_address) if self.admin_address else None,
                )
                task_status.started()
                if self.freeze_gc:
                    freeze_startup_objects()  # start-up is over (see startup_gc.py)
            await self.drain.wait_started()
            for stream in self.streams:
                # Deregister at once: callers stop picking this endpoint while we drain.
                with trio.move_on_after(STREAM_STOP_TIMEOUT_S):
                    await stream.stop()
            await self._finish_drain()
            nursery.cancel_scope.cancel()

    async def _finish_drain(self) -> None:
        timeout = self.cfg.limits.drain_timeout.total_seconds()
        with trio.move_on_after(timeout) as scope:
            await self.drain.wait_idle()
        if scope.cancelled_caught:
            log.warning("drain_timeout", in_flight=self.drain.in_flight, drain_timeout=timeout)
        else:
            log.info("drain_complete")

    async def _cancel_on_drain(self, scope: trio.CancelScope) -> None:
        await self.drain.wait_started()
        scope.cancel()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.drain.begin(signal.Signals(signum).name)


def _first_leaf(group: BaseExceptionGroup[SidecarFailed]) -> SidecarFailed:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, SidecarFailed)
    return leaf


async def _serve_proxies(
    cfg: SidecarConfig,
    identity: IdentityLifecycle,
    control_plane: ControlPlaneClient,
    drain: Drain,
    telemetry: Telemetry,
    streams: list[StreamClient],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The stream, then every inbound and outbound listener, in one nursery; started once all are bound.

    Inbound is default deny (zero trust): the authorizer allows nothing until the first
    policy revision arrives, from `--policy-dir` or else from the control plane's stream.
    The same revision carries the TrafficPolicies the outbounds follow. The stream also
    brings the endpoints of the services this workload calls (`--endpoints` override them)
    and trust-bundle updates; while it is down, the sidecar serves from what it last had.
    """
    async with trio.open_nursery() as nursery:
        metrics = telemetry.metrics
        authorizer = PolicyAuthorizer(
            identity.spiffe_id,
            on_decision=lambda decision: metrics.observe_policy_decision(decision.decision.lower()),
        )
        traffic = TrafficSettingsStore()
        discovered = DiscoveredEndpoints(cfg.endpoints)
        from_control_plane = cfg.policy_dir is None
        stream = StreamClient(
            cfg.control_planes,
            identity.current_svid,
            advertise=[str(a) for a in cfg.advertise] or [str(i.listen) for i in cfg.inbounds],
            calls=[o.service for o in cfg.outbounds],
            on_bundle=identity.install_bundle,
            on_policy=authorizer.update if from_control_plane else None,
            on_traffic=traffic.update if from_control_plane else None,
            on_endpoints=discovered.update,
        )
        streams.append(stream)
        await nursery.start(stream.run)
        if not from_control_plane:
            # One revision drives both: who may call us (inbound) and how we call others (outbound).
            assert cfg.policy_dir is not None
            follower = PolicyFollower(
                authorizer, policy_dir=cfg.policy_dir, interval=cfg.policy_poll, also_apply=[traffic.update]
            )
            await nursery.start(follower.run)
        for inbound in cfg.inbounds:
            await nursery.start(
                partial(
                    serve_inbound, inbound, identity, authorizer, cfg.limits, drain=drain, telemetry=telemetry
                )
            )
        for outbound in cfg.outbounds:
            await nursery.start(
                partial(
                    serve_outbound,
                    outbound,
                    identity,
                    discovered,
                    cfg.limits,
                    drain=drain,
                    settings=traffic,
                    telemetry=telemetry,
                )
            )
        task_status.started()
