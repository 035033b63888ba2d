"""The `Store` contract, run against SQLite and PostgreSQL alike (see conftest's `open_backend`).

Whatever a control plane can observe through `Store` must be the same on both backends:
records round-trip exactly (UTC, microseconds), refusals carry the same reason and change
nothing, upserts replace, lists come back in the same (byte-wise) order.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
import trio

from tests.store_pg.conftest import StoreOpener
from trustmesh.ca.join_token import hash_secret
from trustmesh.store import (
    AlreadyRecorded,
    CaKeyRecord,
    IssuedSvidRecord,
    JoinTokenRecord,
    Registration,
    TokenConsumeFailed,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
TOKEN_ID = "00112233aabbccdd"
SECRET = "s" * 64


def token_record(token_id: str = TOKEN_ID, secret: str = SECRET, ttl: float = 600) -> JoinTokenRecord:
    return JoinTokenRecord(
        id=token_id,
        secret_hash=hash_secret(secret),
        spiffe_id="spiffe://example.org/api",
        service="api",
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=ttl),
    )


def issued(serial: str, auth: str = f"join-token:{TOKEN_ID}") -> IssuedSvidRecord:
    return IssuedSvidRecord(serial, "spiffe://example.org/api", NOW + timedelta(hours=1), NOW, auth)


async def test_tokens_round_trip_exactly(open_backend: StoreOpener) -> None:
    store = await open_backend()
    later = JoinTokenRecord(
        "ffeeddccbbaa0011",
        hash_secret("x" * 64),
        "spiffe://example.org/web",
        "web",
        # Another zone on the way in; UTC on the way out, the same instant.
        (NOW + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=5, minutes=30))),
        NOW + timedelta(minutes=5),
    )
    await store.create_join_token(later)
    await store.create_join_token(token_record())
    assert await store.get_join_token(TOKEN_ID) == token_record()
    got = await store.get_join_token("ffeeddccbbaa0011")
    assert got is not None and got.created_at == later.created_at and got.created_at.tzinfo == UTC
    assert await store.get_join_token("0000000000000000") is None
    # Ordered by creation time, not by id.
    assert [t.id for t in await store.list_join_tokens()] == [TOKEN_ID, "ffeeddccbbaa0011"]
    [first, _] = await store.list_join_tokens()
    assert first.state(NOW) == "unused" and first.state(NOW + timedelta(minutes=10)) == "expired"


async def test_naive_timestamps_are_refused(open_backend: StoreOpener) -> None:
    store = await open_backend()
    naive = JoinTokenRecord(TOKEN_ID, "h", "spiffe://example.org/a", "a", datetime(2026, 1, 1), NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.create_join_token(naive)
    assert await store.list_join_tokens() == []


async def test_consume_marks_used_and_records_audit_row_together(open_backend: StoreOpener) -> None:
    store = await open_backend()
    await store.create_join_token(token_record())
    await store.consume_join_token_and_record(TOKEN_ID, hash_secret(SECRET), NOW, issued("abc"))
    [t] = await store.list_join_tokens()
    assert t.used_at == NOW and t.used_by_serial == "abc" and t.state(NOW) == "used by serial abc"
    assert await store.get_svid("abc") == issued("abc")
    assert await store.list_svids() == [issued("abc")]


@pytest.mark.parametrize(
    ("token_id", "secret", "now", "reason"),
    [
        ("ffffffffffffffff", SECRET, NOW, "unknown"),
        (TOKEN_ID, "t" * 64, NOW, "wrong_secret"),
        (TOKEN_ID, SECRET, NOW + timedelta(minutes=10), "expired"),  # expires_at itself is expired
        (TOKEN_ID, SECRET, NOW + timedelta(days=1), "expired"),
    ],
)
async def test_consume_refusals_change_nothing(
    open_backend: StoreOpener, token_id: str, secret: str, now: datetime, reason: str
) -> None:
    store = await open_backend()
    await store.create_join_token(token_record())
    with pytest.raises(TokenConsumeFailed) as info:
        await store.consume_join_token_and_record(token_id, hash_secret(secret), now, issued("abc"))
    assert info.value.reason == reason
    assert await store.list_join_tokens() == [token_record()]
    assert await store.list_svids() == []


async def test_a_used_token_is_refused_and_keeps_its_first_serial(open_backend: StoreOpener) -> None:
    store = await open_backend()
    await store.create_join_token(token_record())
    await store.consume_join_token_and_record(TOKEN_ID, hash_secret(SECRET), NOW, issued("first"))
    with pytest.raises(TokenConsumeFailed) as info:
        await store.consume_join_token_and_record(
            TOKEN_ID, hash_secret(SECRET), NOW + timedelta(seconds=1), issued("second")
        )
    assert info.value.reason == "used"
    [t] = await store.list_join_tokens()
    assert t.used_by_serial == "first" and t.used_at == NOW
    assert [s.serial for s in await store.list_svids()] == ["first"]


async def test_a_failed_audit_insert_leaves_the_token_unused(open_backend: StoreOpener) -> None:
    """Atomicity: the serial already exists, so the INSERT fails and the UPDATE must roll back."""
    store = await open_backend()
    await store.create_join_token(token_record())
    await store.record_svid(issued("dup", auth="bootstrap"))
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        await store.consume_join_token_and_record(TOKEN_ID, hash_secret(SECRET), NOW, issued("dup"))
    assert await store.list_join_tokens() == [token_record()]
    assert await store.list_svids() == [issued("dup", auth="bootstrap")]
    # The store is still usable, and the token still consumable, after the failed transaction.
    await store.consume_join_token_and_record(TOKEN_ID, hash_secret(SECRET), NOW, issued("fresh"))
    assert (await store.list_join_tokens())[0].used_by_serial == "fresh"


async def test_audit_log_records_and_orders_by_issue_time(open_backend: StoreOpener) -> None:
    store = await open_backend()
    a = IssuedSvidRecord("b" * 40, "spiffe://example.org/a", NOW + timedelta(hours=1), NOW, "bootstrap")
    # A 159-bit serial in decimal: too big for any SQL integer, stored as text.
    big = str(2**159 - 1)
    b = IssuedSvidRecord(big, "spiffe://example.org/b", NOW, NOW - timedelta(seconds=1), "renew:" + "b" * 40)
    await store.record_svid(a)
    await store.record_svid(b)
    assert await store.get_svid(big) == b
    assert await store.get_svid("nope") is None
    assert await store.list_svids() == [b, a]


async def test_an_expired_svid_is_recovered_once_renewals_repeat(open_backend: StoreOpener) -> None:
    store = await open_backend()
    expired = "c" * 40
    first = IssuedSvidRecord("1" * 40, "spiffe://example.org/a", NOW, NOW, f"recover:{expired}")
    second = IssuedSvidRecord("2" * 40, "spiffe://example.org/a", NOW, NOW, f"recover:{expired}")
    await store.record_svid(first)
    with pytest.raises(AlreadyRecorded):
        await store.record_svid(second)
    assert await store.list_svids() == [first], "the refused row is not written"
    # A renewal may be retried with the same (valid) SVID: those rows are not once-only.
    await store.record_svid(
        IssuedSvidRecord("3" * 40, "spiffe://example.org/a", NOW, NOW, "renew:" + "d" * 40)
    )
    await store.record_svid(
        IssuedSvidRecord("4" * 40, "spiffe://example.org/a", NOW, NOW, "renew:" + "d" * 40)
    )
    assert len(await store.list_svids()) == 3


async def test_ca_keys_upsert_by_fingerprint(open_backend: StoreOpener) -> None:
    store = await open_backend()
    key = CaKeyRecord("sha256:" + "a" * 64, "root", NOW, NOW + timedelta(days=365), NOW)
    inter = CaKeyRecord("sha256:" + "b" * 64, "intermediate", NOW, NOW + timedelta(days=1), NOW)
    await store.put_ca_key(key)
    await store.put_ca_key(key)
    await store.put_ca_key(inter)
    assert await store.list_ca_keys() == [key, inter]
    shortened = CaKeyRecord(key.fingerprint, "root", NOW, NOW + timedelta(days=30), NOW)
    await store.put_ca_key(shortened)
    assert await store.list_ca_keys() == [shortened, inter]


async def test_registrations_upsert_by_service_in_bytewise_order(open_backend: StoreOpener) -> None:
    store = await open_backend()
    await store.put_registration(Registration("api", "spiffe://example.org/a", NOW))
    await store.put_registration(Registration("api", "spiffe://example.org/b", NOW + timedelta(seconds=1)))
    await store.put_registration(Registration("Web", "spiffe://example.org/w", NOW))
    await store.put_registration(Registration("_batch", "spiffe://example.org/x", NOW))
    regs = await store.list_registrations()
    # Byte-wise, as SQLite compares text: upper case < '_' < lower case, whatever the locale.
    assert [r.service for r in regs] == ["Web", "_batch", "api"]
    assert regs[2] == Registration("api", "spiffe://example.org/b", NOW + timedelta(seconds=1))


async def test_a_second_instance_sees_the_first_ones_writes(open_backend: StoreOpener) -> None:
    """Two stores on one database (two processes on one SQLite file, two replicas on PostgreSQL)."""
    one = await open_backend()
    await one.create_join_token(token_record())
    await one.put_registration(Registration("api", "spiffe://example.org/api", NOW))
    two = await open_backend()
    await two.consume_join_token_and_record(TOKEN_ID, hash_secret(SECRET), NOW, issued("abc"))
    assert (await one.get_join_token(TOKEN_ID)) == (await two.get_join_token(TOKEN_ID))
    assert await one.list_svids() == [issued("abc")]
    assert [r.service for r in await two.list_registrations()] == ["api"]


async def test_fifty_concurrent_consumes_on_one_store_succeed_exactly_once(open_backend: StoreOpener) -> None:
    store = await open_backend()
    await store.create_join_token(token_record())
    wins: list[str] = []
    reasons: list[str] = []

    async def attempt(i: int) -> None:
        try:
            await store.consume_join_token_and_record(
                TOKEN_ID, hash_secret(SECRET), NOW, issued(f"serial{i}")
            )
            wins.append(f"serial{i}")
        except TokenConsumeFailed as exc:
            reasons.append(exc.reason)

    async with trio.open_nursery() as n:
        for i in range(50):
            n.start_soon(attempt, i)
    assert len(wins) == 1 and reasons == ["used"] * 49
    assert [s.serial for s in await store.list_svids()] == wins
    assert (await store.list_join_tokens())[0].used_by_serial == wins[0]
