"""What the p99 at 500 req/s is made of: latency rounds lined up with a scheduler trace.

    .venv/bin/python -m bench.latency_trace [rounds]

`make bench` judges the p99 target on *quiet* rounds (steal at most 1% of the CPUs). This
shows what is left in such rounds. It runs the trustmesh leg of the latency benchmark (the
same topology, pinning, nginx and certificates; `rounds` rounds, default 8, of 3 s at
500 req/s after a 0.5 s warm-up), with `perf record -e sched:sched_switch` on every CPU,
and lines each request up with the sidecars' run slices: the stretches a sidecar process
spent on a CPU between two context switches. Per round it prints the steal, p50 and p99,
the sidecars' median and 90th-percentile slice, how many slices ran over 1 ms, and the
longest slice that overlapped a typical request and one of the slowest 2%. A slow request
that overlapped a slice many times the usual length met a CPU that ran slowly for it,
whether or not the hypervisor counted steal.

Needs `perf` with the sched tracepoints and root: as root it installs Debian's linux-perf
(and nginx-light) when missing; where it cannot record, it says why and exits. Stops what
it starts, by PID.
"""

from __future__ import annotations

import bisect
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import interleaved, loadgen, procs, run, sidecar_bench, topologies

_SWITCH = re.compile(r"\[(\d+)\]\s+([\d.]+):.*?prev_pid=(\d+) .*?next_pid=(\d+)")
_PERF_STOP_S = 30.0
LONG_SLICE_S = 0.001
# How far before a request to look for a slice still running when it was sent: longer than
# any slice seen here, even in rounds with 30% steal.
_LOOKBACK_S = 0.25


@dataclass(frozen=True)
class Slice:
    """One stretch a process spent on a CPU between two context switches."""

    start: float
    end: float
    pid: int

    @property
    def length(self) -> float:
        return self.end - self.start


def run_slices(lines: Iterable[str], pids: set[int]) -> list[Slice]:
    """The run slices of `pids` from `perf script -F cpu,time,trace` lines of sched_switch events.

    A slice starts when a CPU switches to the process and ends when that CPU switches away
    from it; the first switch seen on each CPU only starts the count.
    """
    running: dict[int, tuple[int, float]] = {}  # cpu -> (pid, since)
    out: list[Slice] = []
    for line in lines:
        m = _SWITCH.search(line)
        if m is None:
            continue
        cpu, at, prev, nxt = int(m[1]), float(m[2]), int(m[3]), int(m[4])
        current = running.get(cpu)
        if current is not None and current[0] == prev and prev in pids:
            out.append(Slice(current[1], at, prev))
        running[cpu] = (nxt, at)
    out.sort(key=lambda s: s.start)
    return out


def longest_overlapping(slices: Sequence[Slice], starts: Sequence[float], begin: float, end: float) -> float:
    """The longest slice that overlaps [begin, end] (0.0 if none); `starts` are the slices' starts."""
    k = bisect.bisect_left(starts, begin - _LOOKBACK_S)
    longest = 0.0
    while k < len(slices) and slices[k].start < end:
        s = slices[k]
        if s.end > begin:
            longest = max(longest, s.length)
        k += 1
    return longest


@dataclass
class RoundTrace:
    steal: float
    requests: list[tuple[float, float]]  # (intended send time, answer time)


