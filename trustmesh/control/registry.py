"""Service discovery: which addresses serve each service, who must answer there, and how fresh that is.

The store is the source of truth (`endpoints` table), so that several control-plane
replicas on one PostgreSQL database share one registry: a sidecar registered through
replica A is an endpoint for sidecars streaming from replica B. Each replica keeps a cache
of the rows (what snapshots and updates are built from) and re-reads a service's rows
whenever they may have changed:
- after its own writes (registration, disconnection, deregistration, expiry), and
- on PostgreSQL, when another replica says so: every change is followed by
  `pg_notify('trustmesh_endpoints', '<service>,<service>...')`, and every replica listens.
  A notification is only a wake-up call (one sent while the listener is down is lost),
  so after (re)starting to listen a replica re-reads everything.

Liveness, and why it works across replicas: the replica holding a sidecar's stream
refreshes `last_seen` of all its live rows in one statement every sweep; a stream that
ends without deregistering marks its rows `disconnected` at that moment; any replica
deletes rows not seen within the grace period (default 15 s). So a sidecar that vanishes,
and every sidecar of a replica that dies, leave the endpoint lists one grace period later,
and a clean deregistration leaves at once. Wall-clock times are compared across replicas:
their clocks must agree to well within the grace period (NTP does that).

Time is injected (`Clock`): tests move a `ManualClock` past the grace period and call
`sweep_once()` instead of sleeping.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from itertools import count

import structlog
import trio

from trustmesh.clock import Clock
from trustmesh.store import EndpointRecord, PostgresStoreError, Store
from trustmesh.store.pg_notify import listen, publish
from trustmesh.store.postgres import PostgresStore

log = structlog.get_logger(__name__)

# The default: long enough to ride out a sidecar restart or a replica failover
# without the endpoint flapping, short enough that callers stop trying a dead address soon.
DEFAULT_GRACE = timedelta(seconds=15)
# How often live rows are refreshed and stale ones expired. A few sweeps fit in the grace
# period, so a live row is never mistaken for a stale one.
DEFAULT_SWEEP_INTERVAL = timedelta(seconds=3)

NOTIFY_CHANNEL = "trustmesh_endpoints"
# A payload naming every service of a big expiry could pass PostgreSQL's 8000-byte limit;
# past this size a replica just says "re-read everything".
_MAX_NOTIFY_PAYLOAD = 4000
_ALL = "*"
# Backoff between attempts to listen again after the LISTEN connection was lost.
_LISTEN_RETRY_S = (0.5, 1.0, 2.0, 5.0)

ChangeListener = Callable[[frozenset[str]], None]


class Registry:
    """service -> endpoints, backed by the store, shared by every replica on that store."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        grace: timedelta = DEFAULT_GRACE,
        sweep_interval: timedelta = DEFAULT_SWEEP_INTERVAL,
        replica_id: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.grace = grace
        self.sweep_interval = sweep_interval
        # Random per process: a restarted replica must not refresh rows of its previous life.
        self.replica_id = replica_id or secrets.token_hex(6)
        self._ids = count(1)
        self._cache: dict[str, tuple[EndpointRecord, ...]] = {}
        self._listeners: list[ChangeListener] = []
        self._dirty: set[str] = set()
        self._all_dirty = False
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    # -- reading -------------------------------------------------------------------------

    def endpoints(self, service: str) -> tuple[EndpointRecord, ...]:
        """The endpoints of `service` as last read from the store, ordered by address."""
        return self._cache.get(service, ())

    def services(self) -> list[str]:
        return sorted(self._cache)

    def add_listener(self, listener: ChangeListener) -> None:
        """`listener(services)` is called (synchronously) whenever endpoint lists change."""
        self._listeners.append(listener)

    def new_connection_id(self) -> str:
        """An id for one stream, unique across replicas (the replica id is its prefix)."""
        return f"{self.replica_id}-{next(self._ids)}"

    async def settled(self) -> None:
        """Wait until every pending re-read is applied (tests; the bench)."""
        await self._idle.wait()

    # -- changes from this replica's streams ----------------------------------------------

    async def register(
        self, connection_id: str, service: str, spiffe_id: str, addresses: Sequence[str]
    ) -> None:
        """Make each address an endpoint of `service`, held by the stream `connection_id`."""
        now = self.clock.now()
        for address in addresses:
            await self.store.put_endpoint(
                EndpointRecord(service, address, spiffe_id, "healthy", now, connection_id, self.replica_id)
            )
        if addresses:
            log.info(
                "endpoint_registered",
                service=service,
                spiffe_id=spiffe_id,
                addresses=list(addresses),
                connection_id=connection_id,
            )
            await self._changed([service])

    async def disconnected(self, connection_id: str) -> None:
        """The stream ended without deregistering: keep its endpoints for the grace period."""
        services = await self.store.mark_endpoints_disconnected(connection_id, self.clock.now())
        if services:
            log.info("endpoint_disconnected", connection_id=connection_id, services=services)
            await self._changed(services)

    async def deregister(self, connection_id: str) -> None:
        """A clean shutdown: the stream's endpoints leave at once."""
        services = await self.store.delete_endpoints(connection_id)
        if services:
            log.info("endpoint_deregistered", connection_id=connection_id, services=services)
            await self._changed(services)

    async def sweep_once(self) -> list[str]:
        """Refresh this replica's live rows, then expire rows not seen within the grace period."""
        now = self.clock.now()
        await self.store.touch_endpoints(self.replica_id, now)
        expired = await self.store.expire_endpoints(now - self.grace)
        if expired:
            log.info("endpoint_expired", services=expired, grace_s=self.grace.total_seconds())
            await self._changed(expired)
        return expired

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load every row, then sweep, re-read and (on PostgreSQL) follow other replicas' changes."""
        await self._reload_all()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reloader)
            nursery.start_soon(self._sweeper)
            if isinstance(self.store, PostgresStore):
                await nursery.start(self._follow_replicas, self.store)
            task_status.started()

    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(self.sweep_interval.total_seconds())
            try:
                await self.sweep_once()
            except PostgresStoreError as exc:
                # The database is away: nothing can expire without it; try again next sweep.
                log.warning("endpoint_sweep_failed", error=str(exc))

    async def _changed(self, services: Iterable[str]) -> None:
        services = sorted(set(services))
        self._mark(services)
        if isinstance(self.store, PostgresStore):
            payload = ",".join(services)
            if len(payload) > _MAX_NOTIFY_PAYLOAD:
                payload = _ALL
            try:
                await publish(self.store, NOTIFY_CHANNEL, payload)
            except PostgresStoreError as exc:
                # Other replicas catch up at their next full re-read; ours is already marked.
                log.warning("endpoint_notify_failed", services=services[:20], error=str(exc))

    def _mark(self, services: Iterable[str]) -> None:
        self._dirty.update(services)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    def _mark_all(self) -> None:
        self._all_dirty = True
        self._mark(())

    async def _reloader(self) -> None:
        """The one task that reads rows into the cache, so reads never race each other."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                if self._all_dirty:
                    self._all_dirty = False
                    self._dirty.clear()
                    await self._reload_all()
                while self._dirty:
                    service = min(self._dirty)
                    self._dirty.discard(service)
                    rows = tuple(await self.store.list_endpoints(service))
                    self._apply({service: rows}, [service])
            except PostgresStoreError as exc:
                log.warning("endpoint_reload_failed", error=str(exc))
                self._all_dirty = True
                await trio.sleep(_LISTEN_RETRY_S[0])
                self._wake.set()
                continue
            if not self._wake.is_set():
                self._idle.set()

    async def _reload_all(self) -> None:
        by_service: dict[str, list[EndpointRecord]] = {}
        for row in await self.store.list_endpoints():
            by_service.setdefault(row.service, []).append(row)
        fresh = {service: tuple(rows) for service, rows in by_service.items()}
        self._apply(fresh, set(fresh) | set(self._cache))

    def _apply(self, fresh: dict[str, tuple[EndpointRecord, ...]], services: Iterable[str]) -> None:
        changed: set[str] = set()
        for service in services:
            rows = fresh.get(service, ())
            if _view(rows) != _view(self._cache.get(service, ())):
                changed.add(service)
            if rows:
                self._cache[service] = rows
            else:
                self._cache.pop(service, None)
        if changed:
            frozen = frozenset(changed)
            for listener in self._listeners:
                listener(frozen)

    async def _follow_replicas(
        self, store: PostgresStore, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        attempt = 0
        started = False
        while True:
            try:
                async with listen(store, NOTIFY_CHANNEL) as notes:
                    attempt = 0
                    # Anything published while we were not listening is lost: read it all.
                    self._mark_all()
                    if not started:
                        started = True
                        task_status.started()
                    async for note in notes:
                        if note.payload == _ALL:
                            self._mark_all()
                        else:
                            self._mark(s for s in note.payload.split(",") if s)
            except PostgresStoreError as exc:
                delay = _LISTEN_RETRY_S[min(attempt, len(_LISTEN_RETRY_S) - 1)]
                attempt += 1
                log.warning("endpoint_listen_lost", error=str(exc), retry_in_s=delay)
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(delay)


def _view(rows: Iterable[EndpointRecord]) -> tuple[tuple[str, str, str], ...]:
    """What a sidecar sees of the rows: a refresh of `last_seen` alone is no change to push."""
    return tuple((r.address, r.spiffe_id, r.health) for r in rows)
