"""PostgreSQL backend of `Store`: one database shared by every control-plane replica.

Open it with `await open_postgres_store("postgresql://user:pw@host:5432/db")`. The URL is a
libpq connection URI, so everything libpq accepts works (several hosts, `sslmode=verify-full`,
`?sslrootcert=...`); the password comes from the URL or, when the URL has none, from libpq's
usual places (`PGPASSWORD`, `~/.pgpass`). Only `redact_url(url)` ever reaches a log line.

Why a small hand-made pool of sync connections, driven through `trio.to_thread.run_sync`:
psycopg's async mode runs on asyncio only and the control plane runs on trio, so calls
must block in worker threads, as the SQLite backend's do. `psycopg_pool` would manage the
connections but is not one of our dependencies, and what we need from it is small: a
`trio.CapacityLimiter` caps the worker threads at `pool_size`, so at most that many
connections are in use; idle ones wait in a locked list; one that broke (server restarted,
network cut) is dropped instead of returned. A call that fails on a reused connection is
retried once on a fresh one only when repeating it is harmless (reads, upserts): after a
lost connection we cannot know whether a write's COMMIT landed.

Semantics mirror `SqliteStore` exactly: the same tables and migration version numbers, the
same refusal reasons from `consume_join_token_and_record`, the same orderings (compared
byte-wise, `COLLATE "C"`, as SQLite compares text). Times are TIMESTAMPTZ (microseconds,
as SQLite's fixed-width text keeps) and come back normalised to UTC.

Single use across replicas rests on one statement: `UPDATE ... WHERE used_at IS NULL ...
RETURNING`. Under READ COMMITTED a second UPDATE of the same row waits for the first
transaction and then re-checks its WHERE clause against the committed row, so exactly one
caller matches; the audit INSERT rides in the same transaction.

Migrations run at open inside one transaction holding a transaction-scoped advisory lock:
replicas starting together queue on the lock, and since PostgreSQL DDL is transactional a
migration is applied wholly or not at all. A database migrated by a newer trustmesh than
this one is refused rather than used with a schema we do not know.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
import structlog
import trio
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row

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

Connection = psycopg.Connection[DictRow]

URL_SCHEMES = ("postgresql://", "postgres://")

# A few connections per replica: every store call is a short statement, and a replica's CPU
# (TLS handshakes, signing) runs out long before four connections do. N replicas use N times
# this (plus one per LISTEN), well under PostgreSQL's default max_connections of 100.
DEFAULT_POOL_SIZE = 4

# Seconds to wait for a TCP connection and authentication. libpq's default is to wait
# forever, which turns a typo in a host name into a hang instead of an error.
DEFAULT_CONNECT_TIMEOUT_S = 10

# Key of the advisory lock that serialises migrations (ASCII "tmschema"): any 64-bit value
# works as long as every trustmesh version uses the same one.
MIGRATION_LOCK_KEY = 0x746D736368656D61

# Ordered schema migrations, numbered as SQLite's (`trustmesh.store.sqlite.MIGRATIONS`) for
# the same schema. Append only: a released version is never edited.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE join_tokens (
            id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            spiffe_id TEXT NOT NULL,
            service TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            used_at TIMESTAMPTZ,
            used_by_serial TEXT
        );
        CREATE TABLE issued_svids (
            serial TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            not_after TIMESTAMPTZ NOT NULL,
            issued_at TIMESTAMPTZ NOT NULL,
            auth TEXT NOT NULL
        );
        CREATE INDEX issued_svids_spiffe_id ON issued_svids (spiffe_id);
        CREATE TABLE ca_keys (
            fingerprint TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('root', 'intermediate')),
            not_before TIMESTAMPTZ NOT NULL,
            not_after TIMESTAMPTZ NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE registrations (
            service TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
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
            last_seen TIMESTAMPTZ NOT NULL,
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

LATEST_VERSION = MIGRATIONS[-1][0]


class PostgresStoreError(StoreUnavailable, RuntimeError):
    """The database is unreachable, refused us, or has a schema we do not know.

    The message names the database by its redacted URL and says what went wrong; it never
    contains the password.
    """


def is_postgres_url(url: str) -> bool:
    """True for the URLs this backend serves (`postgresql://` or `postgres://`)."""
    return url.startswith(URL_SCHEMES)


def redact_url(url: str) -> str:
    """`url` with any password (in the userinfo or a `password=` parameter) replaced by `***`."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _password_of(url: str) -> str | None:
    """The password as libpq will read it (userinfo or `password=`), or None; for scrubbing only."""
    try:
        value = conninfo_to_dict(url).get("password")
        return None if value is None else str(value)
    except psycopg.ProgrammingError:
        password = urlsplit(url).password
        return None if password is None else unquote(password)