def report(rounds: Sequence[RoundTrace], slices: Sequence[Slice]) -> list[str]:
    """One line per round: latency, the sidecars' slices in it, and those slow requests met."""
    starts = [s.start for s in slices]
    lines = []
    for n, r in enumerate(rounds):
        if not r.requests:
            continue
        begin, end = r.requests[0][0], max(done for _, done in r.requests)
        inside = [s.length for s in slices if begin <= s.start <= end]
        by_latency = sorted(r.requests, key=lambda q: q[1] - q[0])
        count = len(by_latency)
        mid = by_latency[max(0, count // 2 - 50) : count // 2 + 50]
        slow = by_latency[int(count * 0.98) :]

        def met(requests: Sequence[tuple[float, float]]) -> float:
            return statistics.median(longest_overlapping(slices, starts, a, b) for a, b in requests) * 1e3

        lat = [b - a for a, b in by_latency]
        p50, p99 = lat[count // 2] * 1e3, lat[min(count - 1, int(count * 0.99))] * 1e3
        deciles = statistics.quantiles(inside, n=10) if len(inside) > 1 else [0.0] * 9
        lines.append(
            f"| {n} | {r.steal:.2%} | {p50:.3f} | {p99:.3f} | "
            f"{statistics.median(inside) * 1e3 if inside else 0:.3f} | {deciles[8] * 1e3:.3f} | "
            f"{sum(1 for x in inside if x > LONG_SLICE_S)} | {met(mid):.2f} | {met(slow):.2f} |"
        )
    return lines


HEADER = (
    "| round | steal | p50 ms | p99 ms | sidecar slice median ms | p90 ms | slices > 1 ms "
    "| longest slice met: typical request ms | slowest 2% ms |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _perf_usable() -> str | None:
    """None if `perf` can record sched_switch here, else why not."""
    probe = subprocess.run(
        ["perf", "record", "-q", "-e", "sched:sched_switch", "-a", "-o", "/dev/null", "--", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        return (
            "perf cannot record sched:sched_switch here (root and tracefs are needed): "
            + (probe.stderr.strip().splitlines() or ["no message"])[-1]
        )
    return None


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    missing = run.ensure_tools({"nginx": "nginx-light", "perf": "linux-perf"})
    if missing:
        raise SystemExit(f"latency_trace: missing {', '.join(missing)}")
    why_not = _perf_usable()
    if why_not is not None:
        raise SystemExit(f"latency_trace: {why_not}")
    client, server = interleaved.cpu_split()
    own = procs.cpus()
    with (
        tempfile.TemporaryDirectory(prefix="trustmesh-trace-") as tmp,
        interleaved.ab_setup(None, server, "trustmesh-trace-") as ab,
    ):
        data = Path(tmp) / "sched.data"
        leg = ab.trustmesh("trustmesh")
        pids = {p.pid for p in leg.proxies}
        topologies.settle(1.0)
        procs.set_affinity(client)
        traces: list[RoundTrace] = []
        try:
            loadgen.run_fixed_rate(
                topologies.LOOPBACK, leg.entry_port, topologies.BODY_PATH,
                rate=sidecar_bench.LATENCY_RATE, duration_s=1, warmup_s=0.5,
            )  # fmt: skip
            record = ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", "sched:sched_switch", "-a"]
            perf = subprocess.Popen(
                [*record, "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                time.sleep(1.0)  # perf is set up on every CPU
                for _ in range(rounds):
                    timeline: list[tuple[float, float]] = []
                    steal0, t0 = procs.steal_seconds(own), time.monotonic()
                    loadgen.run_fixed_rate(
                        topologies.LOOPBACK, leg.entry_port, topologies.BODY_PATH,
                        rate=sidecar_bench.LATENCY_RATE, duration_s=sidecar_bench.FULL.latency_s,
                        warmup_s=sidecar_bench.LATENCY_WARMUP_S,
                        connections=sidecar_bench.FULL.latency_connections, timeline=timeline,
                    )  # fmt: skip
                    steal = (procs.steal_seconds(own) - steal0) / ((time.monotonic() - t0) * max(1, len(own)))
                    traces.append(RoundTrace(steal, timeline))
                    print(f"round {len(traces) - 1}: steal {steal:.2%}", flush=True)
            finally:
                perf.send_signal(signal.SIGINT)
                try:
                    perf.wait(timeout=_PERF_STOP_S)
                except subprocess.TimeoutExpired:
                    perf.kill()
                    perf.wait()
        finally:
            procs.set_affinity(own)
        script = subprocess.run(
            ["perf", "script", "-F", "cpu,time,trace", "-i", str(data)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    slices = run_slices(script.stdout.splitlines(), pids)
    print(f"\n{len(slices)} sidecar run slices; steal is the share of the run's CPUs the hypervisor took\n")
    print(HEADER)
    for line in report(traces, slices):
        print(line)


if __name__ == "__main__":
    main()
