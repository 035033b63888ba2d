"""`trustmesh demo`: the whole mesh on one machine, on loopback, with nothing to install.

What it brings up, in order (each step prints one line as it completes):
1. a CA for the trust domain `demo.trustmesh.local`, in a fresh temporary state dir;
2. a git repository of policies whose first commit allows web → api (GET) and api → db
   (GET) and says nothing about web → db, so those calls are denied (default deny);
3. the control plane (subprocess), following that repository, with the web GUI and its
   OTLP trace receiver;
4. one sidecar per service (subprocesses), each joined with its own single-use token;
5. three small services, web, api and db (`trustmesh.cli.demo_app`), calling each other
   on a timer through their sidecars: web → api, web → db, api → db;
6. traffic, allowed and denied, and a summary: what runs where, the counts so far, the
   GUI's address, how to send traces to Jaeger instead.

It runs until Ctrl-C (or `--duration`), then stops every process it started by PID:
sidecars first (they drain), then the apps, then the control plane. Nothing is left
behind, so a second `make demo` needs no cleanup; each run uses its own directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import trio

from trustmesh.ca import CertificateAuthority
from trustmesh.cli._common import duration_flag, quiet_logging
from trustmesh.cli.errors import CliError
from trustmesh.clock import SystemClock
from trustmesh.control.issuer import Issuer
from trustmesh.identity import SpiffeId
from trustmesh.loopback_ports import free_port, free_ports
from trustmesh.store import open_store

TRUST_DOMAIN = "demo.trustmesh.local"
LOOPBACK = "127.0.0.1"
DEFAULT_GUI_PORT = 8080
# Generous: on a loaded 2-core machine Python processes need a few seconds to start.
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 25.0  # a sidecar drains for up to 15 s by default
PROGRESS_EVERY_S = 10.0
CALL_EVERY = "500ms"


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/{service}"


# Who calls whom, and on which path. web → db has no ALLOW: those calls are denied.
CALLS: dict[str, list[tuple[str, str]]] = {
    "web": [("api", "items"), ("db", "rows")],
    "api": [("db", "rows")],
    "db": [],
}

FIRST_POLICY = f"""\
# The demo's first policy commit. web may read api, api may read db; nothing says
# web may call db, so those calls are denied (zero trust: default deny).
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
---
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: api-reads-db
spec:
  selector:
    spiffeIds: ["{spiffe_id("db")}"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["{spiffe_id("api")}"]
      to:
        methods: ["GET"]
"""


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    """One process the demo started, with its log file; stopped by PID."""

    name: str
    process: trio.Process
    log_path: Path

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Service:
    name: str
    app_port: int
    inbound_port: int
    admin_port: int
    outbound_ports: dict[str, int] = field(default_factory=dict)


@dataclass
class DemoRun:
    """What the steps share: where things live, what runs."""

    workdir: Path
    duration: timedelta
    out: Callable[[str], None]
    gui_port: int = DEFAULT_GUI_PORT
    control_plane_address: str = ""
    children: list[Child] = field(default_factory=list)
    services: dict[str, Service] = field(default_factory=dict)
    policy_commit: str = ""

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def gui_url(self) -> str:
        return f"http://{LOOPBACK}:{self.gui_port}"


async def _start(run: DemoRun, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
    run.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = run.logs / f"{name}.log"
    with open(log_path, "ab") as log_file:
        process = await trio.lowlevel.open_process(
            list(argv), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    child = Child(name, process, log_path)
    run.children.append(child)
    return child


def _trustmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "trustmesh.cli.main", *args]


async def _wait_for(child: Child, check: Callable[[], Any], what: str) -> Any:
    """Poll `check` until it returns a truthy value; fail with the child's log if it dies or times out."""
    with trio.move_on_after(STARTUP_TIMEOUT_S):
        while True:
            if child.process.returncode is not None:
                raise CliError(f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}")
            result = await check()
            if result:
                return result
            await trio.sleep(0.1)
    raise CliError(f"{child.name}: {what} within {STARTUP_TIMEOUT_S:.0f}s; log:\n{child.log_tail()}")


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CliError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


# ---------------------------------------------------------------- the steps


async def step_ca(run: DemoRun) -> None:
    ca = CertificateAuthority.init(run.state_dir, TRUST_DOMAIN, clock=SystemClock())
    run.out(f"[1/6] CA for {TRUST_DOMAIN} (root fingerprint {ca.fingerprint()})")


async def step_policy_repo(run: DemoRun) -> None:
    repo = run.workdir / "policies"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "demo@trustmesh.local")
    _git(repo, "config", "user.name", "trustmesh demo")
    (repo / "mesh.yaml").write_text(FIRST_POLICY)
    _git(repo, "add", "mesh.yaml")
    _git(repo, "commit", "-q", "-m", "web reads api, api reads db; nothing for web -> db")
    run.policy_commit = _git(repo, "rev-parse", "--short", "HEAD")
    run.out(
        f"[2/6] policy repository {repo} at {run.policy_commit}: "
        "web → api and api → db allowed (GET); web → db not allowed, so denied"
    )


