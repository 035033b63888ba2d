"""Persistence behind one narrow interface (`Store`): SQLite by default, PostgreSQL for HA."""

from __future__ import annotations

from pathlib import Path

from trustmesh.store.base import (
    AlreadyRecorded,
    CaKeyRecord,
    EndpointRecord,
    IssuedSvidRecord,
    JoinTokenRecord,
    Registration,
    Store,
    StoreUnavailable,
    TokenConsumeFailed,
)
from trustmesh.store.postgres import PostgresStoreError, is_postgres_url, open_postgres_store
from trustmesh.store.sqlite import DB_FILENAME, SqliteStore

__all__ = [
    "DB_FILENAME",
    "AlreadyRecorded",
    "CaKeyRecord",
    "EndpointRecord",
    "IssuedSvidRecord",
    "JoinTokenRecord",
    "PostgresStoreError",
    "Registration",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "TokenConsumeFailed",
    "open_store",
    "open_store_sync",
]


def _sqlite_path(state_dir: Path, url: str | None) -> Path:
    if url is None:
        return state_dir / DB_FILENAME
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite://"))
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///PATH or postgresql://...")


async def open_store(state_dir: Path, url: str | None = None) -> Store:
    """The store for this state dir: SQLite at `<state-dir>/trustmesh.db` unless `url` says otherwise.

    `postgresql://…` selects the PostgreSQL backend (several control-plane replicas on one
    database); it raises `PostgresStoreError` when the server cannot be used.
    """
    if url is not None and is_postgres_url(url):
        return await open_postgres_store(url)
    return await SqliteStore.open(_sqlite_path(state_dir, url))


def open_store_sync(state_dir: Path, url: str | None = None) -> SqliteStore:
    """For synchronous callers outside trio (none in the request path)."""
    return SqliteStore.open_sync(_sqlite_path(state_dir, url))
