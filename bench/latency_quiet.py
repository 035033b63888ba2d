"""p99 at 500 req/s over direct, stunnel and trustmesh, run until each has enough quiet rounds.

    .venv/bin/python -m bench.latency_quiet [quiet_rounds] [max_minutes]

`make bench` must finish in about ten minutes, so it gives the latency up to 16 rounds per
leg; on this shared VM the host's steal bursts can leave fewer than two of them quiet
(steal at most 1% of the CPUs), and then its p99 verdict is *inconclusive*. This runs the
same rounds (`sidecar_bench._latency`: 3 s at 500 req/s after a 0.5 s warm-up, legs
interleaved, same pinning, same nginx and certificates) for as long as it takes, bounded
by `max_minutes` (default 25), until every leg has `quiet_rounds` (default 4) quiet ones,
and prints each leg's pooled quiet p50/p99 and the p99 added over direct. Stops what it
starts.
"""

from __future__ import annotations

import sys
import time

from bench import interleaved, procs, sidecar_bench, topologies
from bench.sidecar_bench import LegResult


def main() -> None:
    quiet_wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    max_s = 60.0 * (float(sys.argv[2]) if len(sys.argv) > 2 else 25.0)
    client, server = interleaved.cpu_split()
    own = procs.cpus()
    t0 = time.monotonic()
    with interleaved.ab_setup(None, server, "trustmesh-latency-") as ab:
        legs = [
            topologies.direct(ab.backend),
            topologies.start_stunnel(ab.running, ab.work, ab.pki, ab.backend, server),
            ab.trustmesh("trustmesh"),
        ]
        results = [LegResult(leg) for leg in legs]
        topologies.settle(1.0)
        procs.set_affinity(client)
        try:
            while time.monotonic() - t0 < max_s and not sidecar_bench._enough_quiet(results, quiet_wanted):
                for r in results:
                    sidecar_bench._latency(r, sidecar_bench.FULL, own)
        finally:
            procs.set_affinity(own)
    minutes = (time.monotonic() - t0) / 60
    print(f"\n{minutes:.1f} min; quiet = steal at most {sidecar_bench.QUIET_STEAL_SHARE:.0%} of the CPUs "
          f"in the round")  # fmt: skip
    pooled = {
        r.leg.name: sidecar_bench._pooled(q) if (q := sidecar_bench._quiet_rounds(r)) else None
        for r in results
    }
    direct_p99 = pooled["direct"].percentile(99) / 1000 if pooled["direct"] else None
    for r in results:
        quiet = sidecar_bench._quiet_rounds(r)
        line = f"{r.leg.name:10} quiet rounds {len(quiet):2d} of {len(r.latency_rounds):2d}"
        pool = pooled[r.leg.name]
        if pool is not None:
            p99 = pool.percentile(99) / 1000
            line += f": p50 {pool.percentile(50) / 1000:.3f} ms, p99 {p99:.3f} ms"
            if r.leg.name != "direct" and direct_p99 is not None:
                line += f", p99 added over direct {p99 - direct_p99:+.3f} ms"
            line += f" (each quiet round's p99: {', '.join(f'{x.percentile(99) / 1000:.3f}' for x in quiet)})"
        print(line)


if __name__ == "__main__":
    main()
