"""Two control-plane replicas on one PostgreSQL database, a sidecar stream on each: a registration
made through replica A reaches the sidecar streaming from replica B (store rows + LISTEN/NOTIFY),
both serve the same policy revision, and a deregistration through A leaves B's sidecar too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from tests.stream.conftest import API, WEB, Mesh, wait_for
from trustmesh.clock import ManualClock


async def test_a_registration_through_one_replica_reaches_a_sidecar_on_the_other(
    state_dir: Path,
    clock: ManualClock,
    repo: Path,
    pg_cluster_factory: Callable[[], str],
) -> None:
    url = pg_cluster_factory()
    # The replicas run in this nursery, so both have stopped before the database does.
    async with trio.open_nursery() as replicas:
        # Same state dir (CA material) and same database: two replicas of one trust domain.
        a = Mesh(replicas, state_dir, clock, repo, store_url=url)
        b = Mesh(replicas, state_dir, clock, repo, store_url=url)
        await a.start()
        await b.start()
        try:
            web = b.client(await b.svid(WEB, "web"), calls=["api"])
            await replicas.start(web.run)
            assert web.endpoints == {"api": ()}
            api = a.client(await a.svid(API, "api"), advertise=["127.0.0.1:9001"])
            await replicas.start(api.run)
            await wait_for(
                lambda: web.changed, lambda: [e.address for e in web.endpoints["api"]] == ["127.0.0.1:9001"]
            )
            assert web.endpoints["api"][0].spiffe_id == API and web.endpoints["api"][0].health == "healthy"
            # The same git source on both: the same revision whichever replica a sidecar uses.
            assert web.revision == api.revision is not None
            await api.stop()
            await wait_for(lambda: web.changed, lambda: web.endpoints["api"] == ())
        finally:
            for m in (a, b):
                for c in m.clients:
                    await c.stop()
                assert m.cp is not None
                m.cp.stop()
