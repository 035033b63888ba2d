"""SqliteStore: schema migrations, file modes, single-use token consumption under concurrency."""

from __future__ import annotations

import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trustmesh.ca.join_token import JoinToken, hash_secret
from trustmesh.store import (
    CaKeyRecord,
    IssuedSvidRecord,
    JoinTokenRecord,
    Registration,
    SqliteStore,
    TokenConsumeFailed,
    open_store,
    open_store_sync,
)
from trustmesh.store.sqlite import _parse_ts, _ts

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def token_record(
    token_id: str = "00112233aabbccdd", secret: str = "s" * 64, ttl: float = 600
) -> JoinTokenRecord:
    return JoinTokenRecord(
        id=token_id,
        secret_hash=hash_secret(secret),
        spiffe_id="spiffe://example.org/api",
        service="api",
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=ttl),
    )


def issued(serial: str, auth: str = "join-token:00112233aabbccdd") -> IssuedSvidRecord:
    return IssuedSvidRecord(serial, "spiffe://example.org/api", NOW + timedelta(hours=1), NOW, auth)


async def test_database_file_is_private_and_schema_versioned(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    assert isinstance(store, SqliteStore)
    await store.create_join_token(token_record())
    assert stat.S_IMODE((tmp_path / "trustmesh.db").stat().st_mode) == 0o600
    assert store.schema_version() == 3  # 2: the stream's endpoints table; 3: one recovery per SVID
    await store.aclose()
    # Reopening runs no migration twice and keeps the data.
    again = await open_store(tmp_path)
    assert isinstance(again, SqliteStore) and again.schema_version() == 3
    assert [t.id for t in await again.list_join_tokens()] == ["00112233aabbccdd"]
    await again.aclose()
    with sqlite3.connect(tmp_path / "trustmesh.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = raw.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert versions == [(1,), (2,), (3,)]


async def test_only_the_hash_of_the_secret_is_stored(tmp_path: Path) -> None:
    token = JoinToken.generate("sha256:" + "ab" * 32)
    store = await open_store(tmp_path)
    await store.create_join_token(token_record(token.token_id, token.secret))
    await store.aclose()
    assert token.secret.encode() not in (tmp_path / "trustmesh.db").read_bytes()
    assert token.secret not in repr(token)


async def test_consume_marks_used_and_records_audit_row_together(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.create_join_token(token_record())
    await store.consume_join_token_and_record("00112233aabbccdd", hash_secret("s" * 64), NOW, issued("abc"))
    [t] = await store.list_join_tokens()
    assert t.used_by_serial == "abc" and t.state(NOW) == "used by serial abc"
    assert await store.get_svid("abc") == issued("abc")
    await store.aclose()


@pytest.mark.parametrize(
    ("token_id", "secret", "now", "reason"),
    [
        ("ffffffffffffffff", "s" * 64, NOW, "unknown"),
        ("00112233aabbccdd", "t" * 64, NOW, "wrong_secret"),
        ("00112233aabbccdd", "s" * 64, NOW + timedelta(minutes=10), "expired"),
    ],
)
async def test_consume_refusals_change_nothing(
    tmp_path: Path, token_id: str, secret: str, now: datetime, reason: str
) -> None:
    store = await open_store(tmp_path)
    await store.create_join_token(token_record())
    with pytest.raises(TokenConsumeFailed) as info:
        await store.consume_join_token_and_record(token_id, hash_secret(secret), now, issued("abc"))
    assert info.value.reason == reason
    [t] = await store.list_join_tokens()
    assert t.used_at is None
    assert await store.list_svids() == []
    await store.aclose()


async def test_fifty_concurrent_consumes_succeed_exactly_once(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.create_join_token(token_record())
    wins: list[str] = []
    reasons: list[str] = []

    async def attempt(i: int) -> None:
        try:
            await store.consume_join_token_and_record(
                "00112233aabbccdd", hash_secret("s" * 64), NOW, issued(f"serial{i}")
            )
            wins.append(f"serial{i}")
        except TokenConsumeFailed as exc:
            reasons.append(exc.reason)

    async with trio.open_nursery() as n:
        for i in range(50):
            n.start_soon(attempt, i)
    assert len(wins) == 1 and reasons == ["used"] * 49
    assert [s.serial for s in await store.list_svids()] == wins
    await store.aclose()


def test_single_use_holds_across_separate_connections(tmp_path: Path) -> None:
    """Two processes (say, two control planes on one file) each have their own connection."""
    first = open_store_sync(tmp_path)
    trio.run(first.create_join_token, token_record())
    stores = [open_store_sync(tmp_path) for _ in range(8)]
    outcomes: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def attempt(i: int) -> None:
        async def go() -> None:
            barrier.wait()
            try:
                await stores[i].consume_join_token_and_record(
                    "00112233aabbccdd", hash_secret("s" * 64), NOW, issued(f"s{i}")
                )
                outcomes.append(True)
            except TokenConsumeFailed:
                outcomes.append(False)

        trio.run(go)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == [False] * 7 + [True]
    assert len(trio.run(first.list_svids)) == 1
    for s in [first, *stores]:
        trio.run(s.aclose)


async def test_ca_keys_and_registrations_upsert(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    key = CaKeyRecord("sha256:" + "a" * 64, "root", NOW, NOW + timedelta(days=365), NOW)
    await store.put_ca_key(key)
    await store.put_ca_key(key)
    assert await store.list_ca_keys() == [key]
    await store.put_registration(Registration("api", "spiffe://example.org/a", NOW))
    await store.put_registration(Registration("api", "spiffe://example.org/b", NOW))
    assert [r.spiffe_id for r in await store.list_registrations()] == ["spiffe://example.org/b"]
    await store.aclose()


async def test_unsupported_store_urls_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        await open_store(tmp_path, "mysql://x")
    store = await open_store(tmp_path, f"sqlite:///{tmp_path}/other.db")
    assert (tmp_path / "other.db").exists()
    await store.aclose()


ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]


@given(
    st.datetimes(
        min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.sampled_from(ZONES)
    )
)
def test_stored_timestamps_are_utc_microsecond_text_that_reads_back(value: datetime) -> None:
    text = _ts(value)
    # The format rows have always had (existing databases hold it): UTC, microseconds, a Z.
    assert text == value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _parse_ts(text) == value
