"""The CA-side commands as a user runs them: exit codes, one-line errors, file modes."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trustmesh.ca.join_token import JoinToken
from trustmesh.control.join_client import ControlPlaneClient, join
from trustmesh.identity import TrustBundle

TD = "example.org"
API = "spiffe://example.org/ns/default/sa/api"


def run(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)


def one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("trustmesh: error: "), result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def state(trustmesh_cmd: list[str], tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    result = run(trustmesh_cmd, "ca", "init", "--trust-domain", TD, "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    return state_dir


def test_ca_init_creates_private_files_and_refuses_twice(trustmesh_cmd: list[str], state: Path) -> None:
    paths = [state, *state.rglob("*")]
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.parent.name == "keys" or path.name == "trustmesh.db":
            assert mode == 0o600, path
    assert any(p.parent.name == "keys" for p in paths) and (state / "trustmesh.db").exists()
    again = run(trustmesh_cmd, "ca", "init", "--trust-domain", TD, "--state-dir", str(state))
    one_line_error(again, "already holds a CA")


def test_ca_init_accepts_go_durations_and_rejects_bad_ones(trustmesh_cmd: list[str], tmp_path: Path) -> None:
    ok = run(trustmesh_cmd, "ca", "init", "--trust-domain", TD, "--state-dir", str(tmp_path / "a"),
             "--root-ttl", "8760h", "--intermediate-ttl", "2d")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    bad = run(trustmesh_cmd, "ca", "init", "--trust-domain", TD, "--state-dir", str(tmp_path / "b"),
              "--root-ttl", "1year")  # fmt: skip
    one_line_error(bad, "--root-ttl")
    bad_td = run(
        trustmesh_cmd, "ca", "init", "--trust-domain", "Example.ORG", "--state-dir", str(tmp_path / "c")
    )
    one_line_error(bad_td, "")


def test_fingerprint_matches_bundle_root(trustmesh_cmd: list[str], state: Path) -> None:
    fp = run(trustmesh_cmd, "ca", "fingerprint", "--state-dir", str(state))
    assert fp.returncode == 0
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", fp.stdout)
    pem = run(trustmesh_cmd, "bundle", "--state-dir", str(state))
    spiffe = run(trustmesh_cmd, "bundle", "--state-dir", str(state), "--format", "spiffe")
    from_pem = TrustBundle.from_pem(TD, pem.stdout.encode())
    from_json = TrustBundle.from_spiffe_json(TD, spiffe.stdout)
    assert from_pem.x509_authorities == from_json.x509_authorities
    from trustmesh.ca import spki_fingerprint

    assert spki_fingerprint(from_pem.x509_authorities[0]) == fp.stdout.strip()


def test_token_create_prints_one_token_and_list_never_shows_the_secret(
    trustmesh_cmd: list[str], state: Path
) -> None:
    created = run(trustmesh_cmd, "token", "create", "--state-dir", str(state), "--spiffe-id", API,
                  "--service", "api", "--ttl", "5m")  # fmt: skip
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1
    token = JoinToken.parse(lines[0])
    fp = run(trustmesh_cmd, "ca", "fingerprint", "--state-dir", str(state)).stdout.strip()
    assert token.ca_fingerprint == fp
    listing = run(trustmesh_cmd, "token", "list", "--state-dir", str(state))
    assert listing.returncode == 0
    assert token.token_id in listing.stdout and API in listing.stdout and "unused" in listing.stdout
    assert token.secret not in listing.stdout + listing.stderr + created.stderr
    assert token.secret.encode() not in (state / "trustmesh.db").read_bytes()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--spiffe-id", "spiffe://example.org/api/", "--service", "api"], "--spiffe-id"),
        (["--spiffe-id", "spiffe://other.org/api", "--service", "api"], "trust domain"),
        (["--spiffe-id", "spiffe://example.org", "--service", "api"], "path"),
        (["--spiffe-id", API, "--service", "api", "--ttl", "10"], "--ttl"),
        (["--spiffe-id", API, "--service", " "], "--service"),
    ],
)
def test_token_create_bad_input_is_one_line(
    trustmesh_cmd: list[str], state: Path, args: list[str], needle: str
) -> None:
    one_line_error(run(trustmesh_cmd, "token", "create", "--state-dir", str(state), *args), needle)
    assert "unused" not in run(trustmesh_cmd, "token", "list", "--state-dir", str(state)).stdout


def test_commands_on_a_dir_without_ca_fail_in_one_line(trustmesh_cmd: list[str], tmp_path: Path) -> None:
    for args in (["ca", "fingerprint"], ["bundle"], ["token", "list"], ["control-plane"]):
        one_line_error(run(trustmesh_cmd, *args, "--state-dir", str(tmp_path / "none")), "ca init")


def test_rotate_root_adds_a_second_root_to_the_bundle(trustmesh_cmd: list[str], state: Path) -> None:
    before = run(trustmesh_cmd, "ca", "fingerprint", "--state-dir", str(state)).stdout
    rotated = run(trustmesh_cmd, "ca", "rotate-root", "--state-dir", str(state), "--overlap", "1h")
    assert rotated.returncode == 0, rotated.stderr
    pem = run(trustmesh_cmd, "bundle", "--state-dir", str(state)).stdout
    assert pem.count("BEGIN CERTIFICATE") == 2
    # The old root still signs until the overlap has passed.
    assert run(trustmesh_cmd, "ca", "fingerprint", "--state-dir", str(state)).stdout == before
    again = run(trustmesh_cmd, "ca", "rotate-root", "--state-dir", str(state))
    one_line_error(again, "already in progress")


@pytest.fixture
def control_plane(trustmesh_cmd: list[str], state: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [*trustmesh_cmd, "control-plane", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        address = ""
        assert proc.stderr is not None
        for _ in range(200):  # bounded: the ready line comes within the first few lines
            line = proc.stderr.readline()
            if not line:
                break
            if '"control_plane_ready"' in line:
                address = json.loads(line)["listen"]
                break
        assert address, "control plane never logged control_plane_ready"
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def test_control_plane_subprocess_serves_join_and_renew_then_stops_on_sigterm(
    trustmesh_cmd: list[str], state: Path, control_plane: tuple[subprocess.Popen[str], str]
) -> None:
    proc, address = control_plane
    token = run(trustmesh_cmd, "token", "create", "--state-dir", str(state), "--spiffe-id", API,
                "--service", "api").stdout.strip()  # fmt: skip

    async def client() -> tuple[str, str]:
        svid = await join(address, token)
        async with ControlPlaneClient(address, svid) as cp:
            renewed = await cp.renew()
        return svid.serial, renewed.spiffe_id

    serial, renewed_id = trio.run(client)
    assert renewed_id == API
    listing = run(trustmesh_cmd, "token", "list", "--state-dir", str(state)).stdout
    assert f"used by serial {serial}" in listing

    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_control_plane_refuses_a_bad_listen_address(trustmesh_cmd: list[str], state: Path) -> None:
    one_line_error(
        run(trustmesh_cmd, "control-plane", "--state-dir", str(state), "--listen", "nope"), "host:port"
    )


def test_demo_runs_the_mesh_and_stops_everything_it_started(trustmesh_cmd: list[str], tmp_path: Path) -> None:
    """`trustmesh demo --duration` brings up the mesh, shows allowed and denied traffic, exits 0."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gui_port = s.getsockname()[1]
    result = subprocess.run(
        [
            *trustmesh_cmd,
            "demo",
            "--duration",
            "3s",
            "--gui-port",
            str(gui_port),
            "--workdir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for service in ("web", "api", "db"):
        assert f"joined as spiffe://demo.trustmesh.local/ns/demo/sa/{service}" in out
    assert f"GUI on http://127.0.0.1:{gui_port}" in out
    match = re.search(r"traffic flowing: (\d+) allowed, (\d+) denied", out)
    assert match and int(match.group(1)) > 0 and int(match.group(2)) > 0, out
    assert re.search(r"web → db: 0 allowed, [1-9]\d* denied", out), out
    assert "stopped 7 processes cleanly" in out
    for pid in re.findall(r"pid (\d+)", out):
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"demo left pid {pid} running")
