"""LISTEN/NOTIFY across replicas: what one store publishes reaches a listener on another connection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg
import pytest
import trio

from tests.pgcluster import PgCluster
from trustmesh.store.pg_notify import MAX_PAYLOAD_BYTES, Notification, listen, publish
from trustmesh.store.postgres import PostgresStore, PostgresStoreError

OpenPg = Callable[..., Awaitable[PostgresStore]]


async def test_a_publish_on_one_replica_reaches_a_listener_on_another(open_pg: OpenPg) -> None:
    a, b = await open_pg(), await open_pg()
    with trio.fail_after(30):  # a bound on a hang, not a timing assertion
        async with listen(b, "bundle", "policy") as notes:
            await publish(a, "bundle", "sequence=7")
            await publish(a, "other", "not for us")
            await publish(a, "policy", "revision=abc")
            await publish(a, "bundle", "")
            got = [await notes.receive() for _ in range(3)]
    assert [(n.channel, n.payload) for n in got] == [
        ("bundle", "sequence=7"),
        ("policy", "revision=abc"),
        ("bundle", ""),
    ]
    assert all(isinstance(n, Notification) and n.pid > 0 for n in got)


async def test_a_notify_in_a_rolled_back_transaction_is_never_delivered(open_pg: OpenPg, pg_url: str) -> None:
    listener = await open_pg()
    with trio.fail_after(30):
        async with listen(listener, "bundle") as notes:
            with psycopg.connect(pg_url) as conn:
                conn.execute("SELECT pg_notify('bundle', 'rolled back')")
                conn.rollback()
                conn.execute("SELECT pg_notify('bundle', 'committed')")
                conn.commit()
            assert (await notes.receive()).payload == "committed"


async def test_leaving_with_undelivered_notifications_does_not_hang(open_pg: OpenPg) -> None:
    a, b = await open_pg(), await open_pg()
    with trio.fail_after(60):
        async with listen(b, "bundle") as notes:
            for i in range(300):  # more than the listener buffers
                await publish(a, "bundle", str(i))
            assert (await notes.receive()).payload == "0"
        # Left the block while the thread was blocked on a full buffer: it stopped anyway.


async def test_bad_channels_and_oversized_payloads_are_refused(open_pg: OpenPg) -> None:
    store = await open_pg()
    for channel in ("", "Bundle", "bundle;drop", "x" * 64):
        with pytest.raises(ValueError, match="lowercase identifier"):
            await publish(store, channel, "p")
    with pytest.raises(ValueError, match=f"at most {MAX_PAYLOAD_BYTES}"):
        await publish(store, "bundle", "é" * 4000)
    await publish(store, "bundle", "x" * MAX_PAYLOAD_BYTES)
    with pytest.raises(ValueError, match="at least one channel"):
        async with listen(store):
            pass


async def test_a_lost_listen_connection_raises_a_clear_error(open_pg: OpenPg, pg_cluster: PgCluster) -> None:
    store = await open_pg()
    with trio.fail_after(60), pytest.raises(PostgresStoreError, match="lost the LISTEN connection"):
        async with listen(store, "bundle") as notes:
            # One uncancellable call: the listener's failure cancels this body, and the server
            # must be running again for the tests after this one.
            await trio.to_thread.run_sync(restart, pg_cluster)
            await notes.receive()


def restart(cluster: PgCluster) -> None:
    cluster.stop()
    cluster.start()


async def test_an_error_in_the_body_comes_out_unwrapped(open_pg: OpenPg) -> None:
    store = await open_pg()
    with trio.fail_after(30), pytest.raises(LookupError, match="mine"):
        async with listen(store, "bundle"):
            raise LookupError("mine")
