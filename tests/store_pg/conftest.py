"""Fixtures for the PostgreSQL store tests: one real throwaway cluster per session, a fresh database per test.

`open_backend` is parametrised over both backends so that every behavioural test in
test_store_contract.py runs against SQLite and PostgreSQL alike: the two must be
interchangeable behind `Store`. The cluster starts only when a PostgreSQL case runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.pgcluster import PgCluster
from trustmesh.store import SqliteStore, Store
from trustmesh.store.postgres import PostgresStore, open_postgres_store

StoreOpener = Callable[[], Awaitable[Store]]


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The URL (password included) of a fresh, empty database owned by the app role."""
    return pg_cluster.create_database()


@pytest.fixture
async def open_pg(pg_url: str) -> AsyncIterator[Callable[..., Awaitable[PostgresStore]]]:
    """Open PostgresStores on this test's database (each one a 'replica'); all closed afterwards."""
    opened: list[PostgresStore] = []

    async def opener(**kwargs: int) -> PostgresStore:
        store = await open_postgres_store(pg_url, **kwargs)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.aclose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreOpener]:
    """Open stores of one backend on one fresh database; each call is a new instance on the same data."""
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "trustmesh.db"

        async def opener() -> Store:
            store: Store = await SqliteStore.open(path)
            opened.append(store)
            return store

    else:
        url = request.getfixturevalue("pg_cluster").create_database()

        async def opener() -> Store:
            store: Store = await open_postgres_store(url)
            opened.append(store)
            return store

    yield opener
    for store in opened:
        await store.aclose()
