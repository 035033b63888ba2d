"""A control plane with real data behind every GUI page, for the GUI's browser tests and screenshots.

Nothing here is faked inside the control plane; everything arrives the way it will in a mesh:
- a CA in a temp state dir, and a git repository of policies the control plane follows: the first
  commit allows web -> api (GET) and api -> db, denies writes to api, and says nothing for web -> db,
  so those calls are denied; then a broken commit that the control plane refuses (the GUI shows its problems);
- workloads joined with single-use tokens over HTTPS (`join_client.join`), as sidecars do;
- spans made by the sidecar's own span factory (`trustmesh.tracing.spans.MeshTracer`), one tracing
  pipeline per service with its own `service.name`, exported by the OpenTelemetry SDK's OTLP/HTTP
  exporter to the GUI listener's `/v1/traces`, exactly as `OTEL_EXPORTER_OTLP_ENDPOINT` would.

It stands in for `trustmesh demo` until the sidecar processes run the traffic themselves.
"""

from __future__ import annotations

import random
import subprocess
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final

import trio

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import SystemClock
from trustmesh.control.gui.listener import GuiListener
from trustmesh.control.join_client import Svid, join
from trustmesh.control.policy_service import PolicyService
from trustmesh.control.server import ControlPlane
from trustmesh.identity import SpiffeId
from trustmesh.policy.source import GitSource
from trustmesh.policy.watcher import PolicyWatcher
from trustmesh.tracing.setup import TracingOptions, setup_tracing
from trustmesh.tracing.spans import MeshTracer

__all__ = ["SeededMesh", "start_seeded_mesh"]

TRUST_DOMAIN: Final = "demo.trustmesh.test"
SERVICES: Final = ("web", "api", "db")
# A short-lived job whose SVID is already near expiry, so the workloads page shows the warning.
SHORT_LIVED: Final = ("report", timedelta(seconds=50))
_PORTS: Final = {"web": 9001, "api": 9002, "db": 9003, "report": 9004}


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/{service}"


_GOOD_POLICY: Final = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: web-reads-api
spec:
  selector:
    spiffeIds: ["{spiffe_id("api")}"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["{spiffe_id("web")}"]
      to:
        methods: ["GET"]
---
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: api-is-read-only
spec:
  selector:
    spiffeIds: ["{spiffe_id("api")}"]
  action: DENY
  rules:
    - to:
        methods: ["POST", "PUT", "PATCH", "DELETE"]
---
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: api-uses-db
spec:
  selector:
    spiffeIds: ["{spiffe_id("db")}"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["{spiffe_id("api")}"]
"""

# A typo a reviewer might miss: the control plane refuses it and keeps the revision above.
_BROKEN_POLICY: Final = """\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: report-reads-api
spec:
  action: ALOW
  rules:
    - from:
        spiffeIds: ["spiffe://elsewhere.test/report"]
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=trustmesh demo", "-c", "user.email=demo@trustmesh.test",
         "-c", "commit.gpgsign=false", *args],
        check=True,
        capture_output=True,
        timeout=30,
    )


def make_policy_repo(repo: Path) -> None:
    """A git repository whose first commit is `_GOOD_POLICY` on branch main."""
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "mesh.yaml").write_text(_GOOD_POLICY)
    _git(repo, "add", "mesh.yaml")
    _git(repo, "commit", "-q", "-m", "web reads api, api uses db; nothing for web -> db")


def commit_broken_policy(repo: Path) -> None:
    (repo / "report.yaml").write_text(_BROKEN_POLICY)
    _git(repo, "add", "report.yaml")
    _git(repo, "commit", "-q", "-m", "let the report job read api")


@dataclass
class SeededMesh:
    """A running control plane (`cp`) with its GUI at `gui_url`, and the identities that joined."""

    cp: ControlPlane
    gui: GuiListener
    policy_repo: Path
    svids: dict[str, Svid] = field(default_factory=dict)

    @property
    def gui_url(self) -> str:
        return self.gui.url

    @property
    def revision(self) -> str:
        assert self.cp.policy is not None and self.cp.policy.watcher.active is not None
        return self.cp.policy.watcher.active.revision.id

    def stop(self) -> None:
        self.cp.stop()


