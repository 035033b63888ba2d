"""Fixtures for the configuration stream: a real CA, a real control plane on loopback (mutual TLS,
hypercorn websockets), real SVIDs from real joins, and in-process stream clients.

Stream timings are shortened (heartbeats every 0.2 s) so a vanished peer is noticed in well
under a second of real time; the grace period runs on the shared ManualClock, so tests move
the clock and sweep instead of waiting 15 s.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock
from trustmesh.control.join_client import Svid, join
from trustmesh.control.policy_service import PolicyService
from trustmesh.control.server import ControlPlane
from trustmesh.control.stream import StreamHub, StreamSettings
from trustmesh.identity import SpiffeId
from trustmesh.policy.source import GitSource
from trustmesh.policy.watcher import PolicyWatcher
from trustmesh.sidecar.stream_client import StreamClient, StreamClientSettings

TD = "example.org"
API = f"spiffe://{TD}/ns/default/sa/api"
WEB = f"spiffe://{TD}/ns/default/sa/web"

FAST_SERVER = StreamSettings(
    heartbeat_interval=timedelta(milliseconds=200),
    missed_heartbeats=3,
    grace=timedelta(seconds=15),
    sweep_interval=timedelta(milliseconds=50),
    bundle_check=timedelta(milliseconds=100),
)
FAST_CLIENT = StreamClientSettings(
    heartbeat_interval=timedelta(milliseconds=200),
    missed_heartbeats=3,
    backoff_base=timedelta(milliseconds=50),
    backoff_cap=timedelta(milliseconds=300),
    # A refused TLS client certificate shows on the client only as a handshake that never
    # completes (trio-websocket waits for the upgrade answer), so keep this short in tests.
    connect_timeout=timedelta(seconds=1),
)

POLICY = f"""\
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
def clock() -> ManualClock:
    # Wall-clock now: the client side of TLS checks real time.
    return ManualClock(current=datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def state_dir(tmp_path: Path, clock: ManualClock) -> Path:
    state = tmp_path / "state"
    CertificateAuthority.init(state, TD, clock=clock)
    return state


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "policies"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "ops@example.org")
    git(path, "config", "user.name", "ops")
    commit(path, "policy.yaml", POLICY, "first policy")
    return path


@dataclass
class Mesh:
    """A control plane (restartable on its port) and helpers to make sidecar stream clients."""

    nursery: trio.Nursery
    state_dir: Path
    clock: ManualClock
    repo: Path
    store_url: str | None = None
    cp: ControlPlane | None = None
    policy: PolicyService | None = None
    port: int = 0
    clients: list[StreamClient] = field(default_factory=list)

    async def start(self) -> ControlPlane:
        watcher = PolicyWatcher(GitSource(str(self.repo), "main"), self.clock)
        self.policy = PolicyService(watcher, timedelta(hours=1))  # tests call poll_once()
        cp = ControlPlane(
            self.state_dir,
            host="127.0.0.1",
            port=self.port,
            clock=self.clock,
            rotation_check=timedelta(hours=1),
            policy=self.policy,
            store_url=self.store_url,
            stream_settings=FAST_SERVER,
        )
        await self.nursery.start(cp.run)
        self.port = cp.bound_port
        self.cp = cp
        return cp

    @property
    def hub(self) -> StreamHub:
        assert self.cp is not None and self.cp.stream is not None
        return self.cp.stream

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def svid(self, spiffe_id: str, service: str) -> Svid:
        assert self.cp is not None and self.cp.issuer is not None
        token = await self.cp.issuer.create_token(SpiffeId.parse(spiffe_id), service, timedelta(minutes=5))
        return await join(f"127.0.0.1:{self.port}", str(token))

    def client(self, svid: Svid, *, urls: list[str] | None = None, **kwargs: object) -> StreamClient:
        client = StreamClient(urls or [self.url], lambda: svid, settings=FAST_CLIENT, **kwargs)  # type: ignore[arg-type]
        self.clients.append(client)
        return client


@pytest.fixture
async def mesh(state_dir: Path, clock: ManualClock, repo: Path, nursery: trio.Nursery) -> AsyncIterator[Mesh]:
    m = Mesh(nursery, state_dir, clock, repo)
    await m.start()
    try:
        yield m
    finally:
        for c in m.clients:
            await c.stop()
        if m.cp is not None:
            m.cp.stop()


async def wait_for(
    changed: Callable[[], trio.Event], predicate: Callable[[], bool], timeout: float = 10
) -> None:
    """Wait until `predicate()` holds, waking on `changed()` events (bounded by `timeout`)."""
    with trio.fail_after(timeout):
        while not predicate():
            with trio.move_on_after(0.05):
                await changed().wait()


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10) -> None:
    """For state without an event (the control plane's): a bounded poll."""
    with trio.fail_after(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.02)


@pytest.fixture
def pg_cluster_factory() -> Iterator[Callable[[], str]]:
    """A throwaway PostgreSQL cluster started on first use; stopped at the end of the test."""
    from contextlib import ExitStack

    from tests.pgcluster import running_cluster

    with ExitStack() as stack:
        urls: list[str] = []

        def make() -> str:
            cluster = stack.enter_context(running_cluster())
            urls.append(cluster.create_database())
            return urls[-1]

        yield make