async def step_control_plane(run: DemoRun) -> None:
    if not port_is_free(run.gui_port):
        taken, run.gui_port = run.gui_port, free_port()
        run.out(f"      (port {taken} is taken; the GUI uses {run.gui_port} instead)")
    child = await _start(
        run,
        "control-plane",
        _trustmesh(
            "control-plane",
            "--state-dir", str(run.state_dir),
            "--listen", f"{LOOPBACK}:0",
            "--policy-git", str(run.workdir / "policies"),
            "--policy-poll", "2s",
            "--gui", f"{LOOPBACK}:{run.gui_port}",
        ),
    )  # fmt: skip

    async def ready() -> str | None:
        for line in child.log_path.read_text(errors="replace").splitlines():
            if '"control_plane_ready"' in line:
                return str(json.loads(line)["listen"])
        return None

    run.control_plane_address = await _wait_for(child, ready, "not ready")
    run.out(
        f"[3/6] control plane pid {child.process.pid} on https://{run.control_plane_address}, "
        f"GUI on {run.gui_url}"
    )


def plan_ports(run: DemoRun) -> None:
    ports = iter(free_ports(sum(3 + len(calls) for calls in CALLS.values())))
    for name, calls in CALLS.items():
        service = Service(name, next(ports), next(ports), next(ports))
        for target, _ in calls:
            service.outbound_ports[target] = next(ports)
        run.services[name] = service


async def step_apps(run: DemoRun) -> None:
    # Started after their sidecars are ready, so their first calls already cross the mesh.
    for name, calls in CALLS.items():
        service = run.services[name]
        argv = [
            sys.executable, "-m", "trustmesh.cli.demo_app",
            "--name", name, "--listen", f"{LOOPBACK}:{service.app_port}", "--every", CALL_EVERY,
        ]  # fmt: skip
        for target, path in calls:
            argv += ["--call", f"{target}={LOOPBACK}:{service.outbound_ports[target]}/{path}"]
        await _start(run, f"app-{name}", argv)
    run.out("[5/6] apps " + ", ".join(f"{n} (:{s.app_port})" for n, s in run.services.items()) + " started")