async def start_seeded_mesh(nursery: trio.Nursery, workdir: Path, *, requests: int = 60) -> SeededMesh:
    """Start a control plane with GUI on 127.0.0.1:<free port> in `nursery` and fill it with data.

    Stop it with `mesh.stop()` (or by cancelling the nursery). Takes a few seconds: joins are real
    HTTPS round trips and spans are flushed through the real exporter before this returns.
    """
    clock = SystemClock()
    state = workdir / "state"
    CertificateAuthority.init(state, TRUST_DOMAIN, clock=clock)
    repo = workdir / "policy"
    await trio.to_thread.run_sync(make_policy_repo, repo)
    policy = PolicyService(PolicyWatcher(GitSource(str(repo), "main"), clock), timedelta(hours=1))
    gui = GuiListener("127.0.0.1", 0)
    cp = ControlPlane(state, host="127.0.0.1", port=0, clock=clock, policy=policy, gui=gui,
                      rotation_check=timedelta(hours=1))
    address = await nursery.start(cp.run)
    mesh = SeededMesh(cp, gui, repo)
    assert cp.issuer is not None
    for service in SERVICES:
        token = await cp.issuer.create_token(SpiffeId.parse(spiffe_id(service)), service)
        mesh.svids[service] = await join(address, token)
    # The short-lived job: the control plane issues with its own TTL, so lower it for this one join.
    name, ttl = SHORT_LIVED
    token = await cp.issuer.create_token(SpiffeId.parse(spiffe_id(name)), name)
    default_ttl, cp.issuer.svid_ttl = cp.issuer.svid_ttl, ttl
    try:
        mesh.svids[name] = await join(address, token)
    finally:
        cp.issuer.svid_ttl = default_ttl
    await trio.to_thread.run_sync(commit_broken_policy, repo)
    await policy.poll_once()
    await send_traffic(mesh, requests)
    return mesh


async def send_traffic(mesh: SeededMesh, requests: int, *, seed: int = 7) -> None:
    """`requests` rounds of web -> api -> db (allowed); every third round web -> db (denied: no rule
    allows it) and every fifth web POST api (denied by the api-is-read-only rule),
    recorded by each service's `MeshTracer` and exported over OTLP/HTTP; returns once exported."""
    revision = mesh.revision
    url = mesh.gui_url

    def run() -> None:
        pipelines = {
            s: setup_tracing(TracingOptions(service_name=s, endpoint=url, schedule_delay_ms=100), env={})
            for s in SERVICES
        }
        try:
            rng = random.Random(seed)
            tracers = {s: MeshTracer(t.tracer, service=s) for s, t in pipelines.items()}
            for i in range(requests):
                _call(tracers, "web", "api", b"GET", b"/items", revision, rng, then=("db", b"/rows"))
                if i % 3 == 0:
                    _call(tracers, "web", "db", b"GET", b"/rows", revision, rng)
                if i % 5 == 0:
                    _call(tracers, "web", "api", b"POST", b"/items", revision, rng)
            for pipeline in pipelines.values():
                pipeline.force_flush(10.0)
        finally:
            for pipeline in pipelines.values():
                pipeline.shutdown(5.0)

    await trio.to_thread.run_sync(run)


def _call(
    tracers: dict[str, MeshTracer],
    source: str,
    destination: str,
    method: bytes,
    target: bytes,
    revision: str,
    rng: random.Random,
    then: tuple[str, bytes] | None = None,
    app_headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """One request source -> destination through both sidecars, shaped as the sidecars record it.

    `app_headers` are what the calling app sent its outbound sidecar: none for a trace's first hop
    (the sidecar starts the trace), the traceparent it received for a nested call (apps propagate).
    """
    allowed = (source, destination, method) in {("web", "api", b"GET"), ("api", "db", b"GET")}
    outbound = tracers[source].outbound(app_headers or [], method=method, target=target, service=destination)
    with outbound:
        attempt = outbound.attempt(
            endpoint_address="127.0.0.1", endpoint_port=_PORTS[destination],
            peer_spiffe_id=spiffe_id(destination),
        )
        with attempt:
            inbound = tracers[destination].inbound(
                attempt.forward_headers([]), method=method, target=target,
                peer_spiffe_id=spiffe_id(source), peer_address="127.0.0.1",
                peer_port=40000 + rng.randrange(20000), server_address="127.0.0.1",
                server_port=_PORTS[destination],
            )
            with inbound:
                inbound.set_policy("allow" if allowed else "deny", revision)
                if allowed:
                    time.sleep(rng.uniform(0.001, 0.004))  # the app's own work
                    if then is not None:
                        received = inbound.forward_headers([])  # what app `destination` receives
                        nested, path = then
                        _call(tracers, destination, nested, method, path, revision, rng, app_headers=received)
                    status = 200
                    inbound.set_upstream(f"127.0.0.1:{_PORTS[destination] + 1000}")
                    inbound.finish(status, response_bytes=rng.randrange(200, 2000))
                else:
                    status = 403
                    inbound.finish(status, error_code="policy_denied")
            attempt.finish(status)
        outbound.finish(status)
    return status
