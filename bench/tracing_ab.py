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

import sys
import tempfile
from pathlib import Path

from bench import interleaved, procs, topologies
from bench.certs import make_pki
from bench.renew_ab import _checkout
from bench.sidecar_bench import Collector

UNTRACED = "untraced"


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    rev = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    allowed = procs.cpus()
    client, server = (allowed[:1], allowed[1:]) if len(allowed) > 1 else (allowed, allowed)
    collector = Collector(client)
    traced = ["--otlp-endpoint", collector.endpoint, "--trace-sample-ratio", "1.0"]
    try:
        with tempfile.TemporaryDirectory(prefix="trustmesh-tracing-ab-") as tmp:
            work = topologies.make_work_dir(Path(tmp))
            other = work / "tree"
            _checkout(rev, other)
            with procs.Processes(work) as running:
                pki = make_pki(work / "pki", topologies.HARNESS_LEAVES)
                backend = topologies.start_nginx(running, work, 1 << 20, server)
                legs = [
                    topologies.start_trustmesh(running, work, pki, backend, server, name=UNTRACED),
                    topologies.start_trustmesh(
                        running,
                        work,
                        pki,
                        backend,
                        server,
                        name=f"{rev[:8]}-traced",
                        tree=other,
                        sidecar_args=traced,
                    ),
                    topologies.start_trustmesh(
                        running, work, pki, backend, server, name="tree-traced", sidecar_args=traced
                    ),
                ]
                results = interleaved.measure_pinned(legs, rounds, seconds, client)
    finally:
        collector.close()
    if not collector.received_bytes:
        raise SystemExit("the collector received no spans: the traced legs did not trace")
    interleaved.print_medians(results, rounds, seconds, reference=UNTRACED)


if __name__ == "__main__":
    main()