def _scrub(text: str, password: str | None) -> str:
    """Remove the URL's password from a libpq message, in case a future libpq echoes it."""
    return text.replace(password, "***") if password else text


def connection_info(url: str) -> str:
    """Validate a `postgresql://` URL and turn it into the libpq conninfo the store connects with.

    Adds a connect timeout and an application name unless the URL sets its own. Raises
    `ValueError` (naming the redacted URL) for anything that is not a valid PostgreSQL URI.
    """
    if not is_postgres_url(url):
        raise ValueError(f"not a PostgreSQL store URL: {redact_url(url)!r} (expected postgresql://...)")
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(
            f"malformed PostgreSQL URL {redact_url(url)!r}: {_scrub(str(exc), _password_of(url))}"
        ) from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT_S
    if "application_name" not in params:
        extra["application_name"] = "trustmesh"
    return make_conninfo(url, **extra)


def _ts(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("store timestamps must be timezone-aware")
    return value.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


_INSERT_SVID = (
    "INSERT INTO issued_svids (serial, spiffe_id, not_after, issued_at, auth) VALUES (%s, %s, %s, %s, %s)"
)


def _svid_params(r: IssuedSvidRecord) -> tuple[str, str, datetime, datetime, str]:
    return (r.serial, r.spiffe_id, _ts(r.not_after), _ts(r.issued_at), r.auth)


def _token(row: DictRow) -> JoinTokenRecord:
    return JoinTokenRecord(
        id=row["id"],
        secret_hash=row["secret_hash"],
        spiffe_id=row["spiffe_id"],
        service=row["service"],
        created_at=_utc(row["created_at"]),
        expires_at=_utc(row["expires_at"]),
        used_at=_opt_utc(row["used_at"]),
        used_by_serial=row["used_by_serial"],
    )


def _svid(row: DictRow) -> IssuedSvidRecord:
    return IssuedSvidRecord(
        serial=row["serial"],
        spiffe_id=row["spiffe_id"],
        not_after=_utc(row["not_after"]),
        issued_at=_utc(row["issued_at"]),
        auth=row["auth"],
    )


def _endpoint(row: DictRow) -> EndpointRecord:
    return EndpointRecord(
        service=row["service"],
        address=row["address"],
        spiffe_id=row["spiffe_id"],
        health=cast(EndpointHealth, row["health"]),
        last_seen=_utc(row["last_seen"]),
        connection_id=row["connection_id"],
        replica_id=row["replica_id"],
    )


class PostgresStore:
    """`Store` on a PostgreSQL database. Open with `open_postgres_store(url)` (or `PostgresStore.open`)."""

    def __init__(self, conninfo: str, url: str, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._conninfo = conninfo
        self._password = _password_of(url)
        self.url = redact_url(url)
        self.pool_size = pool_size
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._limiter = trio.CapacityLimiter(pool_size)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open_sync(cls, url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> PostgresStore:
        """Connect once (so a wrong URL fails here, not at the first request) and migrate.

        Raises `ValueError` for a malformed URL and `PostgresStoreError` when the server
        cannot be reached, refuses the login, or holds a newer schema.
        """
        store = cls(connection_info(url), url, pool_size)
        conn = store.connect_sync()
        try:
            store._migrate(conn)
        except BaseException:
            conn.close()
            raise
        store._idle.append(conn)
        log.info("store_opened", backend="postgresql", url=store.url, pool_size=pool_size)
        return store

    @classmethod
    async def open(cls, url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> PostgresStore:
        # Not abandoned on cancel: the thread owns a connection until it returns.
        return await trio.to_thread.run_sync(partial(cls.open_sync, url, pool_size=pool_size))

    def connect_sync(self) -> Connection:
        """A new autocommit connection with this store's settings (the pool's, or a LISTEN's own)."""
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            message = _scrub(str(exc).strip(), self._password)
            log.warning("store_connect_failed", backend="postgresql", url=self.url, error=message)
            raise PostgresStoreError(
                f"cannot connect to the PostgreSQL store at {self.url}: {message}"
            ) from None
        # Sessions in UTC so that timestamps read in psql match the ones we write; results
        # are normalised to UTC in Python as well, whatever the server's default.
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def _migrate(self, conn: Connection) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {int(row["version"]) for row in conn.execute("SELECT version FROM schema_migrations")}
            if done and max(done) > LATEST_VERSION:
                raise PostgresStoreError(
                    f"the PostgreSQL store at {self.url} has schema version {max(done)}, newer than the"
                    f" {LATEST_VERSION} this trustmesh knows: upgrade trustmesh on this replica"
                )
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (version, datetime.now(UTC)),
                )
                log.info("store_migrated", backend="postgresql", url=self.url, version=version)

    async def schema_version(self) -> int:
        """The highest migration applied to the database."""

        def run(conn: Connection) -> int:
            row = conn.execute("SELECT MAX(version) AS v FROM schema_migrations").fetchone()
            return int(row["v"] or 0) if row else 0

        return await self._run(run, idempotent=True)

    # -- the pool ------------------------------------------------------------------------

    def _checkout(self) -> tuple[Connection, bool]:
        """An idle connection (reused=True) or a new one; the limiter keeps us within pool_size."""
        with self._lock:
            if self._closed:
                raise PostgresStoreError(f"the PostgreSQL store at {self.url} is closed")
            if self._idle:
                return self._idle.pop(), True
        return self.connect_sync(), False

    def _checkin(self, conn: Connection) -> None:
        healthy = not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _call(self, fn: Callable[[Connection], T], idempotent: bool) -> T:
        # Bounded: at most one retry, and only for a reused connection that had gone stale.
        for attempt in range(2):
            conn, reused = self._checkout()
            try:
                result = fn(conn)
            except psycopg.OperationalError as exc:
                if not (conn.broken or conn.closed):
                    self._checkin(conn)
                    raise
                conn.close()
                retry = reused and idempotent and attempt == 0
                message = _scrub(str(exc).strip(), self._password)
                log.warning(
                    "store_connection_lost", backend="postgresql", url=self.url, error=message, retrying=retry
                )
                if retry:
                    continue
                raise PostgresStoreError(
                    f"lost the connection to the PostgreSQL store at {self.url}: {message}"
                ) from None
            except BaseException:
                self._checkin(conn)
                raise
            self._checkin(conn)
            return result
        raise AssertionError("unreachable: the second attempt never continues")

    async def _run(self, fn: Callable[[Connection], T], *, idempotent: bool = False) -> T:
        return await trio.to_thread.run_sync(partial(self._call, fn, idempotent), limiter=self._limiter)

    async def run_with_connection(self, fn: Callable[[Connection], T], *, idempotent: bool = False) -> T:
        """Run `fn(conn)` on a pooled connection in a worker thread (for `pg_notify` and tests).

        `idempotent=True` allows one retry on a fresh connection if a pooled one had died.
        """
        return await self._run(fn, idempotent=idempotent)

    async def _write(self, query: str, params: tuple[Any, ...], *, idempotent: bool = False) -> None:
        def run(conn: Connection) -> None:
            conn.execute(query, params)

        await self._run(run, idempotent=idempotent)

    async def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[DictRow]:
        def run(conn: Connection) -> list[DictRow]:
            return conn.execute(query, params).fetchall()

        return await self._run(run, idempotent=True)

    # -- join tokens ---------------------------------------------------------------------

    async def create_join_token(self, record: JoinTokenRecord) -> None:
        await self._write(
            "INSERT INTO join_tokens (id, secret_hash, spiffe_id, service, created_at, expires_at, used_at,"
            " used_by_serial) VALUES (%s, %s, %s, %s, %s, %s, NULL, NULL)",
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
        rows = await self._query("SELECT * FROM join_tokens WHERE id = %s", (token_id,))
        return _token(rows[0]) if rows else None

    async def list_join_tokens(self) -> list[JoinTokenRecord]:
        rows = await self._query('SELECT * FROM join_tokens ORDER BY created_at, id COLLATE "C"')
        return [_token(r) for r in rows]

    async def consume_join_token_and_record(
        self, token_id: str, secret_hash: str, now: datetime, issued: IssuedSvidRecord
    ) -> None:
        when = _ts(now)
        svid = _svid_params(issued)

        def run(conn: Connection) -> None:
            with conn.transaction():
                # The whole single-use guarantee is this WHERE clause: a concurrent UPDATE of
                # the row waits for ours to commit, re-reads `used_at` and matches nothing.
                won = conn.execute(
                    "UPDATE join_tokens SET used_at = %s, used_by_serial = %s"
                    " WHERE id = %s AND secret_hash = %s AND used_at IS NULL AND expires_at > %s"
                    " RETURNING id",
                    (when, issued.serial, token_id, secret_hash, when),
                ).fetchone()
                if won is None:
                    row = conn.execute("SELECT * FROM join_tokens WHERE id = %s", (token_id,)).fetchone()
                    # Raising inside the block rolls the (empty) transaction back.
                    raise TokenConsumeFailed(_why_not(row, secret_hash, when))
                conn.execute(_INSERT_SVID, svid)

        await self._run(run)

    # -- audit log -----------------------------------------------------------------------

    async def record_svid(self, record: IssuedSvidRecord) -> None:
        try:
            await self._write(_INSERT_SVID, _svid_params(record))
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyRecorded(
                f"audit row refused as a duplicate (serial {record.serial}, auth {record.auth})"
            ) from exc

    async def get_svid(self, serial: str) -> IssuedSvidRecord | None:
        rows = await self._query("SELECT * FROM issued_svids WHERE serial = %s", (serial,))
        return _svid(rows[0]) if rows else None

    async def list_svids(self) -> list[IssuedSvidRecord]:
        rows = await self._query('SELECT * FROM issued_svids ORDER BY issued_at, serial COLLATE "C"')
        return [_svid(r) for r in rows]

    # -- CA key metadata -----------------------------------------------------------------

    async def put_ca_key(self, record: CaKeyRecord) -> None:
        await self._write(
            "INSERT INTO ca_keys (fingerprint, kind, not_before, not_after, created_at)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (fingerprint) DO UPDATE SET kind = EXCLUDED.kind,"
            " not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after,"
            " created_at = EXCLUDED.created_at",
            (
                record.fingerprint,
                record.kind,
                _ts(record.not_before),
                _ts(record.not_after),
                _ts(record.created_at),
            ),
            idempotent=True,
        )

    async def list_ca_keys(self) -> list[CaKeyRecord]:
        rows = await self._query('SELECT * FROM ca_keys ORDER BY created_at, fingerprint COLLATE "C"')
        return [
            CaKeyRecord(
                fingerprint=r["fingerprint"],
                kind=cast(CaKeyKind, r["kind"]),
                not_before=_utc(r["not_before"]),
                not_after=_utc(r["not_after"]),
                created_at=_utc(r["created_at"]),
            )
            for r in rows
        ]

    # -- registrations -------------------------------------------------------------------

    async def put_registration(self, registration: Registration) -> None:
        await self._write(
            "INSERT INTO registrations (service, spiffe_id, created_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (service) DO UPDATE SET spiffe_id = EXCLUDED.spiffe_id,"
            " created_at = EXCLUDED.created_at",
            (registration.service, registration.spiffe_id, _ts(registration.created_at)),
            idempotent=True,
        )

    async def list_registrations(self) -> list[Registration]:
        rows = await self._query('SELECT * FROM registrations ORDER BY service COLLATE "C"')
        return [Registration(r["service"], r["spiffe_id"], _utc(r["created_at"])) for r in rows]

    # -- endpoints (configuration stream) ------------------------------------------------

    async def put_endpoint(self, record: EndpointRecord) -> None:
        await self._write(
            "INSERT INTO endpoints (service, address, spiffe_id, health, last_seen, connection_id,"
            " replica_id) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (service, address) DO UPDATE SET spiffe_id = EXCLUDED.spiffe_id,"
            " health = EXCLUDED.health, last_seen = EXCLUDED.last_seen,"
            " connection_id = EXCLUDED.connection_id, replica_id = EXCLUDED.replica_id",
            (
                record.service,
                record.address,
                record.spiffe_id,
                record.health,
                _ts(record.last_seen),
                record.connection_id,
                record.replica_id,
            ),
            idempotent=True,
        )

    async def list_endpoints(self, service: str | None = None) -> list[EndpointRecord]:
        if service is None:
            rows = await self._query(
                'SELECT * FROM endpoints ORDER BY service COLLATE "C", address COLLATE "C"'
            )
        else:
            rows = await self._query(
                'SELECT * FROM endpoints WHERE service = %s ORDER BY address COLLATE "C"', (service,)
            )
        return [_endpoint(r) for r in rows]

    async def _changed_services(self, query: str, params: tuple[Any, ...], *, idempotent: bool) -> list[str]:
        """Run an UPDATE/DELETE ... RETURNING service; the distinct services, sorted."""

        def run(conn: Connection) -> list[str]:
            return sorted({str(r["service"]) for r in conn.execute(query, params).fetchall()})

        return await self._run(run, idempotent=idempotent)

    async def mark_endpoints_disconnected(self, connection_id: str, now: datetime) -> list[str]:
        return await self._changed_services(
            "UPDATE endpoints SET health = 'disconnected', last_seen = %s WHERE connection_id = %s"
            " RETURNING service",
            (_ts(now), connection_id),
            idempotent=True,
        )

    async def delete_endpoints(self, connection_id: str) -> list[str]:
        # Not retried: a lost answer after a committed DELETE would report no services.
        return await self._changed_services(
            "DELETE FROM endpoints WHERE connection_id = %s RETURNING service",
            (connection_id,),
            idempotent=False,
        )

    async def touch_endpoints(self, replica_id: str, now: datetime) -> None:
        await self._write(
            "UPDATE endpoints SET last_seen = %s WHERE replica_id = %s AND health = 'healthy'",
            (_ts(now), replica_id),
            idempotent=True,
        )

    async def expire_endpoints(self, seen_before: datetime) -> list[str]:
        return await self._changed_services(
            "DELETE FROM endpoints WHERE last_seen < %s RETURNING service",
            (_ts(seen_before),),
            idempotent=False,
        )

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when their call returns."""

        def close_all() -> None:
            with self._lock:
                self._closed = True
                idle, self._idle = self._idle, []
            for conn in idle:
                conn.close()

        await trio.to_thread.run_sync(close_all)


async def open_postgres_store(url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> PostgresStore:
    """The store behind `--store postgresql://...`: connected, migrated, ready for requests."""
    return await PostgresStore.open(url, pool_size=pool_size)


def _why_not(row: DictRow | None, secret_hash: str, now: datetime) -> str:
    """The exact reason a consume matched nothing, for the server log only (as SQLite's)."""
    if row is None:
        return "unknown"
    if row["secret_hash"] != secret_hash:
        return "wrong_secret"
    if row["used_at"] is not None:
        return "used"
    if _utc(row["expires_at"]) <= now:
        return "expired"
    return "unknown"
