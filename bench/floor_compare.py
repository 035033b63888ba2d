"""How far the sidecar pair is from a minimal relay on the same I/O layer (docs/sidecar-design.md).

    .venv/bin/python -m bench.floor_compare [rounds] [seconds]

Same topology and pinning as `make bench` (nginx and every proxy on one CPU, wrk on the
other): the stunnel pair, a `bench.minimal_relay` pair in `pump` and in `http` mode, and
the trustmesh sidecar pair. Keep-alive `wrk -t1 -c32` on `GET /100b`, legs interleaved in
each round; printed per round and as medians: req/s, the share of stunnel's, and each
proxy's CPU µs per request (utime+stime from /proc). Stops everything it started.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench import interleaved, procs, topologies
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
            results = interleaved.measure_pinned(legs, rounds, seconds, client)
    interleaved.print_medians(results, rounds, seconds)


if __name__ == "__main__":
    main()