async def step_sidecars(run: DemoRun) -> None:
    plan_ports(run)
    ca = CertificateAuthority.load(run.state_dir, clock=SystemClock())
    store = await open_store(run.state_dir)
    try:
        issuer = Issuer(ca, store, SystemClock())
        tokens = {
            name: str(await issuer.create_token(SpiffeId.parse(spiffe_id(name)), name))
            for name in run.services
        }
    finally:
        await store.aclose()
    env = dict(os.environ)
    # Sidecars send their spans to the control plane's GUI receiver (same wire format as Jaeger's).
    env.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", run.gui_url)
    children: dict[str, Child] = {}
    for name, service in run.services.items():
        argv = _trustmesh(
            "sidecar",
            "--control-plane", f"https://{run.control_plane_address}",
            "--join-token", tokens[name],
            "--inbound", f"{LOOPBACK}:{service.inbound_port}={LOOPBACK}:{service.app_port}",
            "--admin", f"{LOOPBACK}:{service.admin_port}",
            "--data-dir", str(run.workdir / "sidecars" / name),
            "--log-level", "warning",
        )  # fmt: skip
        for target, port in service.outbound_ports.items():
            # No --endpoints: each sidecar learns where the others are from the control plane.
            argv += ["--outbound", f"{target}={LOOPBACK}:{port}"]
        children[name] = await _start(run, f"sidecar-{name}", argv, env)
    async with httpx.AsyncClient(timeout=2.0) as client:
        for name, child in children.items():
            admin = f"http://{LOOPBACK}:{run.services[name].admin_port}"

            async def ready(admin: str = admin) -> dict[str, Any] | None:
                try:
                    if (await client.get(f"{admin}/ready")).status_code != 200:
                        return None
                    svid: dict[str, Any] = (await client.get(f"{admin}/svid")).json()
                    return svid
                except httpx.HTTPError:
                    return None

            svid = await _wait_for(child, ready, "not ready")
            run.out(
                f"[4/6] sidecar {name} pid {child.process.pid} joined as {svid['spiffe_id']} "
                f"(SVID serial {svid['serial']}, expires {svid['not_after']})"
            )


