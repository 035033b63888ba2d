"""What tracing at 100% sampling costs the sidecar pair, this tree against another commit's.

    .venv/bin/python -m bench.tracing_ab REV [rounds] [seconds]

Same topology and pinning as `make bench`. Three legs measured in turn each round
(`bench.interleaved`): the working tree's pair without tracing (the reference), REV's pair
with tracing and the working tree's pair with tracing, both traced pairs exporting to one
local OTLP/HTTP collector at `--trace-sample-ratio 1.0`, as the traced leg of `make bench`
does. Prints req/s, the share of the untraced pair's (100 minus that is the throughput
tracing costs; issue 6 allows 25) and each sidecar's CPU µs per request. How the tracing
changes in docs/observability.md were judged. Stops what it starts.
"""

from __future__ import annotations

from bench import interleaved
from bench.sidecar_bench import Collector

UNTRACED = "untraced"


def main() -> None:
    rev, rounds, seconds = interleaved.ab_arguments(__doc__)
    client, server = interleaved.cpu_split()
    collector = Collector(client)
    traced = ["--otlp-endpoint", collector.endpoint, "--trace-sample-ratio", "1.0"]
    try:
        with interleaved.ab_setup(rev, server, "trustmesh-tracing-ab-") as ab:
            legs = [
                ab.trustmesh(UNTRACED),
                ab.trustmesh(f"{rev[:8]}-traced", rev_tree=True, sidecar_args=traced),
                ab.trustmesh("tree-traced", sidecar_args=traced),
            ]
            results = interleaved.measure_pinned(legs, rounds, seconds, client)
    finally:
        collector.close()
    if not collector.received_bytes:
        raise SystemExit("the collector received no spans: the traced legs did not trace")
    interleaved.print_medians(results, rounds, seconds, reference=UNTRACED)


if __name__ == "__main__":
    main()
