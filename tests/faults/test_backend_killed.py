"""Fault: a backend endpoint is killed (SIGKILL) and restarted under load; another endpoint lives.

Service "api" has two endpoints, each an api sidecar (same SPIFFE ID) in front of its own
echo app. web's sidecar balances GETs over both. Each endpoint in turn is killed and,
after a hold, restarted (its persisted SVID, no token) until it serves again. GET is
idempotent: a request caught on the dying endpoint, or sent to it while it is down, is
retried on the other (docs/traffic.md), so the app sees no error, with one exception no
proxy can mend: a response whose head had already reached the app when its endpoint was
SIGKILLed is cut short (counted separately, at most one per kill).

web reads its policy from a directory holding a TrafficPolicy with a 1 s base ejection,
so the restarted endpoint is readmitted within the test instead of after Envoy's 30 s.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.faults.load import SOAK_FACTOR, SteadyLoad
from tests.sidecar_e2e.mesh import (
    ALLOW_ALL_POLICY,
    LOOPBACK,
    EchoApp,
    Mesh,
    Process,
    Sidecar,
    free_port,
    spiffe_id,
    wait_until,
)

pytestmark = pytest.mark.slow

HOLD_SECONDS = 4.0 * SOAK_FACTOR  # how long each endpoint stays dead under load
API_ID = spiffe_id("api")
TRAFFIC_POLICY = f"""\
apiVersion: trustmesh.dev/v1
kind: TrafficPolicy
metadata:
  name: api-traffic
spec:
  service: {API_ID}
  outlierDetection: {{consecutiveFailures: 5, baseEjection: 1s, maxEjection: 2s, maxEjectedPercent: 50}}
"""


def _web(mesh: Mesh, endpoints: list[Sidecar], policy_dir: Path) -> Sidecar:
    """web with one outbound service "api" over every endpoint (Mesh.start_sidecar takes one)."""
    port, admin = free_port(), free_port()
    argv = mesh.sidecar_argv(
        "web",
        token=mesh.cp.token("web"),
        admin_port=admin,
        outbound=[f"api={LOOPBACK}:{port}"],
        endpoints=[f"api={LOOPBACK}:{e.inbound_ports[0]}@{API_ID}" for e in endpoints],
        extra=["--policy-dir", str(policy_dir)],
    )
    web = Sidecar(
        "web", admin, mesh.root / "web", Process("sidecar-web", argv, mesh.root / "sidecar-web.log")
    )
    web.outbound_ports["api"] = port
    mesh.sidecars["web"] = web
    web.process.start()
    web.wait_ready()
    return web


def _kill_and_restart(endpoint: Sidecar, app: EchoApp, load: SteadyLoad) -> None:
    endpoint.process.signal(signal.SIGKILL)
    endpoint.process.wait(timeout=10)
    time.sleep(HOLD_SECONDS)
    endpoint.process.start()  # same command line: the persisted SVID, the spent token ignored
    endpoint.wait_ready()
    seen = len(app.seen)
    wait_until(lambda: len(app.seen) > seen, 30, f"{endpoint.name} serving again", endpoint.process)


def test_gets_never_fail_while_another_endpoint_lives(tmp_path: Path) -> None:
    policy_dir = tmp_path / "web-policy"
    policy_dir.mkdir()
    (policy_dir / "authz.yaml").write_text(ALLOW_ALL_POLICY)
    (policy_dir / "traffic.yaml").write_text(TRAFFIC_POLICY)
    with Mesh(tmp_path) as mesh:
        apps = [mesh.start_app(), mesh.start_app()]
        # Two endpoints of one service "api", one SPIFFE ID: the second token is for "api" too.
        one = mesh.start_sidecar("api", inbound_to=apps[0].port)
        two = mesh.start_sidecar("api-2", inbound_to=apps[1].port, token=mesh.cp.token("api", spiffe=API_ID))
        web = _web(mesh, [one, two], policy_dir)
        with SteadyLoad("backend-killed", web.outbound_ports["api"], max_seconds=120) as load:
            wait_until(lambda: load.requests() >= 50, 20, "load under way")
            _kill_and_restart(two, apps[1], load)
            _kill_and_restart(one, apps[0], load)
            time.sleep(1.0)
            figures = load.stop()
        served = [len(a.seen) for a in apps]
        print(
            f"\n{figures.line()}; endpoints served {served[0]} and {served[1]};"
            f" each killed for {HOLD_SECONDS:g} s"
        )
        # Nothing fails before a response head: refused connections, resets before a byte
        # came back, 502/503s are all retried on the live endpoint. A SIGKILL can cut the
        # one response in flight mid-body (the load is sequential): at most one per kill.
        assert figures.errors == figures.cut_after_head, figures.error_samples
        assert figures.cut_after_head <= 2, figures.error_samples
        events = [e.get("event") for e in web.process.log_events()]
        print(
            f"web: {events.count('endpoint_ejected')} ejections,"
            f" {events.count('endpoint_readmitted')} readmissions"
        )
