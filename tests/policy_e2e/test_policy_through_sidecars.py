"""Policy enforced end to end with real processes: the control plane follows a policy source,
pushes each revision through the stream, and api's sidecar applies it to the next request of a
connection that stays open (no reconnect, no restart).
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from tests.sidecar_e2e.mesh import LOOPBACK, Mesh, spiffe_id, wait_until

ALLOW_GET = f"""\
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
"""

DENY_ADMIN = f"""---
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: nobody-reads-admin
spec:
  selector:
    spiffeIds: ["{spiffe_id("api")}"]
  action: DENY
  rules:
    - to:
        paths: ["/admin", "/admin/*"]
"""


def test_a_policy_change_applies_to_a_live_keep_alive_connection(tmp_path: Path) -> None:
    with Mesh(tmp_path, policy=ALLOW_GET, control_plane_args=["--policy-poll", "1s"]) as mesh:
        assert mesh.policy_dir is not None
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        web = mesh.start_sidecar("web", outbound={"api": api})
        conn = http.client.HTTPConnection(LOOPBACK, web.outbound_ports["api"], timeout=10)

        def get(path: str) -> int:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status

        def post(path: str) -> int:
            conn.request("POST", path, body=b"x")
            response = conn.getresponse()
            response.read()
            return response.status

        try:
            assert get("/admin/users") == 200
            assert post("/items") == 403  # only GET is allowed
            sock = conn.sock
            # An operator adds a DENY; the control plane validates and pushes it.
            (mesh.policy_dir / "deny-admin.yaml").write_text(DENY_ADMIN)
            wait_until(lambda: get("/admin/users") == 403, 30, "the DENY reaches api's sidecar")
            assert get("/items") == 200
            assert conn.sock is sock, "the connection was re-opened"
            # A broken edit is refused by the control plane; the last good revision stays.
            (mesh.policy_dir / "broken.yaml").write_text("apiVersion: trustmesh.dev/v1\nkind: Nope\n")
            wait_until(
                lambda: any(
                    e.get("event") == "policy_revision_refused" for e in mesh.cp.process.log_events()
                ),
                30,
                "the broken revision refused",
            )
            assert get("/admin/users") == 403 and get("/items") == 200
        finally:
            conn.close()
        denied = [
            e
            for e in api.process.log_events()
            if e.get("event") == "policy_decision"
            and e.get("decision") == "DENY"
            and e.get("path") == "/admin/users"
        ]
        assert denied and denied[-1]["policy"] == "nobody-reads-admin", json.dumps(denied[-1:])
        assert denied[-1]["source"] == spiffe_id("web") and denied[-1]["destination"] == spiffe_id("api")
