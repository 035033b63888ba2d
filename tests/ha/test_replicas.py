"""Two control-plane replicas on one PostgreSQL database (issue 8, high availability).

Real processes: a real PostgreSQL server (tests/pgcluster.py), two `trustmesh control-plane`
replicas on the same state dir and `--store postgresql://…`, and a real sidecar that knows
both replicas' URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.pgcluster import PgCluster
from tests.sidecar_e2e.mesh import Mesh, spiffe_id, wait_until
from trustmesh.control.join_client import ControlPlaneClient, ControlPlaneError, join


@pytest.fixture
def replicas(tmp_path: Path, pg_cluster: PgCluster) -> Iterator[Mesh]:
    with Mesh(tmp_path, store_url=pg_cluster.create_database()) as mesh:
        mesh.start_replica()
        yield mesh


def address(url: str) -> str:
    return url.removeprefix("https://")


def test_a_token_is_single_use_across_replicas(replicas: Mesh) -> None:
    first, second = replicas.replicas
    token = first.token("api")
    outcomes: list[str] = []

    async def race() -> None:
        async def one(url: str) -> None:
            try:
                await join(address(url), token)
                outcomes.append("joined")
            except ControlPlaneError as exc:
                outcomes.append(exc.error)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, (first if i % 2 else second).url)

    trio.run(race)
    assert outcomes.count("joined") == 1, outcomes
    assert set(outcomes) - {"joined"} == {"invalid_token"}
    # Callers are told only "invalid, expired or already used"; the replicas' logs say which.
    reasons = [
        e["reason"]
        for r in (first, second)
        for e in r.process.log_events()
        if e.get("event") == "join_refused"
    ]
    assert len(reasons) == 49 and set(reasons) == {"used"}, reasons


def test_replicas_serve_the_same_bundle_and_policy_revision(replicas: Mesh) -> None:
    first, second = replicas.replicas
    bundles = [httpx.get(f"{r.url}/v1/bundle", verify=False).json() for r in (first, second)]
    assert bundles[0] == bundles[1]
    assert bundles[0]["keys"]

    async def revisions() -> list[str]:
        svid = await join(address(first.url), first.token("web"))
        found = []
        for replica in (first, second):
            async with ControlPlaneClient(address(replica.url), svid) as cp:
                found.append((await cp.policy_status())["active"]["revision"])
        return found

    got = trio.run(revisions)
    assert got[0] == got[1] and got[0].startswith("dir:")


def test_a_sidecar_fails_over_when_its_replica_dies(replicas: Mesh) -> None:
    first, second = replicas.replicas
    app = replicas.start_app()
    api = replicas.start_sidecar("api", inbound_to=app.port, control_planes=[first.url, second.url])
    before = api.svid()
    assert before["spiffe_id"] == spiffe_id("api")
    assert first.stop() == 0  # the replica it joined through is gone

    status, _ = api.admin_get("/renew", method="POST")
    assert status in (200, 202)
    wait_until(lambda: api.svid()["serial"] != before["serial"], 60, "renewal through the second replica")
    assert api.ready()
    events = api.process.log_events()
    assert any(e.get("event") == "control_plane_unavailable" and e.get("url") == first.url for e in events)
    assert any(e.get("event") == "svid_renewed" for e in events), api.process.log_tail()
