"""Discovery with real processes: sidecars find each other through the control plane's stream.

No `--endpoints` anywhere: web's sidecar learns api's endpoint from the control plane when
api's sidecar registers, and forgets it when api's sidecar shuts down (it deregisters).
"""

from __future__ import annotations

from pathlib import Path

from tests.sidecar_e2e.mesh import Mesh, spiffe_id, wait_until


def test_endpoints_appear_and_disappear_as_sidecars_join_and_leave(tmp_path: Path) -> None:
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        web = mesh.start_sidecar("web", outbound={"api": None}, discover=True)

        def answer() -> int:
            status, _, _ = web.call("api", "GET", "/hello")
            return status

        wait_until(lambda: answer() == 200, 30, "web reaches api through a discovered endpoint")
        status, headers, _ = web.call("api", "GET", "/who")
        assert status == 200
        assert app.seen[-1].headers["x-forwarded-client-cert"][0].endswith(f"URI={spiffe_id('web')}")

        assert api.stop() == 0  # a clean shutdown deregisters at once
        wait_until(lambda: answer() == 503, 30, "api's endpoint removed after it deregistered")
        status, headers, _ = web.call("api", "GET", "/hello")
        assert headers.get("x-trustmesh-error") in ("no-endpoints", "no-healthy-endpoints")
