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

from bench import interleaved, topologies


def main() -> None:
    rev, rounds, seconds = interleaved.ab_arguments(__doc__)
    client, server = interleaved.cpu_split()
    with interleaved.ab_setup(rev, server, "trustmesh-sidecar-ab-") as ab:
        legs = [
            topologies.start_stunnel(ab.running, ab.work, ab.pki, ab.backend, server),
            ab.trustmesh(rev[:12], rev_tree=True),
            ab.trustmesh("working-tree"),
        ]
        results = interleaved.measure_pinned(legs, rounds, seconds, client)
    interleaved.print_medians(results, rounds, seconds)


if __name__ == "__main__":
    main()
