"""`trustmesh demo`: the whole identity flow on one machine, in a temporary directory.

Issue 2's version: create a CA, start the control plane as a real subprocess on a free
loopback port, create a join token, join one workload (key and CSR made here, CA pinned
from the token) and print its SVID, then stop the control plane by PID. Later issues add
sidecars and traffic as further steps: each step is one function in `STEPS`, run in
order against a shared `DemoRun`, and cleanup always runs.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import trio
from cryptography.hazmat.primitives import serialization

from trustmesh.ca import CertificateAuthority
from trustmesh.cli._common import duration_flag, quiet_logging
from trustmesh.cli.errors import CliError
from trustmesh.clock import SystemClock
from trustmesh.control.issuer import Issuer, rfc3339
from trustmesh.control.join_client import ControlPlaneError, Svid, join
from trustmesh.identity import SpiffeId
from trustmesh.store import open_store

TRUST_DOMAIN = "demo.trustmesh.local"
WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/api"
# Generous: on a loaded 2-core box the control plane needs a second or two to start.
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass
class DemoRun:
    """What the steps share: where things live, what runs, what was issued."""

    workdir: Path
    duration: timedelta
    out: Callable[[str], None]
    control_plane: trio.Process | None = None
    control_plane_log: list[str] = field(default_factory=list)
    address: str = ""
    token: str = ""
    svid: Svid | None = None

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"


async def step_ca_init(run: DemoRun) -> None:
    ca = CertificateAuthority.init(run.state_dir, TRUST_DOMAIN, clock=SystemClock())
    run.out(f"[1] CA for {TRUST_DOMAIN} created in {run.state_dir} (fingerprint {ca.fingerprint()})")


async def step_start_control_plane(run: DemoRun, nursery: trio.Nursery) -> None:
    cmd = [
        sys.executable, "-m", "trustmesh.cli.main", "control-plane",
        "--state-dir", str(run.state_dir), "--listen", "127.0.0.1:0",
    ]  # fmt: skip
    proc = await trio.lowlevel.open_process(cmd, stdout=None, stderr=subprocess.PIPE)
    run.control_plane = proc
    ready = trio.Event()
    nursery.start_soon(_drain_log, run, proc, ready)
    with trio.move_on_after(STARTUP_TIMEOUT_S):
        await ready.wait()
    if not ready.is_set():
        tail = "\n".join(run.control_plane_log[-5:])
        raise CliError(
            f"control plane did not become ready within {STARTUP_TIMEOUT_S:.0f}s; last log lines:\n{tail}"
        )
    run.out(f"[2] control plane pid {proc.pid} serving https://{run.address}")


async def _drain_log(run: DemoRun, proc: trio.Process, ready: trio.Event) -> None:
    """Read the control plane's JSON log lines (so its pipe never fills) and spot readiness."""
    assert proc.stderr is not None
    buffer = b""
    async for chunk in proc.stderr:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            run.control_plane_log.append(line)
            if not ready.is_set() and '"control_plane_ready"' in line:
                run.address = json.loads(line)["listen"]
                ready.set()


async def step_create_token(run: DemoRun) -> None:
    ca = CertificateAuthority.load(run.state_dir, clock=SystemClock())
    store = await open_store(run.state_dir)
    try:
        token = await Issuer(ca, store, SystemClock()).create_token(SpiffeId.parse(WORKLOAD_ID), "api")
    finally:
        await store.aclose()
    run.token = str(token)
    run.out(f"[3] join token {token.token_id} for {WORKLOAD_ID} (single use, 10m)")


async def step_join(run: DemoRun) -> None:
    try:
        run.svid = await join(run.address, run.token)
    except ControlPlaneError as exc:
        raise CliError(f"join failed: {exc}") from exc
    svid = run.svid
    run.out("[4] workload joined; its X.509-SVID:")
    run.out(f"    spiffe_id:  {svid.spiffe_id}")
    run.out(f"    serial:     {svid.serial}")
    run.out(f"    expires_at: {rfc3339(svid.expires_at)}")
    run.out(svid.leaf.public_bytes(serialization.Encoding.PEM).decode().rstrip())


async def step_hold(run: DemoRun) -> None:
    if run.duration > timedelta(0):
        run.out(f"[5] running for {run.duration.total_seconds():.0f}s")
        await trio.sleep(run.duration.total_seconds())


async def stop_control_plane(run: DemoRun) -> None:
    proc = run.control_plane
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_TIMEOUT_S):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
        raise CliError(f"control plane pid {proc.pid} ignored SIGTERM and was killed")
    if proc.returncode != 0:
        raise CliError(f"control plane pid {proc.pid} exited with {proc.returncode}")
    run.out(f"[done] control plane pid {proc.pid} stopped cleanly")


Step = Callable[[DemoRun], Awaitable[None]]
STEPS: tuple[Step, ...] = (step_create_token, step_join, step_hold)


async def run_demo(run: DemoRun) -> None:
    await step_ca_init(run)
    async with trio.open_nursery() as nursery:
        try:
            await step_start_control_plane(run, nursery)
            for step in STEPS:
                await step(run)
        finally:
            with trio.CancelScope(shield=True):
                await stop_control_plane(run)
            nursery.cancel_scope.cancel()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="run a temporary CA and control plane, join one workload")
    parser.add_argument("--duration", default="0s", help="keep the demo running this long before stopping")
    parser.add_argument(
        "--workdir", type=Path, help="use this (new or empty) directory instead of a temp dir"
    )
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    quiet_logging()
    duration = timedelta(0) if args.duration in ("0", "0s") else duration_flag(args.duration, "--duration")

    def out(line: str) -> None:
        print(line, flush=True)

    if args.workdir is not None:
        args.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        trio.run(run_demo, DemoRun(args.workdir, duration, out))
        return 0
    with tempfile.TemporaryDirectory(prefix="trustmesh-demo-") as tmp:
        trio.run(run_demo, DemoRun(Path(tmp), duration, out))
    return 0
