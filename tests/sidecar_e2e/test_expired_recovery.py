"""SVID expiry while the control plane is down, with real processes.

web's app → web's sidecar → api's sidecar → api's app, with 10 s SVIDs. The control plane
is stopped until both SVIDs have expired and both sidecars have failed closed; then it is
started again. Within the recovery grace the sidecars renew with their expired SVIDs (no
token) and traffic flows again; past it they say on /ready that a new token is needed.
"""

from __future__ import annotations

import http.client
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.sidecar_e2e.mesh import Mesh, Sidecar, wait_until

pytestmark = pytest.mark.slow

SVID_TTL = "10s"
# Retries while the control plane is away back off with full jitter up to this cap (30 s by
# default), so the retry after it returns comes within the cap: the tests need not wait 30 s.
BACKOFF_MAX = ["--renew-backoff-max", "2s"]
# The bound on that wait, with margin for a loaded two-core machine.
RECOVERY_WAIT = 60.0


def _start_pair(mesh: Mesh) -> tuple[Sidecar, Sidecar]:
    app = mesh.start_app()
    # The control plane's own SVID has the same short TTL; restart it right before the joins
    # so it is fresh for them (as test_sidecar_process does).
    tokens = {name: mesh.cp.token(name) for name in ("api", "web")}
    mesh.cp.stop()
    mesh.cp.start()
    api = mesh.start_sidecar("api", inbound_to=app.port, wait=False, token=tokens["api"], extra=BACKOFF_MAX)
    web = mesh.start_sidecar("web", outbound={"api": api}, wait=False, token=tokens["web"], extra=BACKOFF_MAX)
    api.wait_ready()
    web.wait_ready()
    assert json.loads(api.admin_get("/config")[1])["renew_backoff_max"] == "2s"
    assert web.call("api", "GET", "/before")[0] == 200
    return api, web


def _ready_body(sidecar: Sidecar) -> tuple[int, bytes]:
    return sidecar.admin_get("/ready")


def _fail_closed(mesh: Mesh, api: Sidecar, web: Sidecar) -> None:
    assert mesh.cp.stop() is not None
    for sidecar in (api, web):
        wait_until(
            lambda s=sidecar: _ready_body(s) == (503, b"not ready: SVID expired: failed closed\n"),
            30,
            f"{sidecar.name} failed closed",
            sidecar.process,
        )
    try:
        status = web.call("api", "GET", "/while-expired")[0]
    except (ConnectionError, http.client.RemoteDisconnected):
        status = 0
    assert status != 200


def test_a_sidecar_recovers_on_its_own_when_the_control_plane_returns_within_the_grace(
    tmp_path: Path,
) -> None:
    with Mesh(tmp_path, svid_ttl=SVID_TTL) as mesh:
        api, web = _start_pair(mesh)
        expired_serials = {s.name: s.svid()["serial"] for s in (api, web)}
        _fail_closed(mesh, api, web)
        mesh.cp.start()  # no new token anywhere from here on
        api.wait_ready(RECOVERY_WAIT)
        web.wait_ready(RECOVERY_WAIT)
        ok = sum(web.call("api", "GET", f"/after/{i}")[0] == 200 for i in range(20))
        print(f"\nrecovery: 20 requests after recovery, {ok} answered 200")
        assert ok == 20
        for sidecar in (api, web):
            events = sidecar.process.log_events()
            recovered = [e for e in events if e.get("event") == "svid_recovered"]
            assert recovered and recovered[0]["previous_serial"] == expired_serials[sidecar.name]
            assert sum(e.get("event") == "svid_joined" for e in events) == 1  # the one token, at start
        audit = [e for e in mesh.cp.process.log_events() if e.get("event") == "svid_granted"]
        recoveries = {e["auth"] for e in audit if e.get("method") == "recover"}
        assert recoveries == {f"recover:{serial}" for serial in expired_serials.values()}


def test_past_the_grace_the_sidecar_says_it_needs_a_new_join_token(tmp_path: Path) -> None:
    with Mesh(tmp_path, svid_ttl=SVID_TTL, control_plane_args=["--expired-renew-grace", "1s"]) as mesh:
        api, web = _start_pair(mesh)
        expiry = max(datetime.fromisoformat(s.svid()["not_after"].replace("Z", "+00:00")) for s in (api, web))
        _fail_closed(mesh, api, web)
        # Past the grace for certain before the control plane is back: failing closed and the
        # restart alone can take under a second on a quick machine (seen: 0.8 s).
        time.sleep(max(0.0, (expiry + timedelta(seconds=2) - datetime.now(UTC)).total_seconds()))
        mesh.cp.start()
        wait_until(
            lambda: (
                _ready_body(api)
                == (503, b"not ready: SVID expired beyond the recovery grace: needs a new join token\n")
            ),
            RECOVERY_WAIT,
            "api /ready says a new join token is needed",
            api.process,
        )
        assert api.process.alive()  # it keeps asking (the grace may be raised), but says why
        needs = [e for e in api.process.log_events() if e.get("event") == "svid_needs_join_token"]
        assert len(needs) == 1 and "a new join token is needed" in needs[0]["error"]
        refused = [e for e in mesh.cp.process.log_events() if e.get("event") == "svid_recovery_refused"]
        assert refused and refused[0]["reason"] == "beyond_grace"
