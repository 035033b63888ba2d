"""Fault: the control plane is killed (SIGKILL) under steady load, then started again.

web's app → web's sidecar → api's sidecar → api's app carries GETs the whole time (one in
ten on a new connection, so new mTLS handshakes happen while the control plane is gone).
The data plane needs the control plane only to renew SVIDs and refresh policy and bundle,
so no request may fail while it is down; when it is back, renewals work again.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.faults.load import SOAK_FACTOR, SteadyLoad
from tests.sidecar_e2e.mesh import Mesh, Sidecar, wait_until

pytestmark = pytest.mark.slow

DOWN_SECONDS = 8.0 * SOAK_FACTOR  # how long the control plane stays dead under load
AFTER_SECONDS = 3.0  # load kept up after it is back


def test_data_plane_serves_through_a_control_plane_kill_and_renews_after(tmp_path: Path) -> None:
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        web = mesh.start_sidecar("web", outbound={"api": api})
        serials = {s.name: s.svid()["serial"] for s in (api, web)}
        with SteadyLoad(
            "control-plane-killed", web.outbound_ports["api"], max_seconds=DOWN_SECONDS + 60
        ) as load:
            wait_until(lambda: load.requests() >= 50, 20, "load under way")
            streams_before = {s.name: _stream_connects(s) for s in (api, web)}
            mesh.cp.process.signal(signal.SIGKILL)
            assert mesh.cp.process.wait(timeout=10) == -signal.SIGKILL
            at_kill = load.requests()
            time.sleep(DOWN_SECONDS)
            during = load.requests() - at_kill
            mesh.cp.start()
            # Renewal through the admin port works again against the restarted control plane.
            for sidecar in (api, web):
                assert sidecar.admin_get("/renew", method="POST")[0] == 202
            for sidecar in (api, web):
                wait_until(
                    lambda s=sidecar: s.svid()["serial"] != serials[s.name],
                    30,
                    f"{sidecar.name} renewed after the control plane returned",
                    sidecar.process,
                )
            # With the configuration stream (trustmesh/sidecar/stream_client.py), each sidecar
            # that had a stream reconnects to the restarted control plane and gets a new snapshot.
            for sidecar in (api, web):
                if streams_before[sidecar.name]:
                    wait_until(
                        lambda s=sidecar: _stream_connects(s) > streams_before[s.name],
                        40,
                        f"{sidecar.name} stream reconnected",
                        sidecar.process,
                    )
            time.sleep(AFTER_SECONDS)
            figures = load.stop()
        print(f"\n{figures.line()}; {during} of them while the control plane was dead ({DOWN_SECONDS:g} s)")
        assert figures.errors == 0, figures.error_samples
        assert during > 0, "the load must have run while the control plane was down"
        for sidecar in (api, web):
            events = [e.get("event") for e in sidecar.process.log_events()]
            assert "svid_renewed" in events
            assert "svid_expired" not in events


def _stream_connects(sidecar: Sidecar) -> int:
    return sum(e.get("event") == "stream_connected" for e in sidecar.process.log_events())
