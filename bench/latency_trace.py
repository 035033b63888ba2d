"""What the p99 at 500 req/s is made of: latency rounds lined up with a scheduler trace.

    .venv/bin/python -m bench.latency_trace [rounds]

`make bench` judges the p99 target on *quiet* rounds (steal at most 1% of the CPUs). This
shows what is left in such rounds. It runs the trustmesh leg of the latency benchmark (the
same topology, pinning, nginx and certificates; `rounds` rounds, default 8, of 3 s at
500 req/s after a 0.5 s warm-up) with `perf record -e sched:sched_switch` on every CPU, and
lines each request up with the scheduler's record. Per round it prints the steal, p50 and
p99; the sidecars' run slices (the stretches a sidecar spent on a CPU between two context
switches): median, 90th percentile and how many ran over 1 ms; and, for a typical request
and for the slowest 2%, the longest sidecar slice it met and how late the load generator
sent it. Then it names what held the load generator's CPU while the slowest requests
waited to leave.

A slow request that met a slice many times the usual length met a CPU that ran slowly for
it, whether or not the hypervisor counted steal. A slow request that left late was held
up before it reached the mesh, on the load generator's own CPU.

On this VM the sched_switch tracepoint does not fire when a CPU leaves idle, only when it
enters it (hundreds of switches to `swapper/1`, none from it): a slice that began on an
idle CPU cannot be timed, and only slices that began at a switch from another task count.

Needs `perf` with the sched tracepoints and root: as root it installs Debian's linux-perf
(and nginx-light) when missing; where it cannot record, it says why and exits. Stops what
it starts, by PID.
"""

from __future__ import annotations

import bisect
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import interleaved, loadgen, procs, run, sidecar_bench, topologies

_SWITCH = re.compile(r"\[(\d+)\]\s+([\d.]+):.*?prev_comm=(.*?) prev_pid=(\d+) .*?next_pid=(\d+)")
_PERF_STOP_S = 30.0
LONG_SLICE_S = 0.001
# How far before a request to look for a slice still running when it was sent: longer than
# any slice seen here, even in rounds with 30% steal.
_LOOKBACK_S = 0.25
IDLE_PID = 0

Timed = loadgen.Timed


@dataclass(frozen=True)
class Slice:
    """One stretch a task spent on a CPU, from a traced switch to it to a traced switch away."""

    start: float
    end: float
    pid: int
    comm: str

    @property
    def length(self) -> float:
        return self.end - self.start


class CpuTimeline:
    """Every CPU's slices in time order, from `perf script -F cpu,time,trace` sched_switch lines."""

    def __init__(self, lines: Iterable[str]) -> None:
        running: dict[int, tuple[int, float]] = {}  # cpu -> (pid, since)
        self.by_cpu: dict[int, list[Slice]] = {}
        for line in lines:
            m = _SWITCH.search(line)
            if m is None:
                continue
            cpu, at, comm, prev, nxt = int(m[1]), float(m[2]), m[3], int(m[4]), int(m[5])
            current = running.get(cpu)
            # Only a switch away from the task the last traced switch put there closes a slice
            # (see the module docstring: switches out of idle are not traced here).
            if current is not None and current[0] == prev and prev != IDLE_PID:
                self.by_cpu.setdefault(cpu, []).append(Slice(current[1], at, prev, comm))
            running[cpu] = (nxt, at)
        self._starts = {cpu: [s.start for s in slices] for cpu, slices in self.by_cpu.items()}

    def overlapping(self, cpus: Iterable[int], begin: float, end: float) -> Iterator[tuple[Slice, float]]:
        """(slice, seconds of it inside [begin, end]) for every slice of `cpus` overlapping it."""
        for cpu in cpus:
            slices = self.by_cpu.get(cpu, [])
            k = bisect.bisect_left(self._starts.get(cpu, []), begin - _LOOKBACK_S)
            while k < len(slices) and slices[k].start < end:
                s = slices[k]
                inside = min(s.end, end) - max(s.start, begin)
                if inside > 0:
                    yield s, inside
                k += 1


@dataclass
class RoundTrace:
    round: sidecar_bench.LatencyRound
    requests: list[Timed]


def _median_ms(values: Iterable[float]) -> float:
    return statistics.median(values) * 1e3


HEADER = (
    "| round | steal | p50 ms | p99 ms | sidecar slice median / p90 ms | slices > 1 ms "
    "| longest sidecar slice met ms | sent late by ms |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def report(
    rounds: Sequence[RoundTrace], timeline: CpuTimeline, sidecars: set[int], proxy_cpus: Sequence[int],
    load_cpus: Sequence[int], load_pid: int,
) -> tuple[list[str], dict[str, float]]:  # fmt: skip
    """One table row per round (the last two columns: typical request / slowest 2%), and what
    held the load generator's CPUs while the slowest requests waited to leave."""
    lines = []
    others: defaultdict[str, float] = defaultdict(float)
    for n, r in enumerate(rounds):
        if not r.requests:
            continue
        begin, end = r.requests[0][0], max(done for _, _, done in r.requests)
        inside = sorted(
            s.length
            for s, _ in timeline.overlapping(proxy_cpus, begin, end)
            if s.pid in sidecars and begin <= s.start
        )
        by_latency = sorted(r.requests, key=lambda q: q[2] - q[0])
        count = len(by_latency)
        typical = by_latency[max(0, count // 2 - 50) : count // 2 + 50]
        slowest = by_latency[int(count * 0.98) :]

        def longest(requests: Sequence[Timed]) -> float:
            return _median_ms(
                max(
                    (s.length for s, _ in timeline.overlapping(proxy_cpus, a, b) if s.pid in sidecars),
                    default=0.0,
                )
                for a, _, b in requests
            )

        for intended, sent, _ in slowest:
            for s, t in timeline.overlapping(load_cpus, intended, sent):
                if s.pid != load_pid:
                    others[s.comm] += t
        median = inside[len(inside) // 2] * 1e3 if inside else 0.0
        p90 = inside[int(len(inside) * 0.9)] * 1e3 if inside else 0.0
        p50, p99 = r.round.result.percentile(50) / 1000, r.round.result.percentile(99) / 1000
        late_typical = _median_ms(s - i for i, s, _ in typical)
        late_slowest = _median_ms(s - i for i, s, _ in slowest)
        lines.append(
            f"| {n} | {r.round.steal_share:.2%} | {p50:.3f} | {p99:.3f} "
            f"| {median:.3f} / {p90:.3f} | {sum(1 for x in inside if x > LONG_SLICE_S)} "
            f"| {longest(typical):.2f} / {longest(slowest):.2f} | {late_typical:.2f} / {late_slowest:.2f} |"
        )
    return lines, others


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
                measured = sidecar_bench.LegResult(leg)
                for _ in range(rounds):
                    times: list[Timed] = []
                    sidecar_bench._latency(measured, sidecar_bench.FULL, own, timeline=times)
                    traces.append(RoundTrace(measured.latency_rounds[-1], times))
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
    timeline = CpuTimeline(script.stdout.splitlines())
    rows, others = report(traces, timeline, pids, server, client, os.getpid())
    print(
        "\nsteal: the share of the run's CPUs the hypervisor took. The last two columns: the median"
        "\nover a round's typical requests (the 100 around the median) / over its slowest 2%.\n"
    )
    print(HEADER)
    for line in rows:
        print(line)
    total = sum(others.values())
    if total:
        top = sorted(others.items(), key=lambda item: -item[1])[:5]
        named = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in top)
        print(f"\nWhat held the load generator's CPU while the slowest requests waited to leave: {named}")


if __name__ == "__main__":
    main()
