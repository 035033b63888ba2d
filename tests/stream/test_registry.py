"""The registry on a real SQLite store with a ManualClock: no network, no sleeping on grace periods."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from trustmesh.clock import ManualClock
from trustmesh.control.registry import Registry
from trustmesh.store import SqliteStore

API = "spiffe://example.org/api"


@pytest.fixture
async def registry(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Registry]:
    store = await SqliteStore.open(tmp_path / "trustmesh.db")
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    # Sweeps only when the test says so (the loop's interval is an hour).
    reg = Registry(store, clock, grace=timedelta(seconds=15), sweep_interval=timedelta(hours=1))
    await nursery.start(reg.run)
    yield reg
    await store.aclose()


def view(reg: Registry, service: str) -> list[tuple[str, str]]:
    return [(e.address, e.health) for e in reg.endpoints(service)]


async def test_register_disconnect_and_expire_after_the_grace_period(registry: Registry) -> None:
    seen: list[frozenset[str]] = []
    registry.add_listener(seen.append)
    conn = registry.new_connection_id()
    await registry.register(conn, "api", API, ["10.0.0.1:80", "10.0.0.2:80"])
    await registry.settled()
    assert view(registry, "api") == [("10.0.0.1:80", "healthy"), ("10.0.0.2:80", "healthy")]
    assert seen == [frozenset({"api"})]
    # Live rows survive any number of sweeps: the replica refreshes them.
    registry.clock.advance(timedelta(seconds=60))  # type: ignore[attr-defined]
    assert await registry.sweep_once() == []
    await registry.disconnected(conn)
    await registry.settled()
    assert view(registry, "api") == [("10.0.0.1:80", "disconnected"), ("10.0.0.2:80", "disconnected")]
    registry.clock.advance(timedelta(seconds=15))  # type: ignore[attr-defined]
    assert await registry.sweep_once() == []  # exactly the grace period: still there
    registry.clock.advance(timedelta(seconds=1))  # type: ignore[attr-defined]
    assert await registry.sweep_once() == ["api"]
    await registry.settled()
    assert view(registry, "api") == [] and registry.services() == []
    assert seen[-1] == frozenset({"api"})


async def test_deregister_removes_at_once_and_only_its_own_rows(registry: Registry) -> None:
    first, second = registry.new_connection_id(), registry.new_connection_id()
    await registry.register(first, "api", API, ["10.0.0.1:80"])
    await registry.register(second, "api", API, ["10.0.0.2:80"])
    await registry.deregister(first)
    await registry.settled()
    assert view(registry, "api") == [("10.0.0.2:80", "healthy")]


async def test_a_reconnected_sidecar_takes_its_row_back_from_the_old_stream(registry: Registry) -> None:
    old, new = registry.new_connection_id(), registry.new_connection_id()
    await registry.register(old, "api", API, ["10.0.0.1:80"])
    await registry.register(new, "api", API, ["10.0.0.1:80"])
    # The old stream's late close must not mark the reconnected endpoint down.
    await registry.disconnected(old)
    await registry.deregister(old)
    await registry.settled()
    assert view(registry, "api") == [("10.0.0.1:80", "healthy")]


async def test_rows_of_a_previous_life_are_loaded_and_expire_unless_reclaimed(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "trustmesh.db")
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    try:
        before = Registry(store, clock, sweep_interval=timedelta(hours=1))
        await before.register(before.new_connection_id(), "api", API, ["10.0.0.1:80", "10.0.0.2:80"])
        async with trio.open_nursery() as nursery:
            after = Registry(store, clock, sweep_interval=timedelta(hours=1))  # a restarted control plane
            await nursery.start(after.run)
            assert len(after.endpoints("api")) == 2
            await after.register(after.new_connection_id(), "api", API, ["10.0.0.2:80"])  # it came back
            clock.advance(timedelta(seconds=16))
            assert await after.sweep_once() == ["api"]
            await after.settled()
            assert view(after, "api") == [("10.0.0.2:80", "healthy")]
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()
