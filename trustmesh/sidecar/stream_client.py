"""The sidecar's end of the configuration stream: one websocket to the control plane, kept up.

What it does, in order, on each connection:
1. open `wss://<control plane>/v1/stream` over mutual TLS with the sidecar's *current* SVID
   (read at every connect, so a renewed SVID is used from the next reconnect on), trusting
   the newest bundle it knows;
2. send `register` (its service, SPIFFE ID, advertised inbound addresses, the services it calls);
3. apply the `snapshot` (it replaces everything: bundle, policy revision, endpoints of every
   called service), then each `update`, acknowledging every version it applied;
4. heartbeat every `heartbeat_interval`; a control plane silent for `missed_heartbeats`
   intervals is treated as gone.

When the connection ends the sidecar keeps serving from what it last applied (nothing is
cleared), and reconnects with exponential backoff and full jitter, trying the URLs in the
order given (the first that answers wins: failover). A reconnect resynchronises through
the new snapshot. `stop()` deregisters, so the sidecar's endpoints leave at once instead
of after the grace period.

What it delivers goes out through callbacks, so the sidecar wires it to its parts without
this module knowing them: `on_bundle(pem)`, `on_policy(revision)` and `on_traffic(revision)`
(one compiled `Revision`: AuthorizationPolicy and TrafficPolicy come in the same files, and
are compiled here once, off the event loop, with the loader the control plane validated
them with), and `on_endpoints(service, endpoints)`. A callback may be sync or async.

Malformed or unknown messages are logged and ignored; they never end the stream.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from trustmesh.control import stream_protocol as sp
from trustmesh.control.join_client import Svid, client_context
from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Problems, Revision

log = structlog.get_logger(__name__)

T = TypeVar("T")
Callback = Callable[[T], Awaitable[None] | None]
EndpointsCallback = Callable[[str, tuple[sp.Endpoint, ...]], Awaitable[None] | None]

# Matches the control plane's default: a silent peer is noticed within 15 s.
DEFAULT_HEARTBEAT_INTERVAL = timedelta(seconds=5)
DEFAULT_MISSED_HEARTBEATS = 3
# Backoff: the first retry within half a second (a control-plane restart is quick), growing
# to at most 30 s so that 500 sidecars of a dead control plane do not hammer its successor.
DEFAULT_BACKOFF_BASE = timedelta(milliseconds=500)
DEFAULT_BACKOFF_CAP = timedelta(seconds=30)
# A TLS plus websocket handshake takes milliseconds; past this the replica is not answering.
DEFAULT_CONNECT_TIMEOUT = timedelta(seconds=5)
# How long `stop()` waits for the control plane to confirm a deregistration (by closing).
STOP_TIMEOUT_S = 2.0


def backoff_delay(attempt: int, rng: random.Random, base: float, cap: float) -> float:
    """Full jitter (uniform in [0, min(cap, base * 2**attempt)]): reconnecting sidecars spread out."""
    return rng.uniform(0.0, min(cap, base * (2 ** min(attempt, 30))))


def stream_url(control_plane: str) -> str:
    """`https://HOST:PORT` (the sidecar's --control-plane) to `wss://HOST:PORT/v1/stream`."""
    parts = urlsplit(control_plane if "://" in control_plane else f"https://{control_plane}")
    if parts.scheme not in ("https", "wss") or not parts.netloc:
        raise ValueError(f"invalid control-plane URL {control_plane!r}: expected https://HOST:PORT")
    return f"wss://{parts.netloc}{sp.STREAM_PATH}"


@dataclass(frozen=True)
class StreamClientSettings:
    heartbeat_interval: timedelta = DEFAULT_HEARTBEAT_INTERVAL
    missed_heartbeats: int = DEFAULT_MISSED_HEARTBEATS
    backoff_base: timedelta = DEFAULT_BACKOFF_BASE
    backoff_cap: timedelta = DEFAULT_BACKOFF_CAP
    connect_timeout: timedelta = DEFAULT_CONNECT_TIMEOUT


async def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class StreamClient:
    """One sidecar's configuration stream. `await nursery.start(client.run)`; `await client.stop()`."""

    def __init__(
        self,
        control_planes: Sequence[str],
        svid: Callable[[], Svid],
        *,
        advertise: Sequence[str] = (),
        calls: Sequence[str] = (),
        service: str | None = None,
        on_bundle: Callback[bytes] | None = None,
        on_policy: Callback[Revision] | None = None,
        on_traffic: Callback[Revision] | None = None,
        on_endpoints: EndpointsCallback | None = None,
        settings: StreamClientSettings | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    ) -> None:
        if not control_planes:
            raise ValueError("at least one control-plane URL is required")
        self.urls = tuple(stream_url(u) for u in control_planes)
        self._svid = svid
        self.register = sp.Register(
            spiffe_id="",  # filled from the SVID at each connect
            addresses=tuple(sp.check_address(a) for a in advertise),
            calls=tuple(dict.fromkeys(calls)),
            service=service,
        )
        self.on_bundle = on_bundle
        self.on_policy = on_policy
        self.on_traffic = on_traffic
        self.on_endpoints = on_endpoints
        self.settings = settings or StreamClientSettings()
        self._rng = rng or random.Random()
        self._sleep = sleep
        # What was last applied: kept across disconnections (serve from the last snapshot).
        self.service: str | None = None
        self.version: int | None = None
        self.bundle_pem: bytes | None = None
        self.revision: str | None = None
        self.endpoints: dict[str, tuple[sp.Endpoint, ...]] = {}
        self.connected_url: str | None = None
        self.snapshots = 0
        self.last_error: sp.Error | None = None
        # Set (and replaced) after every applied message or state change: tests and the
        # admin port wait on it instead of polling.
        self.changed = trio.Event()
        self._refused_revision: str | None = None
        self._ws: WebSocketConnection | None = None
        self._stopping = False
        self._stopped = trio.Event()
        self._run_scope: trio.CancelScope | None = None

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the stream up until cancelled or `stop()`.

        `started` after the first snapshot, or after a first round of failed connections (the
        sidecar then serves from its static configuration and default-deny policy).
        """
        attempt = 0
        started = False
        try:
            with trio.CancelScope() as self._run_scope:
                while not self._stopping:
                    synced = False
                    for url in self.urls:
                        synced = await self._connect_once(url, task_status if not started else None)
                        started = started or synced
                        if synced or self._stopping:
                            break
                    if self._stopping:
                        break
                    if not started:
                        started = True
                        task_status.started()
                    attempt = 0 if synced else attempt + 1
                    delay = backoff_delay(
                        attempt,
                        self._rng,
                        self.settings.backoff_base.total_seconds(),
                        self.settings.backoff_cap.total_seconds(),
                    )
                    log.info("stream_reconnect_scheduled", delay_s=round(delay, 3), attempt=attempt)
                    await self._sleep(delay)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Deregister (the endpoints leave at once) and end `run`; bounded by a short timeout."""
        self._stopping = True
        ws = self._ws
        if ws is not None:
            with trio.move_on_after(STOP_TIMEOUT_S):
                try:
                    await ws.send_message(sp.encode(sp.Deregister()))
                    log.info("stream_deregistered", url=self.connected_url)
                    # The control plane closes the stream once the endpoints are gone.
                    await self._stopped.wait()
                except (ConnectionClosed, trio.BrokenResourceError, OSError):
                    pass
        if self._run_scope is not None:
            self._run_scope.cancel()

    def _ssl_context(self, svid: Svid) -> Any:
        # The newest bundle known: the stream's (rotations arrive here first), else the SVID's.
        roots = self.bundle_pem or svid.bundle_pem
        return client_context(roots, svid)

    async def _connect_once(self, url: str, task_status: trio.TaskStatus[None] | None) -> bool:
        """One connection to `url`, kept until it ends; True if a snapshot was applied on it."""
        svid = self._svid()
        register = sp.Register(
            svid.spiffe_id, self.register.addresses, self.register.calls, self.register.service
        )
        silence = self.settings.heartbeat_interval.total_seconds() * self.settings.missed_heartbeats
        synced = False
        try:
            async with open_websocket_url(
                url,
                ssl_context=self._ssl_context(svid),
                max_message_size=sp.MAX_SERVER_MESSAGE_BYTES,
                connect_timeout=self.settings.connect_timeout.total_seconds(),
                disconnect_timeout=1.0,
            ) as ws:
                self._ws = ws
                self.connected_url = url
                log.info("stream_connected", url=url, spiffe_id=svid.spiffe_id)
                await ws.send_message(sp.encode(register))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeats, ws)
                    try:
                        while True:
                            with trio.move_on_after(silence) as quiet:
                                raw = await ws.get_message()
                            if quiet.cancelled_caught:
                                log.warning("stream_peer_silent", url=url, silent_s=silence)
                                break
                            applied = await self._handle(ws, raw)
                            if applied and not synced:
                                synced = True
                                if task_status is not None:
                                    task_status.started()
                    except ConnectionClosed as exc:
                        reason = exc.reason
                        log.info(
                            "stream_disconnected",
                            url=url,
                            code=getattr(reason, "code", None),
                            reason=getattr(reason, "reason", None),
                        )
                    finally:
                        nursery.cancel_scope.cancel()
        except (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError) as exc:
            cause = exc.__cause__ or exc.__context__ or exc
            log.warning("stream_connect_failed", url=url, error=type(exc).__name__, detail=str(cause)[:300])
        finally:
            self._ws = None
            self.connected_url = None
            self._notify()
        return synced

    async def _heartbeats(self, ws: WebSocketConnection) -> None:
        try:
            while True:
                await trio.sleep(self.settings.heartbeat_interval.total_seconds())
                await ws.send_message(sp.encode(sp.Heartbeat()))
        except (ConnectionClosed, trio.BrokenResourceError):
            return  # the reader notices too, and ends the connection

    # -- applying messages -----------------------------------------------------------------

    async def _handle(self, ws: WebSocketConnection, raw: str | bytes) -> bool:
        """Apply one frame; True when it was a snapshot. Acks every applied version."""
        try:
            message = sp.decode(raw)
        except sp.ProtocolError as exc:
            log.warning("stream_message_ignored", reason=exc.reason, detail=exc.detail[:200])
            return False
        if isinstance(message, sp.Heartbeat):
            return False
        if isinstance(message, sp.Error):
            self.last_error = message
            log.error("stream_error_received", code=message.code, detail=message.detail)
            self._notify()
            return False
        if isinstance(message, sp.Snapshot):
            await self._apply_snapshot(message)
        elif isinstance(message, sp.Update):
            if self.version is None:
                log.warning(
                    "stream_message_ignored", reason="update_before_snapshot", version=message.version
                )
                return False
            await self._apply_update(message)
        else:
            log.warning("stream_message_ignored", reason="wrong_direction", type=type(message).__name__)
            return False
        self.version = message.version
        await ws.send_message(sp.encode(sp.Ack(message.version)))
        self._notify()
        return isinstance(message, sp.Snapshot)

    async def _apply_snapshot(self, snapshot: sp.Snapshot) -> None:
        self.service = snapshot.service
        self.snapshots += 1
        await self._apply_bundle(snapshot.bundle_pem)
        if snapshot.policy is not None:
            await self._apply_policy(snapshot.policy)
        # A called service missing from the snapshot has no endpoints now.
        endpoints = {s: snapshot.endpoints.get(s, ()) for s in self.register.calls}
        await self._apply_endpoints(endpoints, replace=True)
        log.info(
            "stream_snapshot_applied",
            version=snapshot.version,
            service=snapshot.service,
            revision=self.revision,
            endpoints={s: len(e) for s, e in endpoints.items()},
        )

    async def _apply_update(self, update: sp.Update) -> None:
        if update.bundle_pem is not None:
            await self._apply_bundle(update.bundle_pem)
        if update.policy is not None:
            await self._apply_policy(update.policy)
        await self._apply_endpoints(update.endpoints, replace=False)
        log.debug("stream_update_applied", version=update.version, services=sorted(update.endpoints))

    async def _apply_bundle(self, pem: str) -> None:
        data = pem.encode("ascii", errors="replace")
        if data and data != self.bundle_pem:
            self.bundle_pem = data
            await _call(self.on_bundle, data)

    async def _apply_policy(self, policy: sp.PolicyPayload) -> None:
        if policy.revision in (self.revision, self._refused_revision):
            return
        compile_ = partial(
            load_revision, dict(policy.files), revision_id=policy.revision, message=policy.message
        )
        loaded = await trio.to_thread.run_sync(compile_)
        if isinstance(loaded, Problems):
            # The control plane validated it with the same loader, so this is unexpected;
            # the last good revision stays, as on the control plane.
            self._refused_revision = policy.revision
            log.warning(
                "policy_revision_refused",
                revision=policy.revision,
                active_revision=self.revision,
                problems=[str(p) for p in loaded.items[:20]],
            )
            return
        self.revision = loaded.id
        await _call(self.on_policy, loaded)
        await _call(self.on_traffic, loaded)

    async def _apply_endpoints(
        self, endpoints: Mapping[str, tuple[sp.Endpoint, ...]], *, replace: bool
    ) -> None:
        for service, eps in endpoints.items():
            if service not in self.register.calls:
                continue  # not asked for; nothing here routes to it
            if not replace and self.endpoints.get(service) == eps:
                continue
            self.endpoints[service] = eps
            await _call(self.on_endpoints, service, eps)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
