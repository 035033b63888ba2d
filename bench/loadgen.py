"""Open-loop, fixed-rate HTTP/1.1 load generator for latency at a given request rate.

Why not wrk: wrk is closed-loop (a connection sends its next request only after the
previous answer), so when the server stalls, wrk stops sending and never records the
requests that *should* have gone out meanwhile: coordinated omission. Here every
request has an intended send time, `start + i / rate`, fixed before the run; its
latency is measured from that time, not from when it actually left. A request that
waits for a free connection, or for a slow generator, is charged the wait.

Design: one thread, non-blocking keep-alive sockets and `select.select`, whose
timeout has microsecond resolution (epoll's is a millisecond, which would be most
of the budget being measured). Each connection carries one request at a time; due
requests queue in order until a connection is free. The run is bounded in count
(`rate * duration`) and in time (`duration + drain`), whatever the server does.
"""

from __future__ import annotations

import argparse
import collections
import math
import select
import socket
import time
from dataclasses import dataclass, field

# After the last intended send time, answers still in flight get this long.
DRAIN_S = 5.0
_RECV = 65536
# (intended send time, actual send time, answer time) of one request: see `run_fixed_rate`.
Timed = tuple[float, float, float]


@dataclass
class FixedRateResult:
    """Latencies (µs, from intended send time) of every completed request after the warm-up."""

    rate: float
    duration_s: float
    connections: int
    sent: int = 0
    completed: int = 0
    errors: int = 0
    unfinished: int = 0
    latencies_us: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile in µs (NaN when nothing completed)."""
        if not self.latencies_us:
            return math.nan
        ordered = sorted(self.latencies_us)
        rank = max(1, math.ceil(p / 100.0 * len(ordered)))
        return ordered[rank - 1]

    def summary(self) -> str:
        return (
            f"{self.rate:.0f} req/s for {self.duration_s:.0f}s over {self.connections} conns: "
            f"p50 {self.percentile(50) / 1000:.3f} ms, p99 {self.percentile(99) / 1000:.3f} ms, "
            f"max {max(self.latencies_us, default=math.nan) / 1000:.3f} ms, "
            f"{self.completed} ok, {self.errors} errors, {self.unfinished} unfinished"
        )


class _Conn:
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.intended: float | None = None
        self.sent = 0.0  # when the request actually left (kept only for a timeline)
        self.recorded = True

    def response_length(self) -> int | None:
        """Bytes of the first complete response in `buf`, or None while incomplete."""
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = bytes(self.buf[:head_end]).decode("latin-1").split("\r\n")
        if not head[0].startswith("HTTP/1.1 200"):
            raise ConnectionError(f"unexpected status line {head[0]!r}")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        total = head_end + 4 + length
        return total if len(self.buf) >= total else None


def run_fixed_rate(
    host: str,
    port: int,
    path: str,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 1.0,
    connections: int = 8,
    timeline: list[Timed] | None = None,
) -> FixedRateResult:
    """Send `rate` requests/s for `warmup_s + duration_s`; record only those after the warm-up.

    `timeline`, if given, gets (intended send time, actual send time, answer time) of every
    recorded request, in `time.perf_counter` seconds: CLOCK_MONOTONIC on Linux, the clock
    `perf record -k CLOCK_MONOTONIC` stamps scheduler events with (bench/latency_trace.py
    lines them up).
    """
    request = f"GET {path} HTTP/1.1\r\nHost: api\r\nUser-Agent: trustmesh-bench\r\n\r\n".encode()
    result = FixedRateResult(rate, duration_s, connections)
    conns = [_Conn(host, port) for _ in range(connections)]
    idle = collections.deque(conns)
    busy: dict[socket.socket, _Conn] = {}
    backlog: collections.deque[float] = collections.deque()
    total = int((warmup_s + duration_s) * rate)
    start = time.perf_counter() + 0.01
    record_from = start + warmup_s
    hard_stop = start + warmup_s + duration_s + DRAIN_S
    next_i = 0
    done = 0
    try:
        while done < total:
            now = time.perf_counter()
            if now > hard_stop:
                result.unfinished = total - done
                break
            while next_i < total and start + next_i / rate <= now:
                backlog.append(start + next_i / rate)
                next_i += 1
            while backlog and idle:
                conn = idle.popleft()
                conn.intended = backlog.popleft()
                conn.recorded = conn.intended >= record_from
                if timeline is not None:
                    conn.sent = time.perf_counter()
                conn.sock.send(request)  # ~70 bytes into an empty socket buffer: never partial
                busy[conn.sock] = conn
                result.sent += conn.recorded
            # Wake for the next intended send time, or an answer, whichever comes first. Requests
            # due while every connection is busy just queue: their wait is charged to them.
            wake = start + next_i / rate if next_i < total else hard_stop
            timeout = max(0.0, wake - time.perf_counter())
            readable, _, _ = select.select(list(busy), [], [], timeout)
            for sock in readable:
                conn = busy[sock]
                try:
                    data = sock.recv(_RECV)
                    if not data:
                        raise ConnectionError("server closed a keep-alive connection")
                    conn.buf += data
                    length = conn.response_length()
                except (ConnectionError, OSError, ValueError):
                    del busy[sock]
                    sock.close()
                    done += 1
                    result.errors += conn.recorded
                    fresh = _Conn(host, port)
                    conns[conns.index(conn)] = fresh
                    idle.append(fresh)
                    continue
                if length is None:
                    continue
                finished = time.perf_counter()
                del conn.buf[:length]
                del busy[sock]
                idle.append(conn)
                done += 1
                if conn.recorded and conn.intended is not None:
                    result.completed += 1
                    result.latencies_us.append((finished - conn.intended) * 1e6)
                    if timeline is not None:
                        timeline.append((conn.intended, conn.sent, finished))
    finally:
        for conn in conns:
            conn.sock.close()
    return result


def main() -> None:
    """`python -m bench.loadgen --port N [--rate 500] [--duration 10]`: one run, summary on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/100b")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    res = run_fixed_rate(args.host, args.port, args.path, rate=args.rate, duration_s=args.duration,
                         connections=args.connections)
    print(res.summary())


if __name__ == "__main__":
    main()
