"""Legs measured in turn, round after round, in one run: the only comparison this shared machine allows.

Its speed drifts by a quarter over minutes, so two legs are compared only when each round
measures every leg back to back (keep-alive `wrk -t1 -c32` on `GET /100b`), and the
verdict is the median over rounds. Used by `floor_compare` and `sidecar_ab`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench import procs, sidecar_bench, topologies
from bench.topologies import Leg

# Per leg, per round: (requests/s, CPU µs per request of each proxy, client first).
Results = dict[str, list[tuple[float, list[float]]]]


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
