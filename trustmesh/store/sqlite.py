"""SQLite backend of `Store`: one file, `<state-dir>/trustmesh.db`, in WAL mode.

sqlite3 blocks, so every call runs in a worker thread through `trio.to_thread.run_sync`.
One connection is shared by those threads behind a lock: SQLite serialises writers
anyway, and a single connection keeps the single-use token check simple to reason
about. Other processes (the CLI creating a token while the control plane runs) are
handled by SQLite's own file locking plus a busy timeout.

The one exception is the audit row of a renewal (`record_svid`), the only write on the
issuance hot path: a single INSERT that, uncontended, costs far less than the hop to a
worker thread and back. It is tried inline on a second connection that never waits (busy
timeout 0) and never checkpoints (a checkpoint fsyncs); if the lock is taken or another
process holds SQLite's write lock it goes through the worker thread like every other
call. Every `_INLINE_CHECKPOINT_EVERY`-th row also takes the thread path, so the main
connection's automatic checkpoint keeps the WAL short.

Times are stored as fixed-width UTC text (`2026-01-01T00:00:00.000000Z`) so that SQL
string comparison is time comparison and the file stays readable with `sqlite3`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog
import trio

from trustmesh.store.base import (
    AlreadyRecorded,
    CaKeyKind,
    CaKeyRecord,
    EndpointHealth,
    EndpointRecord,
    IssuedSvidRecord,
    JoinTokenRecord,
    Registration,
    StoreUnavailable,
    TokenConsumeFailed,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

DB_FILENAME = "trustmesh.db"

# Wait this long for another process's write lock before failing (seconds). Writers hold
# the lock for a millisecond or so; five seconds only matters on a badly overloaded host.
_BUSY_TIMEOUT_S = 5.0

# See the module docstring: one audit row in this many goes through the worker thread.
_INLINE_CHECKPOINT_EVERY = 64

# Ordered schema migrations. Append only: a released version is never edited, so a
# database at version N is upgraded by running N+1.. in order. PostgreSQL gets its own list.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE join_tokens (
            id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            spiffe_id TEXT NOT NULL,
            service TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT,
            used_by_serial TEXT
        );
        CREATE TABLE issued_svids (
            serial TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            not_after TEXT NOT NULL,
            issued_at TEXT NOT NULL,
            auth TEXT NOT NULL
        );
        CREATE INDEX issued_svids_spiffe_id ON issued_svids (spiffe_id);
        CREATE TABLE ca_keys (
            fingerprint TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('root', 'intermediate')),
            not_before TEXT NOT NULL,
            not_after TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE registrations (
            service TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE endpoints (
            service TEXT NOT NULL,
            address TEXT NOT NULL,
            spiffe_id TEXT NOT NULL,
            health TEXT NOT NULL CHECK (health IN ('healthy', 'disconnected')),
            last_seen TEXT NOT NULL,
            connection_id TEXT NOT NULL,
            replica_id TEXT NOT NULL,
            PRIMARY KEY (service, address)
        );
        CREATE INDEX endpoints_connection ON endpoints (connection_id);
        CREATE INDEX endpoints_replica ON endpoints (replica_id);
        """,
    ),
    (
        3,
        # One recovery per expired SVID, across replicas (see `AlreadyRecorded`).
        """
        CREATE UNIQUE INDEX issued_svids_one_recovery ON issued_svids (auth) WHERE auth LIKE 'recover:%';
        """,
    ),
)


def _ts(value: datetime) -> str:
    """`%Y-%m-%dT%H:%M:%S.%fZ` in UTC (what `_parse_ts` reads); isoformat writes the same text
    for years 1000-9999 at about a third of strftime's cost, twice per audit row."""
    if value.tzinfo is None:
        raise ValueError("store timestamps must be timezone-aware")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _opt_ts(text: str | None) -> datetime | None:
    return None if text is None else _parse_ts(text)


_INSERT_SVID = (
    "INSERT INTO issued_svids (serial, spiffe_id, not_after, issued_at, auth) VALUES (?, ?, ?, ?, ?)"
)


def _svid_params(r: IssuedSvidRecord) -> tuple[str, str, str, str, str]:
    return (r.serial, r.spiffe_id, _ts(r.not_after), _ts(r.issued_at), r.auth)


def _token(row: sqlite3.Row) -> JoinTokenRecord:
    return JoinTokenRecord(
        id=row["id"],
        secret_hash=row["secret_hash"],
        spiffe_id=row["spiffe_id"],
        service=row["service"],
        created_at=_parse_ts(row["created_at"]),
        expires_at=_parse_ts(row["expires_at"]),
        used_at=_opt_ts(row["used_at"]),
        used_by_serial=row["used_by_serial"],
    )


def _svid(row: sqlite3.Row) -> IssuedSvidRecord:
    return IssuedSvidRecord(
        serial=row["serial"],
        spiffe_id=row["spiffe_id"],
        not_after=_parse_ts(row["not_after"]),
        issued_at=_parse_ts(row["issued_at"]),
        auth=row["auth"],
    )


