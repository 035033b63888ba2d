"""A join token is single use across control-plane replicas that share one PostgreSQL database.

Two ways to be two replicas: two `PostgresStore` instances (separate pools, so separate
server sessions) in one process, and two real processes. Either way, fifty concurrent
consumes of one token give exactly one success, one audit row, and 49 refusals saying `used`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import trio

from trustmesh.ca.join_token import hash_secret
from trustmesh.store import IssuedSvidRecord, JoinTokenRecord, TokenConsumeFailed
from trustmesh.store.postgres import PostgresStore, open_postgres_store

OpenPg = Callable[..., Awaitable[PostgresStore]]
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TOKEN_ID = "00112233aabbccdd"
SECRET_HASH = hash_secret("s" * 64)
ATTEMPTS = 50
# The advisory lock the two processes queue on, so that they race from the same moment.
START_GATE = 4242


def token_record() -> JoinTokenRecord:
    return JoinTokenRecord(
        TOKEN_ID, SECRET_HASH, "spiffe://example.org/api", "api", NOW, NOW + timedelta(minutes=10)
    )


def issued(serial: str) -> IssuedSvidRecord:
    return IssuedSvidRecord(
        serial, "spiffe://example.org/api", NOW + timedelta(hours=1), NOW, f"join-token:{TOKEN_ID}"
    )


async def test_two_store_instances_fifty_consumes_one_success(open_pg: OpenPg) -> None:
    replicas = [await open_pg(pool_size=8), await open_pg(pool_size=8)]
    await replicas[0].create_join_token(token_record())
    wins: list[str] = []
    reasons: list[str] = []

    async def attempt(i: int) -> None:
        try:
            await replicas[i % 2].consume_join_token_and_record(
                TOKEN_ID, SECRET_HASH, NOW, issued(f"r{i % 2}-{i}")
            )
            wins.append(f"r{i % 2}-{i}")
        except TokenConsumeFailed as exc:
            reasons.append(exc.reason)

    async with trio.open_nursery() as n:
        for i in range(ATTEMPTS):
            n.start_soon(attempt, i)
    assert len(wins) == 1 and reasons == ["used"] * (ATTEMPTS - 1)
    for replica in replicas:
        assert [s.serial for s in await replica.list_svids()] == wins
        assert (await replica.get_join_token(TOKEN_ID)).used_by_serial == wins[0]  # type: ignore[union-attr]


_WORKER = textwrap.dedent(
    """
    import json, os, sys
    from datetime import UTC, datetime, timedelta
    import structlog, trio
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is our protocol
    sys.path.insert(0, sys.argv[1])
    from tests.store_pg.test_replica_race import NOW, SECRET_HASH, START_GATE, TOKEN_ID, issued
    from trustmesh.store import TokenConsumeFailed
    from trustmesh.store.postgres import open_postgres_store

    async def main(name, count):
        store = await open_postgres_store(os.environ["TEST_PG_URL"], pool_size=8)
        def wait_for_gate(conn):
            conn.execute("SELECT pg_advisory_lock_shared(%s)", (START_GATE,))
            conn.execute("SELECT pg_advisory_unlock_shared(%s)", (START_GATE,))
        print("ready", flush=True)
        await store.run_with_connection(wait_for_gate)
        outcomes = []
        async def attempt(i):
            try:
                await store.consume_join_token_and_record(TOKEN_ID, SECRET_HASH, NOW, issued(f"{name}-{i}"))
                outcomes.append("won:" + f"{name}-{i}")
            except TokenConsumeFailed as exc:
                outcomes.append(exc.reason)
        async with trio.open_nursery() as n:
            for i in range(count):
                n.start_soon(attempt, i)
        await store.aclose()
        print(json.dumps(outcomes), flush=True)

    trio.run(main, sys.argv[2], int(sys.argv[3]))
    """
)


def test_two_processes_fifty_consumes_one_success(pg_url: str) -> None:
    root = str(Path(__file__).resolve().parents[2])
    trio.run(_prepare, pg_url)
    env = {**os.environ, "TEST_PG_URL": pg_url}  # the password goes by environment, not argv
    procs: list[subprocess.Popen[str]] = []
    gate = psycopg.connect(pg_url, autocommit=True)
    try:
        gate.execute("SELECT pg_advisory_lock(%s)", (START_GATE,))
        for name in ("replica-a", "replica-b"):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER, root, name, str(ATTEMPTS // 2)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        for proc in procs:
            _wait_for_ready(proc)
        _wait_until_both_wait_at_the_gate(gate)
        gate.execute("SELECT pg_advisory_unlock(%s)", (START_GATE,))
        outcomes: list[str] = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outcomes += json.loads(out.strip().splitlines()[-1])
    finally:
        gate.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    wins = [o.removeprefix("won:") for o in outcomes if o.startswith("won:")]
    assert len(wins) == 1 and sorted(o for o in outcomes if not o.startswith("won:")) == ["used"] * (
        ATTEMPTS - 1
    )
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT serial FROM issued_svids").fetchall() == [(wins[0],)]
        assert conn.execute("SELECT used_by_serial FROM join_tokens").fetchall() == [(wins[0],)]


async def _prepare(url: str) -> None:
    store = await open_postgres_store(url)
    await store.create_join_token(token_record())
    await store.aclose()


def _wait_for_ready(proc: subprocess.Popen[str]) -> None:
    """Read the worker's `ready` line, giving up (with its stderr) if it dies or stays silent for a minute."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if line != "ready\n":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"worker not ready (got {line!r}): {err[-2000:]}")


def _wait_until_both_wait_at_the_gate(gate: psycopg.Connection[tuple[object, ...]]) -> None:
    """Bounded poll (not a timing assertion) until both workers are blocked on the gate lock."""
    for _ in range(600):
        row = gate.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted",
            (START_GATE,),
        ).fetchone()
        if row is not None and row[0] == 2:
            return
        time.sleep(0.05)
    raise AssertionError("the two worker processes never reached the start gate")
