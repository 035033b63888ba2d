"""Fault: the state dir's disk is full. Clear errors, nothing corrupted, the last good state intact.

The state dir lives on its own 1 MiB tmpfs (mounted here as root, unmounted afterwards);
"full" is a filler file taking every free byte. What we decided, and check:
- CLI (`ca init`, `token create`): exit code non-zero, one line on stderr naming the cause
  (`No space left on device` / SQLite's `disk I/O error`), no traceback.
- Control plane (`POST /v1/join`): a JSON 5xx, the token left unused, so the same token
  joins once space is back.
- Afterwards: the CA and the SQLite database pass their checks and hold exactly what they
  held before the disk filled.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.sidecar_e2e.mesh import (
    LOOPBACK,
    START_TIMEOUT,
    Process,
    free_port,
    run_cli,
    trustmesh_command,
    wait_until,
)
from trustmesh.control.join_client import ControlPlaneError, join

pytestmark = pytest.mark.slow

TD = "example.org"


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of `size` at `path`, unmounted (by path) on the way out."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def full(disk: Path) -> Iterator[None]:
    """Fill `disk` to the last byte with one file; remove it on the way out."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 1):  # big blocks, then down to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("trustmesh: "), done.stderr
    return last


def state_of(state: Path) -> tuple[list[str], str]:
    """Token ids and the CA fingerprint, read through the CLI (what an operator would see)."""
    done = run_cli("token", "list", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    fingerprint = run_cli("ca", "fingerprint", "--state-dir", str(state))
    assert fingerprint.returncode == 0, fingerprint.stderr
    return sorted(done.stdout.strip().splitlines()[1:]), fingerprint.stdout.strip()


def integrity(state: Path) -> str:
    with contextlib.closing(sqlite3.connect(state / "trustmesh.db")) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def test_cli_on_a_full_disk_fails_in_one_line_and_keeps_the_last_good_state(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk") as disk:
        state = disk / "state"
        assert run_cli("ca", "init", "--trust-domain", TD, "--state-dir", str(state)).returncode == 0
        token = run_cli(
            "token", "create", "--state-dir", str(state), "--spiffe-id", f"spiffe://{TD}/a", "--service", "a"
        )
        assert token.returncode == 0, token.stderr
        before = state_of(state)
        with full(disk):
            refused = run_cli(
                "token",
                "create",
                "--state-dir",
                str(state),
                "--spiffe-id",
                f"spiffe://{TD}/b",
                "--service",
                "b",
            )
            line = one_line_error(refused)
            print(f"\ntoken create on a full disk: exit {refused.returncode}: {line}")
            assert refused.returncode == 1
            assert "disk" in line or "No space left" in line
            assert "internal error" not in line
            init = run_cli("ca", "init", "--trust-domain", TD, "--state-dir", str(disk / "second"))
            line = one_line_error(init)
            print(f"ca init on a full disk: exit {init.returncode}: {line}")
            assert init.returncode == 1
            assert "No space left on device" in line and "internal error" not in line
            # a failed init leaves nothing half-made behind: a retry is not refused as "already a CA"
            assert not (disk / "second" / "ca").exists()
        assert state_of(state) == before, "the full disk changed what was stored"
        assert integrity(state) == "ok"
        again = run_cli(
            "token", "create", "--state-dir", str(state), "--spiffe-id", f"spiffe://{TD}/b", "--service", "b"
        )
        assert again.returncode == 0, again.stderr


def test_control_plane_join_on_a_full_disk_is_a_json_5xx_and_the_token_stays_usable(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk") as disk:
        state = disk / "state"
        assert run_cli("ca", "init", "--trust-domain", TD, "--state-dir", str(state)).returncode == 0
        done = run_cli(
            "token", "create", "--state-dir", str(state), "--spiffe-id", f"spiffe://{TD}/a", "--service", "a"
        )
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        port = free_port()
        cp = Process(
            "control-plane",
            [
                *trustmesh_command(),
                "control-plane",
                "--state-dir",
                str(state),
                "--listen",
                f"{LOOPBACK}:{port}",
            ],
            tmp_path / "control-plane.log",
        )
        cp.start()
        try:
            wait_until(lambda: _healthy(port), START_TIMEOUT, "control plane up", cp)
            with full(disk):
                with pytest.raises(ControlPlaneError) as info:
                    trio.run(join, f"{LOOPBACK}:{port}", token)
                print(
                    f"\njoin on a full disk: HTTP {info.value.status} {info.value.error}: {info.value.detail}"
                )
                assert info.value.status == 503 and info.value.error == "store_unavailable"
                assert "full" in info.value.detail
                assert cp.alive()
            svid = trio.run(join, f"{LOOPBACK}:{port}", token)  # the token was not consumed
            assert svid.spiffe_id == f"spiffe://{TD}/a"
        finally:
            cp.stop()
        assert integrity(state) == "ok"
        events = [e.get("event") for e in cp.log_events()]
        assert "svid_granted" in events


def _healthy(port: int) -> bool:
    import http.client
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=2, context=ctx)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


if os.geteuid() != 0:  # pragma: no cover - CI and this sandbox run as root
    raise RuntimeError("tests/faults/test_state_dir_full.py mounts a tmpfs and must run as root")
