"""PostgresStore specifics: concurrent migrations, URLs and passwords, clear errors, lost connections."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import trio
from structlog.testing import capture_logs

from tests.pgcluster import APP_USER, PgCluster, free_port
from trustmesh.ca.join_token import JoinToken, hash_secret
from trustmesh.store import JoinTokenRecord, Registration
from trustmesh.store.postgres import (
    LATEST_VERSION,
    PostgresStore,
    PostgresStoreError,
    connection_info,
    open_postgres_store,
    redact_url,
)

OpenPg = Callable[..., Awaitable[PostgresStore]]
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def token_record(token_id: str = "00112233aabbccdd", secret: str = "s" * 64) -> JoinTokenRecord:
    return JoinTokenRecord(
        token_id, hash_secret(secret), "spiffe://example.org/api", "api", NOW, NOW + timedelta(minutes=10)
    )


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query.encode()).fetchall()


async def test_schema_is_versioned_and_reopening_migrates_nothing(open_pg: OpenPg, pg_url: str) -> None:
    with capture_logs() as logs:
        store = await open_pg()
        await store.create_join_token(token_record())
        again = await open_pg()
    assert LATEST_VERSION == 3  # the numbering of SQLite's migrations (2: stream endpoints, 3: one recovery)
    assert await store.schema_version() == 3 and await again.schema_version() == 3
    assert [e["version"] for e in logs if e["event"] == "store_migrated"] == [1, 2, 3]
    assert [e["event"] for e in logs].count("store_opened") == 2
    assert rows(pg_url, "SELECT version FROM schema_migrations ORDER BY version") == [(1,), (2,), (3,)]
    assert [t.id for t in await again.list_join_tokens()] == ["00112233aabbccdd"]
    types = {
        name: kind
        for name, kind in rows(
            pg_url,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'join_tokens'",
        )
    }
    assert types["expires_at"] == "timestamp with time zone" and types["secret_hash"] == "text"


async def test_stores_opening_together_on_an_empty_database_migrate_once(pg_url: str) -> None:
    """Replicas starting at the same moment: the advisory lock makes them queue, not collide."""
    stores: list[PostgresStore] = []

    async def open_one() -> None:
        stores.append(await open_postgres_store(pg_url, pool_size=1))

    with capture_logs() as logs:
        async with trio.open_nursery() as n:
            for _ in range(6):
                n.start_soon(open_one)
    try:
        assert len(stores) == 6
        assert [e["event"] for e in logs].count("store_migrated") == 3  # versions 1-3, once each
        assert rows(pg_url, "SELECT version FROM schema_migrations ORDER BY version") == [(1,), (2,), (3,)]
        assert {await s.schema_version() for s in stores} == {3}
    finally:
        for s in stores:
            await s.aclose()


async def test_a_database_from_a_newer_trustmesh_is_refused(open_pg: OpenPg, pg_url: str) -> None:
    await open_pg()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (99, now())")
    with pytest.raises(PostgresStoreError, match="schema version 99, newer than the 3"):
        await open_postgres_store(pg_url)


async def test_only_the_hash_of_the_secret_is_stored(open_pg: OpenPg, pg_url: str) -> None:
    token = JoinToken.generate("sha256:" + "ab" * 32)
    store = await open_pg()
    await store.create_join_token(token_record(token.token_id, token.secret))
    dump = str(rows(pg_url, "SELECT t::text FROM join_tokens t"))
    assert token.token_id in dump and token.secret_hash in dump and token.secret not in dump


async def test_password_from_pgpassword_when_the_url_has_none(
    pg_cluster: PgCluster, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    store = await open_postgres_store(pg_cluster.url(dbname, password=False))
    try:
        assert await store.schema_version() == 3
    finally:
        await store.aclose()


async def test_a_wrong_password_is_a_clear_error_that_never_shows_the_password(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    wrong = "not-the-Password-42"
    url = f"postgresql://{APP_USER}:{wrong}@127.0.0.1:{pg_cluster.port}/{dbname}"
    with capture_logs() as logs, pytest.raises(PostgresStoreError) as info:
        await open_postgres_store(url)
    message = str(info.value)
    assert "password authentication failed" in message
    assert f"postgresql://{APP_USER}:***@127.0.0.1:{pg_cluster.port}/{dbname}" in message
    assert wrong not in message and wrong not in repr(logs)
    assert [e["event"] for e in logs] == ["store_connect_failed"]


async def test_the_url_in_logs_is_redacted(open_pg: OpenPg, pg_cluster: PgCluster) -> None:
    with capture_logs() as logs:
        store = await open_pg()
    assert store.url.count("***") == 1 and pg_cluster.password not in store.url
    assert logs and all(pg_cluster.password not in repr(e) for e in logs)
    assert all(e.get("url") == store.url for e in logs)


async def test_an_unreachable_server_is_a_clear_error() -> None:
    port = free_port()  # nothing listens here
    with pytest.raises(PostgresStoreError, match=rf"cannot connect to the PostgreSQL store at .*:{port}/db"):
        await open_postgres_store(f"postgresql://u:secretpw@127.0.0.1:{port}/db")


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("mysql://u:pw@h/db", ValueError, "not a PostgreSQL store URL: 'mysql://u:\\*\\*\\*@h/db'"),
        (
            "postgresql://u:pw@h/db?bogus=1",
            ValueError,
            'malformed PostgreSQL URL .*invalid URI query.*"bogus"',
        ),
        ("postgresql://u:pw@127.0.0.1:notaport/db", PostgresStoreError, "invalid integer value"),
    ],
)
async def test_bad_urls_are_refused_clearly(url: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        await open_postgres_store(url)
    assert ":pw@" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p%40ss@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        (
            "postgresql://u@h/db?password=pw&sslmode=verify-full",
            "postgresql://u@h/db?password=***&sslmode=verify-full",
        ),
        ("postgres://h/db", "postgres://h/db"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_connection_info_adds_a_timeout_unless_the_url_sets_one() -> None:
    assert "connect_timeout=10" in connection_info("postgresql://h/db")
    assert "connect_timeout=3" in connection_info("postgresql://h/db?connect_timeout=3")
    assert "application_name=trustmesh" in connection_info("postgresql://h/db")


async def test_a_restarted_server_costs_reads_nothing_and_writes_one_clear_error(
    open_pg: OpenPg, pg_cluster: PgCluster
) -> None:
    """After a restart every pooled connection is dead. A read (harmless to repeat) is retried on a
    fresh connection; a write is not (its COMMIT may have landed), so it fails clearly, once."""
    store = await open_pg(pool_size=1)
    await store.create_join_token(token_record())
    pg_cluster.stop()
    pg_cluster.start()
    with capture_logs() as logs:
        assert [t.id for t in await store.list_join_tokens()] == ["00112233aabbccdd"]
    assert [(e["event"], e["retrying"]) for e in logs] == [("store_connection_lost", True)]
    pg_cluster.stop()
    pg_cluster.start()
    with pytest.raises(PostgresStoreError, match="lost the connection to the PostgreSQL store"):
        await store.create_join_token(token_record("ffffffffffffffff"))
    # The next call opens a fresh connection; a registration upsert is safe to repeat anyway.
    await store.put_registration(Registration("api", "spiffe://example.org/api", NOW))
    await store.create_join_token(token_record("ffffffffffffffff"))
    assert len(await store.list_join_tokens()) == 2


async def test_a_closed_store_refuses_calls(open_pg: OpenPg) -> None:
    store = await open_pg()
    await store.aclose()
    with pytest.raises(PostgresStoreError, match="is closed"):
        await store.list_join_tokens()
