"""The stream's endpoint rows (`Store.put_endpoint` and friends), on SQLite and PostgreSQL alike.

What the registry relies on: one row per (service, address), replaced by a re-registration
from any stream; only the registering stream's close or deregistration touches its rows;
`touch` refreshes only the live rows of one replica; expiry removes what was not seen
within the grace period; every change says which services it changed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.store_pg.conftest import StoreOpener
from trustmesh.store import EndpointRecord

NOW = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def ep(
    service: str = "api",
    address: str = "10.0.0.1:8080",
    conn: str = "a-1",
    replica: str = "a",
    seen: datetime = NOW,
) -> EndpointRecord:
    return EndpointRecord(service, address, f"spiffe://example.org/{service}", "healthy", seen, conn, replica)


async def test_endpoints_round_trip_and_upsert_by_service_and_address(open_backend: StoreOpener) -> None:
    store = await open_backend()
    await store.put_endpoint(ep(address="10.0.0.2:8080"))
    await store.put_endpoint(ep())
    await store.put_endpoint(ep(service="web", conn="a-2"))
    assert await store.list_endpoints("api") == [ep(), ep(address="10.0.0.2:8080")]
    assert [e.service for e in await store.list_endpoints()] == ["api", "api", "web"]
    # The same sidecar reconnecting through replica b replaces its row, not adds one.
    moved = ep(conn="b-7", replica="b", seen=NOW + timedelta(seconds=3))
    await store.put_endpoint(moved)
    assert await store.list_endpoints("api") == [moved, ep(address="10.0.0.2:8080")]
    # A second instance of the store (a replica) sees the same rows.
    other = await open_backend()
    assert await other.list_endpoints("api") == [moved, ep(address="10.0.0.2:8080")]


async def test_only_the_registering_stream_disconnects_or_deletes_its_rows(open_backend: StoreOpener) -> None:
    store = await open_backend()
    await store.put_endpoint(ep())
    await store.put_endpoint(ep(service="web", conn="a-1"))
    await store.put_endpoint(ep(address="10.0.0.2:8080", conn="a-2"))
    assert await store.mark_endpoints_disconnected("nobody", NOW) == []
    later = NOW + timedelta(seconds=5)
    assert await store.mark_endpoints_disconnected("a-1", later) == ["api", "web"]
    rows = {(e.service, e.address): e for e in await store.list_endpoints()}
    assert rows[("api", "10.0.0.1:8080")].health == "disconnected"
    assert rows[("api", "10.0.0.1:8080")].last_seen == later
    assert rows[("api", "10.0.0.2:8080")].health == "healthy"
    assert await store.delete_endpoints("a-1") == ["api", "web"]
    assert await store.delete_endpoints("a-1") == []
    assert [(e.service, e.address) for e in await store.list_endpoints()] == [("api", "10.0.0.2:8080")]


async def test_touch_keeps_live_rows_of_one_replica_and_expiry_removes_the_rest(
    open_backend: StoreOpener,
) -> None:
    store = await open_backend()
    await store.put_endpoint(ep(conn="a-1", replica="a"))
    await store.put_endpoint(ep(address="10.0.0.2:8080", conn="b-1", replica="b"))
    await store.put_endpoint(ep(service="web", conn="a-2", replica="a"))
    await store.mark_endpoints_disconnected("a-2", NOW)
    later = NOW + timedelta(seconds=20)
    await store.touch_endpoints("a", later)
    # b's row (its replica stopped touching) and a's disconnected row are past the grace period.
    assert await store.expire_endpoints(later - timedelta(seconds=15)) == ["api", "web"]
    assert [(e.address, e.last_seen) for e in await store.list_endpoints()] == [("10.0.0.1:8080", later)]
    assert await store.expire_endpoints(later - timedelta(seconds=15)) == []
