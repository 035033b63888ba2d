"""The control plane's end of the configuration stream: `wss://…/v1/stream`, one per sidecar.

A connection goes through these steps:
1. authenticate: the caller's TLS client chain (`PEER_CHAIN`, set by `server.py`) must be a
   valid SVID of our trust domain right now (`Issuer.authenticate`); otherwise the websocket
   is refused before it opens (HTTP 403) and a `stream_refused` event is logged. A chain
   from a foreign CA never gets this far: the TLS handshake fails.
2. `register`: accepted only with the caller's own SPIFFE ID and for a service bound to that
   ID in the registrations table (the `--service` of the token it joined with). Anything
   else is answered with an `error` (`registration_refused`), logged, and the stream closed:
   a workload cannot make itself an endpoint of another service.
3. a `snapshot` (bundle, policy revision files, endpoints of the services it calls), then
   `update`s with only what changed: the registry's listener marks connections that call
   a changed service, policy activation and bundle changes mark every connection. Each
   connection's sender coalesces whatever is marked into one update, so a burst of changes
   costs one message per sidecar, not one per change.
4. heartbeats both ways: the sender sends one after `heartbeat_interval` of quiet; a peer
   silent for `missed_heartbeats` intervals is gone, and its endpoints turn `disconnected`
   until the registry's grace period removes them. `deregister` removes them at once.

Acks: every update carries the hub's version (one counter per control plane, bumped on
every change); the sidecar acks it; the time from the change to the ack is the push
latency (`trustmesh_stream_push_latency_seconds`). `connections()` is what a GUI or
metrics page shows: who is connected, what was sent, what was acknowledged.

Malformed or unknown messages are logged (`stream_message_ignored`) and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
import trio
from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from trustmesh.clock import Clock
from trustmesh.control import stream_protocol as sp
from trustmesh.control.app import PEER_CHAIN
from trustmesh.control.errors import ApiError
from trustmesh.control.issuer import Issuer
from trustmesh.control.policy_service import PolicyService
from trustmesh.control.registry import DEFAULT_GRACE, DEFAULT_SWEEP_INTERVAL, Registry
from trustmesh.store import EndpointRecord, Store

log = structlog.get_logger(__name__)

# 5 s: a dead peer is noticed within three intervals (15 s, the grace period's order), and
# 500 idle sidecars cost the control plane 100 tiny frames a second.
DEFAULT_HEARTBEAT_INTERVAL = timedelta(seconds=5)
DEFAULT_MISSED_HEARTBEATS = 3
# How often the bundle is compared with what was last pushed (a cheap tuple comparison);
# rotation on this replica also pushes at once through `bundle_changed()`.
DEFAULT_BUNDLE_CHECK = timedelta(seconds=2)
# A send that takes longer is a peer that does not read: drop it rather than buffer for it.
SEND_TIMEOUT_S = 10.0
# Sent versions remembered per stream until acked (acks are cumulative; older ones drop).
MAX_UNACKED = 64
# Close codes (RFC 6455 section 7.4): 1001 going away (shutdown), 1008 policy violation.
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008

STREAMS = Gauge("trustmesh_stream_connected_sidecars", "Sidecars with a registered configuration stream")
PUSH_LATENCY = Histogram(
    "trustmesh_stream_push_latency_seconds",
    "Time from a change (policy, bundle, endpoints) to the sidecar's acknowledgement",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IGNORED = Counter("trustmesh_stream_messages_ignored", "Malformed or unexpected stream messages", ["reason"])


@dataclass(frozen=True)
class StreamSettings:
    """Timing of the stream on the control plane; tests shorten the intervals."""

    heartbeat_interval: timedelta = DEFAULT_HEARTBEAT_INTERVAL
    missed_heartbeats: int = DEFAULT_MISSED_HEARTBEATS
    grace: timedelta = DEFAULT_GRACE
    sweep_interval: timedelta = DEFAULT_SWEEP_INTERVAL
    bundle_check: timedelta = DEFAULT_BUNDLE_CHECK


@dataclass(frozen=True)
class ConnectionInfo:
    """One connected sidecar as the GUI and metrics see it."""

    connection_id: str
    spiffe_id: str
    service: str
    addresses: tuple[str, ...]
    calls: tuple[str, ...]
    connected_at: datetime
    version_sent: int
    version_acked: int
    last_push_latency_s: float | None


@dataclass
class _Connection:
    """The state of one registered stream; the sender task reads the dirty marks."""

    id: str
    spiffe_id: str
    service: str
    addresses: tuple[str, ...]
    calls: frozenset[str]
    calls_order: tuple[str, ...]
    connected_at: datetime
    wake: trio.Event = field(default_factory=trio.Event)
    dirty_bundle: bool = False
    dirty_policy: bool = False
    dirty_services: set[str] = field(default_factory=set)
    # trio time of the oldest change not yet sent, and of each sent version not yet acked
    change_at: float | None = None
    unacked: dict[int, float] = field(default_factory=dict)
    version_sent: int = 0
    version_acked: int = 0
    last_latency: float | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def mark(
        self, *, bundle: bool = False, policy: bool = False, services: frozenset[str] = frozenset()
    ) -> None:
        self.dirty_bundle |= bundle
        self.dirty_policy |= policy
        self.dirty_services |= services & self.calls
        if self.change_at is None and (bundle or policy or services & self.calls):
            self.change_at = trio.current_time()
        self.wake.set()


class StreamHub:
    """All configuration streams of one control plane, and what feeds them."""

    def __init__(
        self,
        issuer: Issuer,
        store: Store,
        clock: Clock,
        *,
        policy: PolicyService | None = None,
        settings: StreamSettings | None = None,
    ) -> None:
        self.issuer = issuer
        self.clock = clock
        self.policy = policy
        self.settings = settings or StreamSettings()
        self.registry = Registry(
            store, clock, grace=self.settings.grace, sweep_interval=self.settings.sweep_interval
        )
        self.registry.add_listener(self._endpoints_changed)
        self.version = 0
        self._store = store
        self._connections: dict[str, _Connection] = {}
        self._bundle: tuple[tuple[object, ...], str] = ((), "")
        self._policy_payload: sp.PolicyPayload | None = None
        self._policy_text: str | None = None  # encode_policy(_policy_payload), once per revision
        self._closing = False

    # -- what others call ----------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute(sp.STREAM_PATH, self._serve)]

    def connections(self) -> list[ConnectionInfo]:
        return [
            ConnectionInfo(
                c.id,
                c.spiffe_id,
                c.service,
                c.addresses,
                c.calls_order,
                c.connected_at,
                c.version_sent,
                c.version_acked,
                c.last_latency,
            )
            for c in self._connections.values()
        ]

    def bundle_changed(self) -> None:
        """Push the bundle now if its roots changed (server.py calls this after a rotation)."""
        roots = tuple(self.issuer.ca.bundle().x509_authorities)
        if roots != self._bundle[0]:
            self._bundle = (roots, self.issuer.ca.bundle().to_pem().decode("ascii"))
            self._bump()
            log.info("stream_bundle_changed", roots=len(roots), streams=len(self._connections))
            for conn in self._connections.values():
                conn.mark(bundle=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The registry and the watchers of policy and bundle; closes every stream when cancelled."""
        self.bundle_changed()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.registry.run)
                nursery.start_soon(self._watch_bundle)
                if self.policy is not None:
                    nursery.start_soon(self._watch_policy, self.policy)
                task_status.started()
        finally:
            self.close_all()

    def close_all(self) -> None:
        """Stop every stream (shutdown): each closes with 1001 and its sidecar reconnects elsewhere."""
        self._closing = True
        for conn in self._connections.values():
            conn.scope.cancel()

    # -- change feeds ----------------------------------------------------------------------

    def _bump(self) -> int:
        self.version += 1
        return self.version

    def _endpoints_changed(self, services: frozenset[str]) -> None:
        self._bump()
        for conn in self._connections.values():
            if services & conn.calls:
                conn.mark(services=services)

    async def _watch_policy(self, policy: PolicyService) -> None:
        while True:
            changed = policy.changed
            await changed.wait()
            self._policy_payload = self._policy_text = None
            self._bump()
            active = policy.watcher.active
            log.info(
                "stream_policy_push",
                revision=active.revision.id if active else None,
                streams=len(self._connections),
            )
            for conn in self._connections.values():
                conn.mark(policy=True)

    async def _watch_bundle(self) -> None:
        while True:
            await trio.sleep(self.settings.bundle_check.total_seconds())
            self.bundle_changed()

    def _current_policy(self) -> sp.PolicyPayload | None:
        if self.policy is None or self.policy.watcher.active is None:
            return None
        active = self.policy.watcher.active
        cached = self._policy_payload
        if cached is None or cached.revision != active.revision.id:
            cached = sp.PolicyPayload(active.revision.id, active.revision.message, dict(active.sources))
            self._policy_payload = cached
            self._policy_text = sp.encode_policy(cached)
        return cached

    def _endpoints_of(self, services: Sequence[str]) -> dict[str, tuple[sp.Endpoint, ...]]:
        return {s: tuple(_endpoint(r) for r in self.registry.endpoints(s)) for s in services}

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, websocket: WebSocket) -> None:
        try:
            caller = self.issuer.authenticate(PEER_CHAIN.get())
        except ApiError as exc:
            log.warning("stream_refused", reason=exc.error, detail=exc.detail)
            await websocket.close(code=CLOSE_POLICY)  # before accept: the client gets HTTP 403
            return
        await websocket.accept()
        try:
            await self._session(websocket, str(caller))
        except (WebSocketDisconnect, WebSocketDisconnected, OSError, trio.BrokenResourceError):
            return  # the peer went away; cleanup already ran in _session
        except trio.TooSlowError:
            log.warning("stream_send_timeout", spiffe_id=str(caller), timeout_s=SEND_TIMEOUT_S)
        # The other side may have closed already: nothing to say then.
        gone = (WebSocketDisconnected, WebSocketDisconnect, RuntimeError, OSError)
        with trio.move_on_after(1), suppress(*gone):
            await websocket.close(code=CLOSE_GOING_AWAY)

    async def _session(self, websocket: WebSocket, caller: str) -> None:
        silence = self.settings.heartbeat_interval.total_seconds() * self.settings.missed_heartbeats
        register: sp.Register | None = None
        with trio.move_on_after(silence):
            while register is None:
                message = await self._receive(websocket, caller)
                if message is None:
                    return
                if isinstance(message, sp.Register):
                    register = message
                elif not isinstance(message, sp.Heartbeat):
                    self._ignored(caller, "not_registered", type(message).__name__)
        if register is None:
            log.info("stream_closed", spiffe_id=caller, reason="no_register")
            return
        service = await self._check_registration(register, caller)
        if service is None:
            return await self._refuse(websocket, caller, register)
        conn = _Connection(
            id=self.registry.new_connection_id(),
            spiffe_id=caller,
            service=service,
            addresses=register.addresses,
            calls=frozenset(register.calls),
            calls_order=register.calls,
            connected_at=self.clock.now(),
        )
        deregistered = False
        self._connections[conn.id] = conn
        STREAMS.inc()
        log.info(
            "stream_registered",
            connection_id=conn.id,
            spiffe_id=caller,
            service=service,
            addresses=list(register.addresses),
            calls=list(register.calls),
        )
        try:
            await self.registry.register(conn.id, service, caller, register.addresses)
            with conn.scope:
                await self._send(websocket, conn, snapshot=True)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sender, websocket, conn)
                    deregistered = await self._receiver(websocket, conn, silence)
                    nursery.cancel_scope.cancel()
        finally:
            del self._connections[conn.id]
            STREAMS.dec()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                if deregistered:
                    await self.registry.deregister(conn.id)
                else:
                    await self.registry.disconnected(conn.id)
            log.info(
                "stream_closed",
                connection_id=conn.id,
                spiffe_id=caller,
                reason="deregistered" if deregistered else ("shutdown" if self._closing else "disconnected"),
                version_sent=conn.version_sent,
                version_acked=conn.version_acked,
            )

    async def _check_registration(self, register: sp.Register, caller: str) -> str | None:
        """The service to register as, or None (logged) when the caller may not register so."""
        if register.spiffe_id != caller:
            log.warning(
                "stream_registration_refused",
                spiffe_id=caller,
                claimed_spiffe_id=register.spiffe_id,
                service=register.service,
                reason="not_own_spiffe_id",
            )
            return None
        bound = sorted(r.service for r in await self._store.list_registrations() if r.spiffe_id == caller)
        if register.service is None and len(bound) == 1:
            return bound[0]
        if register.service is not None and register.service in bound:
            return register.service
        log.warning(
            "stream_registration_refused",
            spiffe_id=caller,
            service=register.service,
            bound_services=bound,
            reason="service_not_bound" if register.service is not None else "service_ambiguous",
        )
        return None

    async def _refuse(self, websocket: WebSocket, caller: str, register: sp.Register) -> None:
        if register.spiffe_id != caller:
            detail = f"a sidecar registers with its own SPIFFE ID ({caller}), not {register.spiffe_id}"
        elif register.service is None:
            detail = f"{caller} is bound to no single service: name the service to register"
        else:
            detail = f"service {register.service!r} is not bound to {caller} (its join token's --service)"
        with trio.move_on_after(SEND_TIMEOUT_S):
            await websocket.send_text(sp.encode(sp.Error("registration_refused", detail)))
            await websocket.close(code=CLOSE_POLICY)

    async def _receive(self, websocket: WebSocket, caller: str) -> sp.ClientMessage | None:
        """The next valid message from the sidecar; None when it has gone. Malformed ones are skipped."""
        while True:
            raw = await websocket.receive()
            if raw["type"] == "websocket.disconnect":
                return None
            data = raw.get("text")
            if data is None:
                data = raw.get("bytes") or b""
            if len(data) > sp.MAX_CLIENT_MESSAGE_BYTES:
                self._ignored(caller, "too_large", f"{len(data)} bytes")
                continue
            try:
                message = sp.decode(data)
            except sp.ProtocolError as exc:
                self._ignored(caller, exc.reason, exc.detail)
                continue
            if isinstance(message, sp.Snapshot | sp.Update | sp.Error):
                self._ignored(caller, "wrong_direction", type(message).__name__)
                continue
            return message

    def _ignored(self, caller: str, reason: str, detail: str) -> None:
        IGNORED.labels(reason=reason).inc()
        log.warning("stream_message_ignored", spiffe_id=caller, reason=reason, detail=detail[:200])

    async def _receiver(self, websocket: WebSocket, conn: _Connection, silence: float) -> bool:
        """Read until the peer leaves; True if it deregistered, False if it vanished or went silent."""
        while True:
            with trio.move_on_after(silence):
                message = await self._receive(websocket, conn.spiffe_id)
                if message is None:
                    return False
                if isinstance(message, sp.Deregister):
                    return True
                if isinstance(message, sp.Ack):
                    self._acked(conn, message.version)
                elif isinstance(message, sp.Register):
                    self._ignored(conn.spiffe_id, "already_registered", conn.service)
                continue
            log.info("stream_peer_silent", connection_id=conn.id, spiffe_id=conn.spiffe_id, silent_s=silence)
            return False

    def _acked(self, conn: _Connection, version: int) -> None:
        if version > conn.version_sent:
            self._ignored(conn.spiffe_id, "ack_ahead", f"ack {version} > sent {conn.version_sent}")
            return
        conn.version_acked = max(conn.version_acked, version)
        now = trio.current_time()
        for sent in [v for v in conn.unacked if v <= version]:
            latency = now - conn.unacked.pop(sent)
            conn.last_latency = latency
            PUSH_LATENCY.observe(latency)

    async def _sender(self, websocket: WebSocket, conn: _Connection) -> None:
        interval = self.settings.heartbeat_interval.total_seconds()
        while True:
            with trio.move_on_after(interval):
                await conn.wake.wait()
            if conn.wake.is_set():
                await self._send(websocket, conn, snapshot=False)
            else:
                with trio.fail_after(SEND_TIMEOUT_S):
                    await websocket.send_text(sp.encode(sp.Heartbeat()))

    async def _send(self, websocket: WebSocket, conn: _Connection, *, snapshot: bool) -> None:
        """A snapshot, or an update of what is marked; clears the marks it sends."""
        conn.wake = trio.Event()
        version = self.version
        message: sp.Snapshot | sp.Update
        if snapshot:
            message = sp.Snapshot(
                version=version,
                service=conn.service,
                bundle_pem=self._bundle[1],
                policy=self._current_policy(),
                endpoints=self._endpoints_of(conn.calls_order),
            )
            change_at = trio.current_time()
        else:
            message = sp.Update(
                version=version,
                bundle_pem=self._bundle[1] if conn.dirty_bundle else None,
                policy=self._current_policy() if conn.dirty_policy else None,
                endpoints=self._endpoints_of(sorted(conn.dirty_services)),
            )
            change_at = conn.change_at if conn.change_at is not None else trio.current_time()
        conn.dirty_bundle = conn.dirty_policy = False
        conn.dirty_services = set()
        conn.change_at = None
        conn.unacked[version] = min(change_at, conn.unacked.get(version, change_at))
        if len(conn.unacked) > MAX_UNACKED:  # a sidecar that never acks must not grow this
            del conn.unacked[min(conn.unacked)]
        conn.version_sent = version
        with trio.fail_after(SEND_TIMEOUT_S):
            await websocket.send_text(sp.encode(message, policy_text=self._policy_text))


def _endpoint(record: EndpointRecord) -> sp.Endpoint:
    return sp.Endpoint(record.address, record.spiffe_id, record.health)
