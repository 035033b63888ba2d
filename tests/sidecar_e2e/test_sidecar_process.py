"""The sidecar as a process: real control plane, real sidecars, real TLS on loopback.

web's app → web's sidecar (outbound "api") → api's sidecar (inbound) → api's app.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.sidecar_e2e.mesh import (
    LOOPBACK,
    Mesh,
    Process,
    free_port,
    run_cli,
    spiffe_id,
    trustmesh_command,
    wait_until,
)

# Real processes: a control plane and sidecars each start a Python interpreter.
pytestmark = pytest.mark.slow


def test_request_crosses_both_sidecars_with_the_callers_identity(tmp_path: Path) -> None:
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        # The first control-plane URL is dead: the sidecar fails over to the second.
        dead = f"https://{LOOPBACK}:{free_port()}"
        web = mesh.start_sidecar("web", outbound={"api": api}, control_planes=[dead, mesh.cp.url])

        status, _, body = web.call(
            "api",
            "GET",
            "/items/1",
            headers={"x-forwarded-client-cert": "By=x;URI=spiffe://example.org/admin"},
        )
        assert status == 200, body
        seen = app.seen[-1]
        assert seen.path == "/items/1"
        xfcc = seen.headers["x-forwarded-client-cert"]
        assert len(xfcc) == 1, "the spoofed header must be removed, not appended to"
        assert f"By={api.spiffe_id}" in xfcc[0]
        assert f"URI={web.spiffe_id}" in xfcc[0]
        assert "spiffe://example.org/admin" not in xfcc[0]

        # /svid: who we are and until when.
        svid = web.svid()
        assert svid["spiffe_id"] == spiffe_id("web")
        int(svid["serial"], 16)
        assert svid["not_after"].endswith("Z")

        # /config: the effective configuration, never the join token.
        status, body = web.admin_get("/config")
        assert status == 200
        config = json.loads(body)
        assert config["outbound"][0]["service"] == "api"
        assert config["spiffe_id"] == spiffe_id("web")
        assert config["limits"]["body_timeout"] == "1m" and config["renew_backoff_max"] == "30s"
        assert b"tmjoin1" not in body and "join_token" not in config
        assert not any("tmjoin1" in e.get("event", "") + json.dumps(e) for e in web.process.log_events())

        # /metrics: Prometheus text from the process's own registry.
        status, body = web.admin_get("/metrics")
        assert status == 200
        assert b"trustmesh_sidecar_info{" in body
        assert b'trustmesh_cert_expiry_timestamp_seconds{kind="svid"' in body
        assert b'kind="trust_anchor"' in body

        # /live and wrong methods.
        assert web.admin_get("/live")[0] == 200
        assert web.admin_get("/shutdown")[0] == 405
        assert web.admin_get("/nope")[0] == 404

        # The key is private on disk.
        assert stat.S_IMODE((web.data_dir / "svid.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE(web.data_dir.stat().st_mode) == 0o700

        # wait-ready: 0 when ready; 1 with one line when nothing answers.
        assert run_cli("wait-ready", "--admin", web.admin, "--timeout", "10s").returncode == 0
        refused = run_cli("wait-ready", "--admin", f"{LOOPBACK}:{free_port()}", "--timeout", "1s")
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "not ready after 1s" in refused.stderr


def test_rotation_under_keepalive_traffic_loses_no_request(tmp_path: Path) -> None:
    # Ten seconds of keep-alive traffic while both sidecars renew over and over (POST /renew
    # asks for the renewal half-life would bring; the control plane's real /v1/renew runs).
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        web = mesh.start_sidecar("web", outbound={"api": api})
        serials_web = {web.svid()["serial"]}
        serials_api = {api.svid()["serial"]}
        conn = http.client.HTTPConnection(LOOPBACK, web.outbound_ports["api"], timeout=10)
        failures: list[str] = []
        sent = 0
        next_renewal = time.monotonic()
        deadline = time.monotonic() + 10.0
        try:
            while time.monotonic() < deadline and sent < 100_000:
                conn.request("GET", f"/n/{sent}")
                resp = conn.getresponse()
                resp.read()
                sent += 1
                if resp.status != 200:
                    failures.append(f"request {sent}: {resp.status}")
                if time.monotonic() >= next_renewal:
                    next_renewal += 1.0
                    for sidecar, serials in ((web, serials_web), (api, serials_api)):
                        serials.add(sidecar.svid()["serial"])
                        assert sidecar.admin_get("/renew", method="POST")[0] == 202
        finally:
            conn.close()
        assert not failures, failures[:5]
        assert sent > 100
        assert len(serials_web) >= 3, f"web rotated only {len(serials_web) - 1} times"
        assert len(serials_api) >= 3, f"api rotated only {len(serials_api) - 1} times"
        assert len(app.seen) == sent
        renewed = [e for e in web.process.log_events() if e.get("event") == "svid_renewed"]
        assert len(renewed) >= 2


def test_restart_with_persisted_svid_needs_no_token(tmp_path: Path) -> None:
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        first = api.svid()
        assert api.stop() == 0

        # Same command line, same (now used) token: the persisted SVID is used, no join.
        api.process.start()
        api.wait_ready()
        assert api.svid()["spiffe_id"] == first["spiffe_id"]
        assert api.stop() == 0

        # No token at all: still fine, and it renews straight away.
        argv = list(api.process.argv)
        i = argv.index("--join-token")
        del argv[i : i + 2]
        api.process = Process("sidecar-api-2", argv, tmp_path / "sidecar-api-2.log")
        api.process.start()
        api.wait_ready()
        wait_until(lambda: api.svid()["serial"] != first["serial"], 30, "renewal after restart", api.process)
        assert not any(e.get("event") == "svid_joined" for e in api.process.log_events())


def test_used_token_and_missing_identity_are_one_line_errors(tmp_path: Path) -> None:
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        token = mesh.cp.token("api")
        argv = mesh.sidecar_argv(
            "api",
            token=token,
            admin_port=free_port(),
            debug=False,
            inbound=[f"{LOOPBACK}:{free_port()}={LOOPBACK}:{app.port}"],
        )
        first = Process("first", argv, tmp_path / "first.log")
        first.start()
        try:
            wait_until(lambda: (tmp_path / "api" / "svid.pem").exists(), 30, "first join", first)
        finally:
            assert first.stop() == 0

        # The same token with an empty data dir: the control plane refuses a second join.
        again = [a if a != str(tmp_path / "api") else str(tmp_path / "api-again") for a in argv]
        done = _run(again)
        assert done.returncode == 1
        assert "invalid_token" in _error_line(done.stderr)
        assert token.split(".")[-1] not in done.stderr, "the token's secret must never be printed"

        # No token and nothing persisted.
        bare = [a for a in again if a not in ("--join-token", token)]
        bare = [a if a != str(tmp_path / "api-again") else str(tmp_path / "empty") for a in bare]
        done = _run(bare)
        assert done.returncode == 1
        assert "no --join-token" in _error_line(done.stderr)

        # A token pinning another CA: the sidecar never sends it to this control plane.
        other = tmp_path / "other-ca"
        assert (
            run_cli("ca", "init", "--trust-domain", "example.org", "--state-dir", str(other)).returncode == 0
        )
        foreign = (
            run_cli(
                "token",
                "create",
                "--state-dir",
                str(other),
                "--spiffe-id",
                spiffe_id("api"),
                "--service",
                "api",
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        pinned = [a if a != token else foreign for a in again]
        pinned = [a if a != str(tmp_path / "api-again") else str(tmp_path / "pinned") for a in pinned]
        done = _run(pinned)
        assert done.returncode == 1
        assert "ca_mismatch" in _error_line(done.stderr)

        # Bad flags: one line, before anything starts.
        done = _run(
            [*trustmesh_command(), "sidecar", "--control-plane", "http://x", "--data-dir", str(tmp_path)]
        )
        assert done.returncode == 1 and "--control-plane" in done.stderr
        data_dir = str(tmp_path)
        sidecar = [*trustmesh_command(), "sidecar", "--control-plane", mesh.cp.url, "--data-dir", data_dir]
        done = _run([*sidecar, "--outbound", "api=127.0.0.1:1", "--advertise", "10.0.0.1:16001"])
        # (an --outbound needs no --endpoints: the control plane reports the service's endpoints)
        assert done.returncode == 1 and "--advertise" in _error_line(done.stderr)
        done = _run([*sidecar, "--body-timeout", "0s"])
        assert done.returncode == 1 and "--body-timeout: must be more than zero" in _error_line(done.stderr)


def test_sigterm_drains_an_in_flight_request_and_exits_zero(tmp_path: Path) -> None:
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        web = mesh.start_sidecar("web", outbound={"api": api})
        result: dict[str, object] = {}

        def slow_call() -> None:
            try:
                result["reply"] = web.call("api", "GET", "/slow?seconds=2", timeout=30)
            except OSError as exc:
                result["error"] = exc

        caller = threading.Thread(target=slow_call)
        caller.start()
        try:
            assert app.started_slow.wait(timeout=30), "the slow request never reached the app"
            api.process.signal(signal.SIGTERM)
            web.process.signal(signal.SIGTERM)
            assert api.process.wait(timeout=20) == 0, api.process.log_tail()
            assert web.process.wait(timeout=20) == 0, web.process.log_tail()
        finally:
            caller.join(timeout=30)
        assert "error" not in result, result
        status, _, _ = result["reply"]  # type: ignore[misc]
        assert status == 200
        events = [e.get("event") for e in api.process.log_events()]
        assert "drain_started" in events and "drain_complete" in events
        # Nothing listens any more.
        with socket.socket() as s:
            assert s.connect_ex((LOOPBACK, api.inbound_ports[0])) != 0


def test_admin_shutdown_drains_and_exits_zero(tmp_path: Path) -> None:
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)
        status, body = api.admin_get("/shutdown", method="POST")
        assert status == 202, body
        assert api.process.wait(timeout=20) == 0


def test_fails_closed_when_the_svid_expires_with_the_control_plane_down(tmp_path: Path) -> None:
    with Mesh(tmp_path, svid_ttl="10s") as mesh:
        app = mesh.start_app()
        # The control plane's own certificate has the same short TTL and is renewed on a
        # 30 s check: restart it right before the joins so it is fresh for them.
        tokens = {name: mesh.cp.token(name) for name in ("api", "web")}
        mesh.cp.stop()
        mesh.cp.start()
        api = mesh.start_sidecar("api", inbound_to=app.port, wait=False, token=tokens["api"])
        web = mesh.start_sidecar("web", outbound={"api": api}, wait=False, token=tokens["web"])
        api.wait_ready()
        web.wait_ready()
        assert web.call("api", "GET", "/before")[0] == 200
        assert mesh.cp.stop() is not None

        def failed_closed() -> bool:
            status, body = api.admin_get("/ready")
            return status == 503 and b"expired" in body

        wait_until(failed_closed, 30, "api /ready 503 after expiry", api.process)
        wait_until(lambda: web.admin_get("/ready")[0] == 503, 20, "web /ready 503 after expiry", web.process)
        assert api.process.alive() and web.process.alive()
        # api's inbound closes a new connection before any handshake.
        with socket.create_connection((LOOPBACK, api.inbound_ports[0]), timeout=5) as raw:
            raw.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello: never answered
            with contextlib.suppress(ConnectionResetError):
                assert raw.recv(100) == b""
        metrics = api.admin_get("/metrics")[1]
        assert b"trustmesh_sidecar_serving 0.0" in metrics
        before = len(app.seen)
        # web's outbound refuses too (its own SVID has expired): closed, or an error status.
        try:
            status, _, _ = web.call("api", "GET", "/after")
        except (ConnectionError, http.client.RemoteDisconnected):
            status = 0
        assert status != 200
        assert len(app.seen) == before, "nothing may reach the app once the SVID has expired"
        events = [e.get("event") for e in api.process.log_events()]
        assert "svid_expired" in events and "svid_renew_failed" in events


def _error_line(stderr: str) -> str:
    """The one-line error a failed command ends with (log lines may precede it, a traceback not)."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("trustmesh: error: "), stderr
    return last


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_new_roots_reach_a_running_sidecar(tmp_path: Path) -> None:
    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()
        api = mesh.start_sidecar("api", inbound_to=app.port)

        def anchors() -> int:
            return api.admin_get("/metrics")[1].count(b'kind="trust_anchor"')

        assert anchors() == 1
        # A root rotation publishes a second root; the control plane serves it after a restart.
        done = run_cli("ca", "rotate-root", "--state-dir", str(mesh.state_dir))
        assert done.returncode == 0, done.stderr
        mesh.cp.stop()
        mesh.cp.start()
        assert api.admin_get("/renew", method="POST")[0] == 202
        wait_until(lambda: anchors() == 2, 30, "second root in api's bundle", api.process)
        assert (api.data_dir / "bundle.pem").read_bytes().count(b"BEGIN CERTIFICATE") == 2
        assert api.ready()
