"""Legs measured in turn, round after round, in one run: the only comparison this shared machine allows.

Its speed drifts by a quarter over minutes, so two legs are compared only when each round
measures every leg back to back (keep-alive `wrk -t1 -c32` on `GET /100b`), and the
verdict is the median over rounds. Used by `floor_compare`, `sidecar_ab` and `tracing_ab`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import procs, sidecar_bench, topologies
from bench.certs import Pki, make_pki
from bench.renew_ab import _checkout
from bench.topologies import Leg

# Per leg, per round: (requests/s, CPU µs per request of each proxy, client first).
Results = dict[str, list[tuple[float, list[float]]]]


def ab_arguments(usage: str | None) -> tuple[str, int, int]:
    """`REV [rounds] [seconds]` from the command line, as the A/B benchmarks take them (REV: what
    is compared with the working tree; for `interpreter_ab`, another interpreter)."""
    if len(sys.argv) < 2:
        raise SystemExit(usage)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    return sys.argv[1], rounds, seconds


def cpu_split() -> tuple[list[int], list[int]]:
    """(load generator CPUs, proxy CPUs): the first CPU and the rest, as `make bench` pins them."""
    allowed = procs.cpus()
    return (allowed[:1], allowed[1:]) if len(allowed) > 1 else (allowed, allowed)


@dataclass
class AbSetup:
    """What an A/B benchmark runs in: nginx started, a PKI, REV checked out into `other` (if any)."""

    running: procs.Processes
    work: Path
    pki: Pki
    backend: int
    other: Path | None
    server: list[int]

    def trustmesh(
        self,
        name: str,
        *,
        rev_tree: bool = False,
        sidecar_args: Sequence[str] = (),
        python: str | None = None,
    ) -> Leg:
        """A control plane and sidecar pair from this tree, or (`rev_tree`) from REV's; `python` runs them."""
        if rev_tree and self.other is None:
            raise ValueError("no REV was checked out for this A/B")
        return topologies.start_trustmesh(
            self.running, self.work, self.pki, self.backend, self.server,
            name=name, tree=self.other if rev_tree else None, sidecar_args=sidecar_args, python=python,
        )  # fmt: skip


@contextmanager
def ab_setup(rev: str | None, server: list[int], prefix: str) -> Iterator[AbSetup]:
    """A temporary directory, REV's tree (none when `rev` is None: only this tree's legs), nginx on
    the `server` CPUs; everything stopped on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = topologies.make_work_dir(Path(tmp))
        other = None
        if rev is not None:
            other = work / "tree"
            _checkout(rev, other)
        with procs.Processes(work) as running:
            pki = make_pki(work / "pki", topologies.HARNESS_LEAVES)
            backend = topologies.start_nginx(running, work, 1 << 20, server)
            yield AbSetup(running, work, pki, backend, other, server)


def measure_pinned(legs: Sequence[Leg], rounds: int, seconds: int, client: list[int]) -> Results:
    """`measure` with this process (and so wrk) on the `client` CPUs, once the legs have settled."""
    own = procs.cpus()
    topologies.settle(1.0)
    procs.set_affinity(client)
    try:
        return measure(legs, rounds, seconds, client)
    finally:
        procs.set_affinity(own)


def measure(legs: Sequence[Leg], rounds: int, seconds: int, client: list[int]) -> Results:
    """Warm every leg up, then run `rounds` rounds of `seconds` each, printing as it goes."""
    results: Results = {leg.name: [] for leg in legs}
    for leg in legs:  # warm-up
        sidecar_bench._wrk(leg.entry_port, 1, 32, client)
    for r in range(rounds):
        for leg in legs:
            before = [procs.cpu_seconds(p.pid) or 0.0 for p in leg.proxies]
            rps, _, _ = sidecar_bench._wrk(leg.entry_port, seconds, 32, client)
            after = [procs.cpu_seconds(p.pid) or 0.0 for p in leg.proxies]
            n = max(rps * seconds, 1)
            us = [1e6 * (b - a) / n for a, b in zip(before, after, strict=True)]
            results[leg.name].append((rps, us))
            print(f"round {r}: {leg.name:14} {rps:7.0f} req/s, µs/request per proxy "
                  f"(client, server) {[round(u) for u in us]}", flush=True)  # fmt: skip
    return results


def print_medians(results: Results, rounds: int, seconds: int, reference: str = "stunnel") -> None:
    base = statistics.median(rps for rps, _ in results[reference])
    print(f"\nmedians over {rounds} rounds of {seconds} s (wrk -t1 -c32, GET /100b):")
    for name, rows in results.items():
        rps = statistics.median(x for x, _ in rows)
        us = [round(statistics.median(row[1][i] for row in rows)) for i in range(len(rows[0][1]))]
        print(f"  {name:14} {rps:7.0f} req/s  {100 * rps / base:4.0f}% of {reference}  µs/request {us}")
