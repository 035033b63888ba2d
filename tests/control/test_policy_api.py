"""Policy served by the control plane: git as the source of truth, last good revision kept.

Real git repositories made with the git CLI, a real control plane on loopback, callers
authenticated by real SVIDs over mutual TLS.
"""

from __future__ import annotations

import base64
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock
from trustmesh.control.join_client import ControlPlaneClient, ControlPlaneError, join
from trustmesh.control.policy_service import PolicyService
from trustmesh.control.testing import ControlPlaneHarness, start_control_plane
from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Revision
from trustmesh.policy.source import GitSource
from trustmesh.policy.watcher import PolicyWatcher

WEB = "spiffe://example.org/ns/default/sa/web"
API = "spiffe://example.org/ns/default/sa/api"

GOOD = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: web-reads-api
spec:
  selector:
    spiffeIds: ["{API}"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["{WEB}"]
      to:
        methods: ["GET"]
"""

BAD = GOOD.replace("action: ALLOW", "action: PERMIT")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def commit(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "policies"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "ops@example.org")
    git(path, "config", "user.name", "ops")
    return path


@pytest.fixture
async def served(
    repo: Path, state_dir: Path, clock: ManualClock, nursery: trio.Nursery
) -> tuple[ControlPlaneHarness, PolicyService]:
    commit(repo, "web-api.yaml", GOOD, "allow web to read api")
    service = PolicyService(PolicyWatcher(GitSource(repo, "main"), clock), timedelta(hours=1))
    harness = await start_control_plane(nursery, state_dir, clock, policy=service)
    return harness, service


def compile_served(body: dict[str, object]) -> Revision:
    files = body["files"]
    assert isinstance(files, dict)
    loaded = load_revision(
        {path: base64.b64decode(data) for path, data in files.items()}, revision_id=str(body["revision"])
    )
    assert isinstance(loaded, Revision)
    return loaded


async def test_a_good_commit_is_active_and_served_to_workloads(
    served: tuple[ControlPlaneHarness, PolicyService], repo: Path
) -> None:
    harness, _ = served
    svid = await join(harness.address, await harness.token(WEB, service="web"))
    async with ControlPlaneClient(harness.address, svid) as cp:
        status = await cp.policy_status()
        assert status["active"]["revision"] == git(repo, "rev-parse", "HEAD")
        assert status["active"]["message"].strip() == "allow web to read api"
        assert status["active"]["files"] == ["web-api.yaml"]
        assert [p["name"] for p in status["active"]["policies"]] == ["web-reads-api"]
        assert status["last_refused"] is None

        body = await cp.policy_revision()
        revision = compile_served(body)
        assert revision.id == status["active"]["revision"]
        assert [p.name for p in revision.authorization] == ["web-reads-api"]
        # A sidecar that already holds it gets a short answer.
        assert await cp.policy_revision(revision.id) == {"revision": revision.id, "unchanged": True}


async def test_a_bad_commit_is_refused_and_the_last_good_stays_active(
    served: tuple[ControlPlaneHarness, PolicyService], repo: Path
) -> None:
    harness, service = served
    good = git(repo, "rev-parse", "HEAD")
    bad = commit(repo, "web-api.yaml", BAD, "typo in action")
    await service.poll_once()
    svid = await join(harness.address, await harness.token(WEB, service="web"))
    async with ControlPlaneClient(harness.address, svid) as cp:
        status = await cp.policy_status()
        assert status["active"]["revision"] == good
        assert status["last_refused"]["revision"] == bad
        problems = status["last_refused"]["problems"]
        assert any(p["file"] == "web-api.yaml" and p["line"] == 8 for p in problems), problems
        assert (await cp.policy_revision())["revision"] == good

    # Fixing it activates the fix; an uncommitted edit in the working tree is ignored.
    fixed = commit(repo, "web-api.yaml", GOOD.replace('["GET"]', '["GET", "HEAD"]'), "also HEAD")
    (repo / "web-api.yaml").write_text(BAD)
    await service.poll_once()
    assert service.watcher.active is not None
    assert service.watcher.active.revision.id == fixed


async def test_policy_endpoints_need_an_svid_of_the_trust_domain(
    served: tuple[ControlPlaneHarness, PolicyService],
) -> None:
    harness, _ = served
    async with harness.client() as anonymous:
        for path in ("/v1/policy", "/v1/policy/revision"):
            response = await anonymous.get(path)
            assert response.status_code == 401
            assert response.json()["error"] == "unauthenticated"


async def test_without_a_policy_source_there_is_no_policy_endpoint(
    tmp_path: Path, clock: ManualClock, nursery: trio.Nursery
) -> None:
    state = tmp_path / "plain"
    CertificateAuthority.init(state, "example.org", clock=clock)
    harness = await start_control_plane(nursery, state, clock)
    svid = await join(harness.address, await harness.token(WEB, service="web"))
    async with ControlPlaneClient(harness.address, svid) as cp:
        with pytest.raises(ControlPlaneError):
            await cp.policy_status()
    async with harness.client() as c:
        assert (await c.get("/v1/policy")).status_code == 404
