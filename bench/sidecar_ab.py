"""The sidecar pair of this tree against another commit's, and the stunnel pair, in one run.

    .venv/bin/python -m bench.sidecar_ab REV [rounds] [seconds]

Same topology and pinning as `make bench` (nginx and every proxy on one CPU, wrk on the
other). Three legs measured in turn each round (`bench.interleaved`): stunnel, REV's
sidecars (from `git archive REV`, control plane included) and the working tree's, each
pair joined to its own control plane on the same CA. Prints req/s, the share of
stunnel's and each sidecar's CPU µs per request, per round and as medians. This is how
every hot-path change in docs/sidecar-design.md was judged. Stops what it starts.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench import interleaved, procs, topologies
from bench.certs import make_pki
from bench.renew_ab import _checkout


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    rev = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    allowed = procs.cpus()
    client, server = (allowed[:1], allowed[1:]) if len(allowed) > 1 else (allowed, allowed)
    with tempfile.TemporaryDirectory(prefix="trustmesh-sidecar-ab-") as tmp:
        work = topologies.make_work_dir(Path(tmp))
        other = work / "tree"
        _checkout(rev, other)
        with procs.Processes(work) as running:
            pki = make_pki(work / "pki", topologies.HARNESS_LEAVES)
            backend = topologies.start_nginx(running, work, 1 << 20, server)
            legs = [
                topologies.start_stunnel(running, work, pki, backend, server),
                topologies.start_trustmesh(running, work, pki, backend, server, name=rev[:12], tree=other),
                topologies.start_trustmesh(running, work, pki, backend, server, name="working-tree"),
            ]
            results = interleaved.measure_pinned(legs, rounds, seconds, client)
    interleaved.print_medians(results, rounds, seconds)


if __name__ == "__main__":
    main()
