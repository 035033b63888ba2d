"""Configuration-stream propagation: 500 sidecars on one control plane, policy commit to last ack.

What runs where:
- one control plane, a subprocess (`trustmesh control-plane --policy-git REPO`), following a
  temporary git repository every `POLICY_POLL` (the poll is part of the figure: a commit is
  seen up to one poll later);
- N lightweight stream clients in this process: real websockets over mutual TLS, each with
  its own SVID (issued once, in process, from the same CA, to save start-up time), each
  registering a service with an address and calling another service, and acknowledging
  every version it receives, as a sidecar does. They do not compile policy (a real sidecar
  compiles in a worker thread after acking is not delayed by it in this measure).

Per commit: t0 just after `git commit` returns; each client's latency is the moment it
sends the ack of the first message carrying the new revision. The issue's figure is the
time to the *last* ack, per commit, p50 and p99 over the commits; the distribution of all
acks is shown too. RSS is the control plane's (VmRSS, and VmHWM as its peak).

Run: `python -m bench.stream_bench [--quick]` (or `make bench`, which includes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, connect_websocket_url

from bench.procs import Processes, rss_kib
from trustmesh.ca import CertificateAuthority
from trustmesh.clock import SystemClock
from trustmesh.control import stream_protocol as sp
from trustmesh.control.join_client import Svid, client_context, new_key_and_csr
from trustmesh.identity import SpiffeId
from trustmesh.store import Registration, SqliteStore
from trustmesh.tracing.logs import configure_logging

TD = "bench.example"
SIDECARS = 500
SERVICES = 50
COMMITS = 5
POLICY_POLL = "100ms"
# Handshakes in flight at once while connecting (a thundering herd of 500 TLS handshakes
# on two cores would only measure the herd).
CONNECT_CONCURRENCY = 32
TARGET_P99_S = 1.0
TARGET_RSS_MB = 300

POLICY = """\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: svc-{n}
spec:
  selector:
    spiffeIds: ["spiffe://bench.example/ns/bench/sa/svc-{n}"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["spiffe://bench.example/ns/bench/*"]
      to:
        methods: {methods}
"""


def _say(message: str) -> None:
    print(f"[stream_bench] {message}", file=sys.stderr, flush=True)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _policy_text(round_: int) -> str:
    methods = '["GET"]' if round_ % 2 == 0 else '["GET", "HEAD"]'
    return "---\n".join(POLICY.format(n=i, methods=methods) for i in range(SERVICES))


def _commit(repo: Path, round_: int) -> str:
    (repo / "policy.yaml").write_text(_policy_text(round_) + f"# round {round_}\n")
    _git(repo, "add", "policy.yaml")
    _git(repo, "commit", "-q", "-m", f"round {round_}")
    return _git(repo, "rev-parse", "HEAD")


def _spiffe_id(service: int) -> str:
    return f"spiffe://{TD}/ns/bench/sa/svc-{service}"


def issue_svids(ca: CertificateAuthority, n: int) -> list[Svid]:
    bundle = ca.bundle().to_pem()
    svids = []
    for i in range(n):
        key, csr = new_key_and_csr()
        sid = _spiffe_id(i % SERVICES)
        issued = ca.sign_x509_svid(csr, SpiffeId.parse(sid))
        svids.append(Svid(sid, issued.chain_pem(), key, bundle, issued.not_after))
    return svids


async def _register_services(state: Path) -> None:
    store = await SqliteStore.open(state / "trustmesh.db")
    try:
        now = datetime.now(UTC)
        for i in range(SERVICES):
            await store.put_registration(Registration(f"svc-{i}", _spiffe_id(i), now))
    finally:
        await store.aclose()


@dataclass
class Client:
    index: int
    svid: Svid
    snapshot_at: float | None = None
    # revision -> perf_counter when its ack was sent
    acked: dict[str, float] = field(default_factory=dict)
    failures: int = 0


@dataclass
class Fleet:
    url: str
    clients: list[Client]
    changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def run_client(self, client: Client, limiter: trio.CapacityLimiter) -> None:
        i = client.index
        register = sp.Register(
            client.svid.spiffe_id,
            (f"127.0.0.1:{20000 + i}",),
            (f"svc-{(i + 1) % SERVICES}",),
            f"svc-{i % SERVICES}",
        )
        ctx = client_context(client.svid.bundle_pem, client.svid)
        for _attempt in range(5):
            try:
                async with trio.open_nursery() as own:
                    async with limiter:
                        ws = await connect_websocket_url(
                            own, self.url, ssl_context=ctx, message_queue_size=64
                        )
                    try:
                        await self._serve(client, ws, register)
                    finally:
                        own.cancel_scope.cancel()
            except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
                client.failures += 1
                await trio.sleep(0.5)

    async def _serve(self, client: Client, ws: WebSocketConnection, register: sp.Register) -> None:
        """What a sidecar does on its stream, minus applying: answer heartbeats, ack every version."""
        await ws.send_message(sp.encode(register))
        heartbeat = sp.encode(sp.Heartbeat())
        while True:
            message = sp.decode(await ws.get_message())
            if isinstance(message, sp.Heartbeat):
                await ws.send_message(heartbeat)
                continue
            if not isinstance(message, sp.Snapshot | sp.Update):
                continue
            await ws.send_message(sp.encode(sp.Ack(message.version)))
            now = time.perf_counter()
            if isinstance(message, sp.Snapshot) and client.snapshot_at is None:
                client.snapshot_at = now
                self.notify()
            if message.policy is not None:
                client.acked.setdefault(message.policy.revision, now)
                self.notify()

    async def wait(self, predicate: object, timeout: float) -> bool:
        assert callable(predicate)
        with trio.move_on_after(timeout):
            while not predicate():
                await self.changed.wait()
            return True
        return False


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Result:
    sidecars: int
    commits: int
    connect_s: float
    last_ack_s: list[float]
    first_ack_s: list[float]
    all_acks_s: list[float]
    rss_idle_kib: int
    rss_after_kib: int
    hwm_kib: int
    failures: int


async def _measure(url: str, svids: list[Svid], repo: Path, commits: int, pid: int) -> Result:
    fleet = Fleet(url, [Client(i, s) for i, s in enumerate(svids)])
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        for client in fleet.clients:
            nursery.start_soon(fleet.run_client, client, limiter)
        ok = await fleet.wait(lambda: all(c.snapshot_at is not None for c in fleet.clients), 300)
        if not ok:
            done = sum(c.snapshot_at is not None for c in fleet.clients)
            raise RuntimeError(f"only {done} of {len(svids)} sidecars got a snapshot within 300 s")
        connect_s = time.perf_counter() - t0
        _say(f"{len(svids)} sidecars connected and synced in {connect_s:.1f} s")
        await trio.sleep(3)  # let the endpoint updates of the registrations settle
        rss_idle = rss_kib(pid) or 0
        last_acks: list[float] = []
        first_acks: list[float] = []
        all_acks: list[float] = []
        for round_ in range(1, commits + 1):
            revision = await trio.to_thread.run_sync(_commit, repo, round_)
            committed = time.perf_counter()
            ok = await fleet.wait(lambda rev=revision: all(rev in c.acked for c in fleet.clients), 60)
            if not ok:
                missing = sum(revision not in c.acked for c in fleet.clients)
                raise RuntimeError(f"commit {round_}: {missing} sidecars never acked revision {revision}")
            latencies = [c.acked[revision] - committed for c in fleet.clients]
            last_acks.append(max(latencies))
            all_acks.extend(latencies)
            first_acks.append(min(latencies))
            _say(f"commit {round_}: first ack after {min(latencies) * 1000:.0f} ms, last after "
                 f"{max(latencies) * 1000:.0f} ms")
            await trio.sleep(0.5)
        rss_after = rss_kib(pid) or 0
        hwm = rss_kib(pid, "VmHWM") or 0
        failures = sum(c.failures for c in fleet.clients)
        nursery.cancel_scope.cancel()
    return Result(
        len(svids), commits, connect_s, last_acks, first_acks, all_acks, rss_idle, rss_after, hwm, failures
    )


def run(quick: bool) -> Result:
    sidecars = 100 if quick else SIDECARS
    commits = 2 if quick else COMMITS
    with tempfile.TemporaryDirectory(prefix="trustmesh-stream-bench-") as tmp:
        base = Path(tmp)
        state = base / "state"
        ca = CertificateAuthority.init(state, TD, clock=SystemClock())
        trio.run(_register_services, state)
        repo = base / "policies"
        repo.mkdir()
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "config", "user.email", "bench@example.org")
        _git(repo, "config", "user.name", "bench")
        _commit(repo, 0)
        t0 = time.perf_counter()
        svids = issue_svids(ca, sidecars)
        _say(f"issued {sidecars} SVIDs in {time.perf_counter() - t0:.1f} s")
        with Processes(base) as procs:
            log = base / "control-plane.log"
            cmd = [sys.executable, "-m", "trustmesh.cli.main", "control-plane", "--state-dir", str(state),
                   "--listen", "127.0.0.1:0", "--policy-git", str(repo), "--policy-poll", POLICY_POLL,
                   "--log-level", "warning"]  # fmt: skip
            # Readiness is the control_plane_ready event (info); the rest of the run logs warnings only.
            cp = procs.start("control-plane", [*cmd[:-1], "info"])
            address = ""
            for _ in range(300):
                for line in log.read_text(errors="replace").splitlines():
                    if '"control_plane_ready"' in line:
                        address = json.loads(line)["listen"]
                if address or cp.popen.poll() is not None:
                    break
                time.sleep(0.1)
            if not address:
                raise RuntimeError(f"control plane did not start:\n{cp.log_tail()}")
            url = f"wss://{address}{sp.STREAM_PATH}"
            return trio.run(_measure, url, svids, repo, commits, cp.pid)


def markdown(r: Result, quick: bool) -> str:
    verdict = {True: "met", False: "**missed**"}
    p50, p99 = _percentile(r.last_ack_s, 0.5), _percentile(r.last_ack_s, 0.99)
    rss_mb = max(r.rss_after_kib, r.hwm_kib) / 1024
    flag = " --quick" if quick else ""
    lines = [
        "## Configuration stream: policy propagation",
        "",
        f"{r.sidecars} simulated sidecars (real websockets over mutual TLS, one SVID each, in the benchmark "
        f"process) on one control-plane subprocess following a git repository every {POLICY_POLL}; "
        f"{r.commits} policy commits ({SERVICES} AuthorizationPolicies each). Latency runs from `git commit` "
        "returning to a sidecar sending its ack of the update carrying the new revision, so it includes "
        f"up to one poll interval ({POLICY_POLL}) and the benchmark process's own work for "
        f"{r.sidecars} clients on the same shared cores. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end. Command: `python -m bench.stream_bench{flag}`.",
        "",
        "| figure | value | target | |",
        "|---|---:|---:|---|",
        f"| commit → last ack, p50 over {r.commits} commits | {p50 * 1000:.0f} ms | | |",
        f"| commit → last ack, p99 over {r.commits} commits | {p99 * 1000:.0f} ms "
        f"| < {TARGET_P99_S * 1000:.0f} ms | {verdict[p99 < TARGET_P99_S]} |",
        f"| commit → each ack, p50 / p99 over {len(r.all_acks_s):,} acks | "
        f"{_percentile(r.all_acks_s, 0.5) * 1000:.0f} / "
        f"{_percentile(r.all_acks_s, 0.99) * 1000:.0f} ms | | |",
        f"| control plane RSS with {r.sidecars} streams (after the commits; peak VmHWM) | "
        f"{r.rss_after_kib / 1024:.0f} MB (peak {r.hwm_kib / 1024:.0f} MB) | < {TARGET_RSS_MB} MB "
        f"| {verdict[rss_mb < TARGET_RSS_MB]} |",
        f"| control plane RSS, connected and idle, before the commits | {r.rss_idle_kib / 1024:.0f} MB | | |",
        f"| time to connect and sync all {r.sidecars} ({CONNECT_CONCURRENCY} handshakes at a time) "
        f"| {r.connect_s:.1f} s | | |",
        f"| stream reconnects during the run | {r.failures} | 0 | |",
        "",
        "Per commit, first and last ack: "
        + ", ".join(
            f"{a * 1000:.0f}/{b * 1000:.0f} ms" for a, b in zip(r.first_ack_s, r.last_ack_s, strict=True)
        )
        + ". The first ack bounds what the git poll and revision validation cost before any push;"
        " the gap to the last is the fan-out to every stream.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run (100 sidecars, 2 commits)"
    )
    args = parser.parse_args()
    configure_logging(level="warning")
    result = run(args.quick)
    print(markdown(result, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
