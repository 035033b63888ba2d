"""The control plane's own telemetry: spans for join, renew and policy activation over real OTLP,
and its Prometheus metrics on the GUI listener, from a real control-plane process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.observability.collector import Collector
from tests.sidecar_e2e.mesh import LOOPBACK, Process, free_port, run_cli, trustmesh_command, wait_until
from trustmesh.control.join_client import ControlPlaneClient, join
from trustmesh.tracing.otlp_receiver import StoredSpan

TD = "example.org"
POLICY = """\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
spec:
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["spiffe://example.org/ns/default/sa/web"]
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _commit(repo: Path, name: str) -> None:
    (repo / "p.yaml").write_text(POLICY.format(name=name))
    _git(repo, "add", "p.yaml")
    _git(repo, "commit", "-q", "-m", name)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def _find(
    collector: Collector, name: str, where: Callable[[StoredSpan], bool] = lambda s: True
) -> StoredSpan:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for trace_id in collector.store.trace_ids():
            for span in collector.store.spans(trace_id):
                if span.name == name and where(span):
                    return span
        time.sleep(0.1)
    raise AssertionError(f"no span {name!r} arrived")


def test_join_renew_and_policy_activation_are_spans_and_metrics(tmp_path: Path, collector: Collector) -> None:
    state, repo = tmp_path / "state", tmp_path / "policies"
    assert run_cli("ca", "init", "--trust-domain", TD, "--state-dir", str(state)).returncode == 0
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.org")
    _git(repo, "config", "user.name", "t")
    _commit(repo, "first")
    port, gui = free_port(), free_port()
    cp = Process(
        "control-plane",
        [*trustmesh_command(), "control-plane", "--state-dir", str(state), "--listen", f"{LOOPBACK}:{port}",
         "--policy-git", str(repo), "--policy-poll", "1s", "--gui", f"{LOOPBACK}:{gui}",
         "--otlp-endpoint", collector.endpoint],
        tmp_path / "cp.log",
    )  # fmt: skip
    cp.start()
    try:
        wait_until(lambda: "control_plane_ready" in cp.log_text(), 60, "control plane ready", cp)
        token = run_cli(
            "token", "create", "--state-dir", str(state),
            "--spiffe-id", f"spiffe://{TD}/ns/default/sa/web", "--service", "web",
        ).stdout.strip()  # fmt: skip

        async def join_and_renew() -> str:
            svid = await join(f"{LOOPBACK}:{port}", token)
            async with ControlPlaneClient(f"{LOOPBACK}:{port}", svid) as client:
                renewed = await client.renew()
            return renewed.serial

        renewed_serial = trio.run(join_and_renew)
        _commit(repo, "second")
        head = _git(repo, "rev-parse", "HEAD").strip()

        joined = _find(collector, "trustmesh.join")
        assert joined.attributes["trustmesh.spiffe_id"] == f"spiffe://{TD}/ns/default/sa/web"
        renewed = _find(collector, "trustmesh.renew")
        assert renewed.attributes["trustmesh.svid.serial"] == renewed_serial
        activated = _find(
            collector,
            "trustmesh.policy.activate",
            lambda s: s.attributes.get("trustmesh.policy.revision") == head,
        )
        assert activated.attributes["trustmesh.policy.previous_revision"] != head

        text = httpx.get(f"http://{LOOPBACK}:{gui}/metrics", timeout=10).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("trustmesh_svids_issued_total", (("method", "join"),))] == 1
        assert samples[("trustmesh_svids_issued_total", (("method", "renew"),))] == 1
    finally:
        assert cp.stop() == 0