async def _counts(run: DemoRun) -> dict[tuple[str, str], dict[str, int]]:
    """Answers each app has seen per target, from the apps' own /stats."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    async with httpx.AsyncClient(timeout=2.0) as client:
        for name, service in run.services.items():
            try:
                stats = (await client.get(f"http://{LOOPBACK}:{service.app_port}/stats")).json()
            except (httpx.HTTPError, ValueError):
                continue
            for target, by_kind in stats.get("calls", {}).items():
                counts[(name, target)] = {k: int(v) for k, v in by_kind.items()}
    return counts


def _totals(counts: dict[tuple[str, str], dict[str, int]]) -> tuple[int, int, int]:
    allowed = sum(c.get("allowed", 0) for c in counts.values())
    denied = sum(c.get("denied", 0) for c in counts.values())
    errors = sum(c.get("errors", 0) for c in counts.values())
    return allowed, denied, errors


async def step_summary(run: DemoRun) -> None:
    # Let a few rounds of calls happen so the summary has something to say.
    with trio.move_on_after(STARTUP_TIMEOUT_S):
        while True:
            allowed, denied, _ = _totals(await _counts(run))
            if allowed > 0 and denied > 0:
                break
            await trio.sleep(0.5)
    counts = await _counts(run)
    allowed, denied, errors = _totals(counts)
    run.out(f"[6/6] traffic flowing: {allowed} allowed, {denied} denied, {errors} errors so far")
    run.out("")
    run.out("  what runs where")
    run.out(f"    control plane   https://{run.control_plane_address}   GUI {run.gui_url}")
    for name, service in run.services.items():
        calls = ", ".join(f"{t} via :{p}" for t, p in service.outbound_ports.items()) or "nothing"
        run.out(
            f"    {name:<4} app :{service.app_port}  sidecar in :{service.inbound_port}  "
            f"admin :{service.admin_port}  calls {calls}"
        )
    run.out("  calls so far")
    for (caller, target), c in sorted(counts.items()):
        run.out(
            f"    {caller} → {target}: {c.get('allowed', 0)} allowed, {c.get('denied', 0)} denied, "
            f"{c.get('errors', 0)} errors"
        )
    run.out(f"  open {run.gui_url} for the topology, workloads, policy decisions and traces")
    run.out(
        "  to use Jaeger instead: run it with OTLP on :4318 (docs/observability.md) and start "
        "sidecars with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318"
    )
    run.out(f"  logs: {run.logs}")


async def step_hold(run: DemoRun) -> None:
    if run.duration > timedelta(0):
        run.out(f"running for {run.duration.total_seconds():.0f}s (Ctrl-C stops earlier)")
    else:
        run.out("running until Ctrl-C")
    with trio.move_on_after(run.duration.total_seconds() if run.duration > timedelta(0) else float("inf")):
        while True:
            await trio.sleep(PROGRESS_EVERY_S)
            for child in run.children:
                if child.process.returncode is not None:
                    code = child.process.returncode
                    raise CliError(f"{child.name} exited with {code}:\n{child.log_tail()}")
            allowed, denied, errors = _totals(await _counts(run))
            run.out(f"  … {allowed} allowed, {denied} denied, {errors} errors")


async def stop_all(run: DemoRun) -> list[str]:
    """Stop every child by PID, sidecars first (so they drain), then apps, then the control plane."""
    problems: list[str] = []

    def order(child: Child) -> int:
        return 0 if child.name.startswith("sidecar") else 1 if child.name.startswith("app") else 2

    for group in (0, 1, 2):
        members = [c for c in run.children if order(c) == group and c.process.returncode is None]
        for child in members:
            child.process.send_signal(signal.SIGTERM)
        for child in members:
            with trio.move_on_after(STOP_TIMEOUT_S):
                await child.process.wait()
            if child.process.returncode is None:
                child.process.kill()
                await child.process.wait()
                problems.append(f"{child.name} pid {child.process.pid} ignored SIGTERM and was killed")
            elif child.process.returncode != 0:
                code = child.process.returncode
                problems.append(f"{child.name} pid {child.process.pid} exited with {code}")
    return problems


STEPS = (step_ca, step_policy_repo, step_control_plane, step_sidecars, step_apps, step_summary, step_hold)


async def run_demo(run: DemoRun) -> None:
    failure: BaseException | None = None
    try:
        # Ctrl-C (SIGINT) or SIGTERM is how a user ends the demo: stop the steps, then every
        # process, and exit 0 if they all stopped cleanly.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for signum in signals:
                        run.out(f"{signal.Signals(signum).name}: stopping")
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch)
                for step in STEPS:
                    await step(run)
                nursery.cancel_scope.cancel()
    except BaseException as exc:  # stop everything we started, whatever happened, then re-raise
        failure = exc
        raise
    finally:
        with trio.CancelScope(shield=True):
            problems = await stop_all(run)
        if failure is None and problems:
            raise CliError("; ".join(problems))
        if failure is None:
            run.out(f"stopped {len(run.children)} processes cleanly")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a whole mesh on loopback: CA, control plane, GUI, three services and their sidecars"
    )
    parser.add_argument("--duration", default="0s", help="stop by itself after this long (default: Ctrl-C)")
    parser.add_argument(
        "--workdir", type=Path, help="use this (new or empty) directory instead of a temp dir"
    )
    parser.add_argument(
        "--gui-port", type=int, default=DEFAULT_GUI_PORT, help=f"GUI port (default {DEFAULT_GUI_PORT})"
    )
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    quiet_logging()
    duration = timedelta(0) if args.duration in ("0", "0s") else duration_flag(args.duration, "--duration")

    def out(line: str) -> None:
        print(line, flush=True)

    def go(workdir: Path) -> None:
        out(f"trustmesh demo: trust domain {TRUST_DOMAIN}, working in {workdir}")
        trio.run(run_demo, DemoRun(workdir, duration, out, gui_port=args.gui_port))

    if args.workdir is not None:
        args.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if any(args.workdir.iterdir()):
            raise CliError(f"--workdir {args.workdir} is not empty")
        go(args.workdir)
        return 0
    with tempfile.TemporaryDirectory(prefix="trustmesh-demo-") as tmp:
        go(Path(tmp))
    return 0
