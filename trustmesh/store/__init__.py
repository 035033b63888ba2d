"""Persistence behind one narrow interface (`Store`): SQLite by default, PostgreSQL later."""

from __future__ import annotations

from pathlib import Path

from trustmesh.store.base import (
    CaKeyRecord,
    IssuedSvidRecord,
    JoinTokenRecord,
    Registration,
    Store,
    TokenConsumeFailed,
)
from trustmesh.store.sqlite import DB_FILENAME, SqliteStore

__all__ = [
    "DB_FILENAME",
    "CaKeyRecord",
    "IssuedSvidRecord",
    "JoinTokenRecord",
    "Registration",
    "SqliteStore",
    "Store",
    "TokenConsumeFailed",
    "open_store",
    "open_store_sync",
]


def _sqlite_path(state_dir: Path, url: str | None) -> Path:
    if url is None:
        return state_dir / DB_FILENAME
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite://"))
    if url.startswith(("postgres://", "postgresql://")):
        raise ValueError("the PostgreSQL store backend is not implemented yet; use the default SQLite store")
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///PATH")


async def open_store(state_dir: Path, url: str | None = None) -> Store:
    """The store for this state dir: SQLite at `<state-dir>/trustmesh.db` unless `url` says otherwise."""
    return await SqliteStore.open(_sqlite_path(state_dir, url))


def open_store_sync(state_dir: Path, url: str | None = None) -> SqliteStore:
    """For synchronous callers outside trio (none in the request path)."""
    return SqliteStore.open_sync(_sqlite_path(state_dir, url))
