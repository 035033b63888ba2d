"""How far the sidecar pair is from a minimal relay on the same I/O layer (docs/sidecar-design.md).

    .venv/bin/python -m bench.floor_compare [rounds] [seconds]

Same topology and pinning as `make bench` (nginx and every proxy on one CPU, wrk on the
other): the stunnel pair, a `bench.minimal_relay` pair in `pump` and in `http` mode, and
the trustmesh sidecar pair. Keep-alive `wrk -t1 -c32` on `GET /100b`, legs interleaved in
each round; printed per round and as medians: req/s, the share of stunnel's, and each
proxy's CPU µs per request (utime+stime from /proc). Stops everything it started.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench import procs, sidecar_bench, topologies
from bench.certs import Pki, make_pki

REPO = Path(__file__).resolve().parent.parent


def _relay_leg(
    running: procs.Processes, pki: Pki, backend: int, cpus: list[int], mode: str
) -> topologies.Leg:
    leaves, roots = pki.leaves, str(pki.roots)
    server_port, client_port = procs.free_port(), procs.free_port()
    started = []
    for role, port, target, leaf in (
        ("server", server_port, backend, leaves["stunnel-server"]),
        ("client", client_port, server_port, leaves["stunnel-client"]),
    ):
        cmd = [sys.executable, "-m", "bench.minimal_relay", role, mode, str(port), str(target),
               str(leaf.chain), str(leaf.key), roots]  # fmt: skip
        proc = running.start(f"relay-{mode}-{role}", cmd, cpu_list=cpus, cwd=REPO)
        procs.wait_port("127.0.0.1", port, 30, proc.popen)
        started.append(proc)
    return topologies.Leg(f"relay-{mode}", client_port, server_port, [started[1], started[0]])


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    allowed = procs.cpus()
    client, server = (allowed[:1], allowed[1:]) if len(allowed) > 1 else (allowed, allowed)
    own = procs.cpus()
    with tempfile.TemporaryDirectory(prefix="trustmesh-floor-") as tmp:
        work = topologies.make_work_dir(Path(tmp))
        logs = Path(sys.argv[3]) if len(sys.argv) > 3 else work
        logs.mkdir(parents=True, exist_ok=True)
        with procs.Processes(logs) as running:
            pki = make_pki(work / "pki", topologies.HARNESS_LEAVES)
            backend = topologies.start_nginx(running, work, 1 << 20, server)
            legs = [
                topologies.start_stunnel(running, work, pki, backend, server),
                _relay_leg(running, pki, backend, server, "pump"),
                _relay_leg(running, pki, backend, server, "http"),
                topologies.start_trustmesh(running, work, pki, backend, server),
            ]
            topologies.settle(1.0)
            procs.set_affinity(client)
            try:
                results: dict[str, list[tuple[float, list[float]]]] = {leg.name: [] for leg in legs}
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
                        print(f"round {r}: {leg.name:10} {rps:7.0f} req/s, µs/request per proxy "
                              f"(client, server) {[round(u) for u in us]}", flush=True)  # fmt: skip
            finally:
                procs.set_affinity(own)
    base = statistics.median(rps for rps, _ in results["stunnel"])
    print(f"\nmedians over {rounds} rounds of {seconds} s (wrk -t1 -c32, GET /100b):")
    for name, rows in results.items():
        rps = statistics.median(x for x, _ in rows)
        us = [round(statistics.median(row[1][i] for row in rows)) for i in range(2)]
        print(f"  {name:10} {rps:7.0f} req/s  {100 * rps / base:4.0f}% of stunnel  µs/request {us}")


if __name__ == "__main__":
    main()
