"""The GUI's JSON and HTML over HTTP (no browser): what the pages are rendered from, the OTLP
receiver on the GUI listener, the Host check, and the `--gui` flags of the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from trustmesh.ca import CertificateAuthority
from trustmesh.control.gui.listener import GuiListener, RemoteGuiRefused
from trustmesh.control.gui.seeded import SeededMesh, spiffe_id
from trustmesh.loopback_ports import free_port

TRUSTMESH = [str(Path(sys.executable).parent / "trustmesh")]


async def test_json_endpoints_share_the_pages_data(mesh: SeededMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.gui_url, timeout=10) as http:
        topo = (await http.get("/api/topology")).json()
        edges = {(e["source"], e["destination"]): e for e in topo["edges"]}
        assert edges[("web", "db")]["state"] == "denied"
        assert edges[("web", "api")]["denied"] == 6  # every fifth of 30 rounds POSTs
        assert edges[("api", "db")]["success_rate"] == 1.0

        workloads = (await http.get("/api/workloads")).json()["workloads"]
        by_id = {w["spiffe_id"]: w for w in workloads}
        assert by_id[spiffe_id("web")]["serial"] == mesh.svids["web"].serial
        assert by_id[spiffe_id("web")]["service"] == "web"
        assert by_id[spiffe_id("web")]["endpoints"] == []  # until the stream's registry exists
        assert by_id[spiffe_id("report")]["expires_in_s"] < 60

        policy = (await http.get("/api/policy")).json()
        assert policy["active"]["revision"] == mesh.revision
        assert policy["last_refused"]["problems"][0]["file"] == "report.yaml"
        denied = [d for d in policy["decisions"] if d["decision"] == "DENY" and d["method"] == "POST"]
        assert denied and denied[0]["policy"] == "api-is-read-only"
        assert denied[0]["rule_from"] == "active-revision"

        query = {"source": "web", "destination": "db", "method": "GET", "path": "/rows"}
        explain = await http.get("/api/policy/explain", params=query)
        assert explain.json()["decision"] == "DENY" and explain.json()["reason"] == "default-deny"
        bad = await http.get("/api/policy/explain", params={**query, "destination": ""})
        assert bad.status_code == 400 and "destination is required" in bad.json()["detail"]

        traces = (await http.get("/api/traces", params={"limit": "500"})).json()
        assert len(traces) == 30 + 10 + 6
        full = next(t for t in traces if t["root_name"] == "web: GET api")
        spans = (await http.get(f"/api/traces/{full['trace_id']}")).json()
        assert {s["service_name"] for s in spans} == {"web", "api", "db"}

        # Pages and fragments render, with the security headers.
        for path in (
            "/topology",
            "/workloads",
            "/policy",
            "/traces",
            f"/traces/{full['trace_id']}",
            "/fragments/topology",
            "/fragments/workloads",
            "/fragments/policy/decisions",
        ):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert "server" not in response.headers, path  # no software banner
        assert (await http.get("/")).headers["location"] == "/topology"
        assert (await http.get("/traces/not-a-trace")).status_code == 404
        assert (await http.get("/static/htmx.min.js")).status_code == 200


async def test_dns_rebinding_is_refused_on_loopback(mesh: SeededMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.gui_url, timeout=10) as http:
        assert (await http.get("/api/topology", headers={"host": "attacker.example:8080"})).status_code == 400
        assert (await http.get("/api/topology", headers={"host": "localhost:8080"})).status_code == 200


async def test_otlp_receiver_on_the_gui_listener_rejects_garbage(mesh: SeededMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.gui_url, timeout=10) as http:
        r = await http.post(
            "/v1/traces", content=b"\xff\x00garbage", headers={"content-type": "application/x-protobuf"}
        )
        assert r.status_code == 400
        assert (await http.post("/v1/traces", json={})).status_code == 415


def test_non_loopback_needs_explicit_opt_in() -> None:
    with pytest.raises(RemoteGuiRefused, match="--gui-allow-remote"):
        GuiListener("0.0.0.0", 8080)
    with pytest.raises(RemoteGuiRefused):
        GuiListener("gui.example.org", 8080)
    assert GuiListener("0.0.0.0", 8080, allow_remote=True).allowed_hosts() == ["*"]
    assert "localhost" in GuiListener("::1", 0).allowed_hosts()


def test_cli_refuses_a_remote_gui_without_the_flag(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path / "state", "example.org")
    result = subprocess.run(
        [*TRUSTMESH, "control-plane", "--state-dir", str(tmp_path / "state"), "--gui", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--gui-allow-remote" in result.stderr


async def test_cli_serves_the_gui(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path / "state", "example.org")
    port = free_port()
    proc = subprocess.Popen(
        [
            *TRUSTMESH,
            "control-plane",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            "127.0.0.1:0",
            "--gui",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    await trio.sleep(0.2)
            page = await http.get("/workloads")
            assert page.status_code == 200 and "No SVIDs issued yet" in page.text
            policy = (await http.get("/api/policy")).json()
            assert policy["active"] is None  # no --policy-git: the page says default deny
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    assert proc.returncode == 0
