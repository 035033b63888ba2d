"""Fault: intermediate and root rotation under continuous load, with short lifetimes.

The CA's intermediate lives 24 s (renewed at half-life), SVIDs 8 s (sidecars renew at half
their life), and a root rotation is started mid-run with an 8 s overlap: the new root is
published first, signs only after the overlap, and the old root stays in the bundle while
anything it anchors is still valid. GETs cross web → sidecar → sidecar → api the whole
time, one in ten on a new connection (new mTLS handshakes with whatever is current).
No request may fail.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.faults.load import SOAK_FACTOR, SteadyLoad
from tests.sidecar_e2e.mesh import Mesh, run_cli, wait_until

pytestmark = pytest.mark.slow

LOAD_SECONDS = 30.0 * SOAK_FACTOR


def _roots(mesh: Mesh) -> list[str]:
    bundle = httpx.get(f"{mesh.cp.url}/v1/bundle", verify=False, timeout=10).json()
    return sorted(k["x5c"][0] for k in bundle["keys"] if k.get("use") == "x509-svid")


def test_intermediate_and_root_rotation_under_load_lose_no_request(tmp_path: Path) -> None:
    with Mesh(tmp_path, svid_ttl="8s", ca_args=["--intermediate-ttl", "24s", "--root-ttl", "8760h"]) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        web = mesh.start_sidecar("web", outbound={"api": api})
        first_roots = _roots(mesh)
        assert len(first_roots) == 1
        with SteadyLoad("rotation", web.outbound_ports["api"], max_seconds=LOAD_SECONDS + 30) as load:
            wait_until(lambda: load.requests() >= 50, 20, "load under way")
            rotated = run_cli("ca", "rotate-root", "--state-dir", str(mesh.state_dir), "--overlap", "8s")
            assert rotated.returncode == 0, rotated.stderr
            # The new root is published at once, before it signs anything.
            wait_until(lambda: len(_roots(mesh)) == 2, 20, "new root in the bundle")
            both = _roots(mesh)
            assert set(first_roots) < set(both)
            # Watch the bundle while the load runs: when (if ever) does the old root leave it?
            old_root_gone_at: float | None = None
            deadline = time.monotonic() + LOAD_SECONDS
            while time.monotonic() < deadline:
                if old_root_gone_at is None and not set(first_roots) <= set(_roots(mesh)):
                    old_root_gone_at = time.time()
                time.sleep(0.5)
            figures = load.stop()
        print(f"\n{figures.line()}")
        assert figures.errors == 0, figures.error_samples
        assert figures.requests > 100
        # Both sidecars renewed many times, and every renewal after the switch chains to the new root.
        for sidecar in (api, web):
            renewals = [e for e in sidecar.process.log_events() if e.get("event") == "svid_renewed"]
            assert len(renewals) >= 4, sidecar.process.log_tail()
            assert sidecar.ready()
        events = [e.get("event") for e in mesh.cp.process.log_events()]
        assert events.count("intermediate_rotated") >= 1
        activated = [e for e in mesh.cp.process.log_events() if e.get("event") == "ca_root_activated"]
        assert activated, "the new root never started signing"
        if old_root_gone_at is not None:
            # SVIDs issued under the old root just before the switch live up to 8 s more (and its
            # intermediates longer): the old root may only leave the bundle after that.
            switched = datetime.fromisoformat(activated[0]["timestamp"].replace("Z", "+00:00")).timestamp()
            assert old_root_gone_at - switched >= 8.0, (old_root_gone_at, switched)
