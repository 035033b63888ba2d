"""`/v1/renew` cost of this tree against another commit, side by side in one run.

    .venv/bin/python -m bench.renew_ab REV [rounds] [seconds]

Starts two control planes (REV, from `git archive REV`, and the working tree), each on its
own fresh CA, and runs `bench.ca_bench`'s renew loop against them in turn: one kept-alive
mTLS connection, one request at a time. Prints renewals per control-plane CPU-second for
every round and the medians. On a shared machine whose speed drifts by a quarter over
minutes, only figures from the same run are worth comparing. Stops what it starts.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench.ca_bench import _renew_loop
from trustmesh.ca import CertificateAuthority
from trustmesh.clock import SystemClock
from trustmesh.tracing.logs import configure_logging

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30.0


def _checkout(rev: str, into: Path) -> None:
    """REV's tree in `into`, by `git archive | tar -x` (tarfile's `filter=` is missing before 3.11.4)."""
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def _start(
    tree: Path, work: Path, python: str = sys.executable
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A control plane from `tree` on `python`, on a fresh CA; (process, listen address, state dir)."""
    state = work / "state"
    CertificateAuthority.init(state, "bench.example", clock=SystemClock())
    log_path = work / "control-plane.log"
    cmd = [python, "-m", "trustmesh.cli.main", "control-plane", "--state-dir", str(state),
           "--listen", "127.0.0.1:0", "--log-level", "info"]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text().splitlines():
            if '"control_plane_ready"' in line:
                return proc, json.loads(line)["listen"], state
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"control plane in {tree} did not start: {log_path.read_text()[-2000:]}")


Running = dict[str, tuple[subprocess.Popen[bytes], str, Path]]


def start_all(plan: dict[str, tuple[Path, Path, str]]) -> Running:
    """One control plane per name from (tree, work dir, python); if one fails, those started are killed."""
    running: Running = {}
    try:
        for name, (tree, work, python) in plan.items():
            work.mkdir()
            running[name] = _start(tree, work, python)
    except BaseException:
        for proc, _, _ in running.values():
            proc.kill()
        raise
    return running


def alternate(running: Running, rounds: int, seconds: float) -> dict[str, list[float]]:
    """`rounds` rounds of the renew loop against each running control plane in turn; stops them all.

    Returns renewals per control-plane CPU-second, per round, by name (printed as they come).
    """
    results: dict[str, list[float]] = {name: [] for name in running}
    try:
        for r in range(rounds):
            for name, (proc, address, state) in running.items():
                _, per_cpu, n = trio.run(_renew_loop, address, state, seconds, proc.pid)
                results[name].append(per_cpu)
                print(f"round {r}: {name:14} {per_cpu:6.0f} renewals per control-plane CPU-second ({n})")
    finally:
        for proc, _, _ in running.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return results


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    rev = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 4.0
    configure_logging(level="warning")
    with tempfile.TemporaryDirectory(prefix="trustmesh-renew-ab-") as tmp:
        other = Path(tmp) / "tree"
        _checkout(rev, other)
        trees = {rev: other, "working tree": REPO}
        plan = {
            name: (tree, Path(tmp) / name.replace(" ", "-"), sys.executable) for name, tree in trees.items()
        }
        results = alternate(start_all(plan), rounds, seconds)
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"median {name:14} {value:6.0f}")
    print(f"working tree / {rev}: x{medians['working tree'] / medians[rev]:.2f}")


if __name__ == "__main__":
    main()