def _endpoint(row: sqlite3.Row) -> EndpointRecord:
    return EndpointRecord(
        service=row["service"],
        address=row["address"],
        spiffe_id=row["spiffe_id"],
        health=cast(EndpointHealth, row["health"]),
        last_seen=_parse_ts(row["last_seen"]),
        connection_id=row["connection_id"],
        replica_id=row["replica_id"],
    )


class SqliteStore:
    """`Store` on one SQLite file. Open with `SqliteStore.open(path)` (or `open_store`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        # record_svid's inline attempt only (see the module docstring); opened by open_sync.
        self._inline: sqlite3.Connection | None = None
        self._inline_writes = 0
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open_sync(cls, path: Path) -> SqliteStore:
        """Open (creating mode 0600 if needed) and migrate the database at `path`."""
        try:
            return cls._open_sync(path)
        except sqlite3.DatabaseError as exc:
            log.error("store_unavailable", path=str(path), error=str(exc))
            raise StoreUnavailable(f"cannot open the SQLite store {path}: {exc}") from exc

    @classmethod
    def _open_sync(cls, path: Path) -> SqliteStore:
        if not path.exists():
            # Create the file ourselves so it is 0600 from its first byte; SQLite gives the
            # -wal and -shm files the same mode as the database.
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            os.close(fd)
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        store = cls(conn, path)
        store._migrate()
        inline = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        inline.execute("PRAGMA synchronous=NORMAL")
        inline.execute("PRAGMA foreign_keys=ON")
        inline.execute("PRAGMA wal_autocheckpoint=0")
        store._inline = inline
        return store

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        return await trio.to_thread.run_sync(cls.open_sync, path)

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, _ts(datetime.now(UTC))),
                )
                log.info("store_migrated", path=str(self.path), version=version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        row = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._conn)

        try:
            return await trio.to_thread.run_sync(locked)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError):
                raise
            # Disk full, read-only file, I/O error: the transaction rolled back, nothing changed.
            log.error("store_unavailable", path=str(self.path), error=str(exc))
            raise StoreUnavailable(f"cannot use the SQLite store {self.path}: {exc}") from exc

    async def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)

        await self._run(run)

    async def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        def run(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return cast(list[sqlite3.Row], conn.execute(sql, params).fetchall())

        return await self._run(run)

    # -- join tokens ---------------------------------------------------------------------

    async def create_join_token(self, record: JoinTokenRecord) -> None:
        await self._write(
            "INSERT INTO join_tokens (id, secret_hash, spiffe_id, service, created_at, expires_at, used_at,"
            " used_by_serial) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
            (
                record.id,
                record.secret_hash,
                record.spiffe_id,
                record.service,
                _ts(record.created_at),
                _ts(record.expires_at),
            ),
        )

    async def get_join_token(self, token_id: str) -> JoinTokenRecord | None:
        rows = await self._query("SELECT * FROM join_tokens WHERE id = ?", (token_id,))
        return _token(rows[0]) if rows else None

    async def list_join_tokens(self) -> list[JoinTokenRecord]:
        return [_token(r) for r in await self._query("SELECT * FROM join_tokens ORDER BY created_at, id")]

    async def consume_join_token_and_record(
        self, token_id: str, secret_hash: str, now: datetime, issued: IssuedSvidRecord
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # The whole single-use guarantee is this WHERE clause: only one UPDATE can
                # match `used_at IS NULL`, whatever the interleaving of callers.
                cur = conn.execute(
                    "UPDATE join_tokens SET used_at = ?, used_by_serial = ?"
                    " WHERE id = ? AND secret_hash = ? AND used_at IS NULL AND expires_at > ?",
                    (_ts(now), issued.serial, token_id, secret_hash, _ts(now)),
                )
                if cur.rowcount != 1:
                    row = conn.execute("SELECT * FROM join_tokens WHERE id = ?", (token_id,)).fetchone()
                    conn.execute("ROLLBACK")
                    raise TokenConsumeFailed(_why_not(row, secret_hash, now))
                conn.execute(_INSERT_SVID, _svid_params(issued))
                conn.execute("COMMIT")
            except TokenConsumeFailed:
                raise
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(run)

    # -- audit log ---------------------------------------------------------------------

    async def record_svid(self, record: IssuedSvidRecord) -> None:
        params = _svid_params(record)
        try:
            if not self._try_inline_write(_INSERT_SVID, params):
                await self._write(_INSERT_SVID, params)
        except sqlite3.IntegrityError as exc:
            raise AlreadyRecorded(
                f"audit row refused as a duplicate (serial {record.serial}, auth {record.auth})"
            ) from exc

    def _try_inline_write(self, sql: str, params: tuple[Any, ...]) -> bool:
        """Run one autocommit statement on the event loop's thread if that cannot block; False if not run."""
        if self._inline is None or self._inline_writes >= _INLINE_CHECKPOINT_EVERY:
            self._inline_writes = 0
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._inline.execute(sql, params)
        except sqlite3.OperationalError:
            # Typically SQLITE_BUSY: another process is writing. The statement wrote nothing;
            # the thread path waits for the lock (and raises whatever is not transient).
            return False
        finally:
            self._lock.release()
        self._inline_writes += 1
        return True

    async def get_svid(self, serial: str) -> IssuedSvidRecord | None:
        rows = await self._query("SELECT * FROM issued_svids WHERE serial = ?", (serial,))
        return _svid(rows[0]) if rows else None

    async def list_svids(self) -> list[IssuedSvidRecord]:
        return [_svid(r) for r in await self._query("SELECT * FROM issued_svids ORDER BY issued_at, serial")]

    # -- CA key metadata -----------------------------------------------------------------

    async def put_ca_key(self, record: CaKeyRecord) -> None:
        await self._write(
            "INSERT OR REPLACE INTO ca_keys (fingerprint, kind, not_before, not_after, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                record.fingerprint,
                record.kind,
                _ts(record.not_before),
                _ts(record.not_after),
                _ts(record.created_at),
            ),
        )

    async def list_ca_keys(self) -> list[CaKeyRecord]:
        rows = await self._query("SELECT * FROM ca_keys ORDER BY created_at, fingerprint")
        return [
            CaKeyRecord(
                fingerprint=r["fingerprint"],
                kind=cast(CaKeyKind, r["kind"]),
                not_before=_parse_ts(r["not_before"]),
                not_after=_parse_ts(r["not_after"]),
                created_at=_parse_ts(r["created_at"]),
            )
            for r in rows
        ]

    # -- registrations -------------------------------------------------------------------

    async def put_registration(self, registration: Registration) -> None:
        await self._write(
            "INSERT OR REPLACE INTO registrations (service, spiffe_id, created_at) VALUES (?, ?, ?)",
            (registration.service, registration.spiffe_id, _ts(registration.created_at)),
        )

    async def list_registrations(self) -> list[Registration]:
        rows = await self._query("SELECT * FROM registrations ORDER BY service")
        return [Registration(r["service"], r["spiffe_id"], _parse_ts(r["created_at"])) for r in rows]

    # -- endpoints (configuration stream) ------------------------------------------------

    async def put_endpoint(self, record: EndpointRecord) -> None:
        await self._write(
            "INSERT OR REPLACE INTO endpoints (service, address, spiffe_id, health, last_seen,"
            " connection_id, replica_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.service,
                record.address,
                record.spiffe_id,
                record.health,
                _ts(record.last_seen),
                record.connection_id,
                record.replica_id,
            ),
        )

    async def list_endpoints(self, service: str | None = None) -> list[EndpointRecord]:
        if service is None:
            rows = await self._query("SELECT * FROM endpoints ORDER BY service, address")
        else:
            rows = await self._query("SELECT * FROM endpoints WHERE service = ? ORDER BY address", (service,))
        return [_endpoint(r) for r in rows]

    async def _change_endpoints(
        self, where: str, params: tuple[Any, ...], update: tuple[str, tuple[Any, ...]] | None
    ) -> list[str]:
        """Update (`update`: SET clause and its parameters) or delete the matching rows.

        Returns the services of the rows it matched, sorted. Both statements run in one
        transaction so the answer is exactly the rows changed.
        """

        def run(conn: sqlite3.Connection) -> list[str]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                services = sorted(
                    {r[0] for r in conn.execute(f"SELECT service FROM endpoints WHERE {where}", params)}
                )
                if update is None:
                    conn.execute(f"DELETE FROM endpoints WHERE {where}", params)
                else:
                    conn.execute(f"UPDATE endpoints SET {update[0]} WHERE {where}", update[1] + params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return services

        return await self._run(run)

    async def mark_endpoints_disconnected(self, connection_id: str, now: datetime) -> list[str]:
        return await self._change_endpoints(
            "connection_id = ?",
            (connection_id,),
            ("health = 'disconnected', last_seen = ?", (_ts(now),)),
        )

    async def delete_endpoints(self, connection_id: str) -> list[str]:
        return await self._change_endpoints("connection_id = ?", (connection_id,), None)

    async def touch_endpoints(self, replica_id: str, now: datetime) -> None:
        await self._write(
            "UPDATE endpoints SET last_seen = ? WHERE replica_id = ? AND health = 'healthy'",
            (_ts(now), replica_id),
        )

    async def expire_endpoints(self, seen_before: datetime) -> list[str]:
        return await self._change_endpoints("last_seen < ?", (_ts(seen_before),), None)

    async def aclose(self) -> None:
        def close(conn: sqlite3.Connection) -> None:
            if self._inline is not None:
                self._inline.close()
                self._inline = None
            conn.close()

        await self._run(close)


def _why_not(row: sqlite3.Row | None, secret_hash: str, now: datetime) -> str:
    """The exact reason a consume matched nothing, for the server log only."""
    if row is None:
        return "unknown"
    if row["secret_hash"] != secret_hash:
        return "wrong_secret"
    if row["used_at"] is not None:
        return "used"
    if _parse_ts(row["expires_at"]) <= now:
        return "expired"
    return "unknown"
