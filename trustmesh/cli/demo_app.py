"""A tiny HTTP service for `trustmesh demo`: answers requests and calls others on a timer.

    python -m trustmesh.cli.demo_app --name web --listen 127.0.0.1:9001 \
        --call api=127.0.0.1:15001/items --every 1s

It stands in for a real application behind a sidecar: it serves plain HTTP on loopback
(its sidecar's inbound forwards to it), calls each `--call` target through its own
sidecar's outbound listener, and counts the answers by status, so the demo can say how
many calls were allowed and denied. `GET /stats` returns those counts as JSON.

This is demo scaffolding, not part of the mesh: it uses the standard library only, so
what a user sees in the demo is the sidecars' doing, not this program's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from trustmesh.durations import parse_duration

CALL_TIMEOUT_S = 5.0


class Stats:
    """Answers seen per target, by status class: `allowed` (2xx), `denied` (403), `errors`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_target: dict[str, Counter[str]] = {}
        self.served = 0

    def record(self, target: str, status: int | None) -> None:
        if status is not None and 200 <= status < 300:
            kind = "allowed"
        elif status == 403:
            kind = "denied"
        else:
            kind = "errors"
        with self._lock:
            self._by_target.setdefault(target, Counter())[kind] += 1

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "served": self.served,
                "calls": {t: dict(c) for t, c in self._by_target.items()},
            }


def _handler(name: str, stats: Stats) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the sidecars log
            pass

        def do_GET(self) -> None:
            if self.path == "/stats":
                body = json.dumps(stats.to_json()).encode()
            else:
                with stats._lock:
                    stats.served += 1
                caller = self.headers.get("x-forwarded-client-cert", "")
                uri = caller.rpartition("URI=")[2] if "URI=" in caller else None
                body = json.dumps({"service": name, "path": self.path, "caller": uri}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _call_loop(target: str, address: str, every: float, stats: Stats, stop: threading.Event) -> None:
    host_port, _, path = address.partition("/")
    host, _, port = host_port.rpartition(":")
    conn: http.client.HTTPConnection | None = None
    while not stop.wait(every):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT_S)
            conn.request("GET", "/" + path, headers={"x-demo-caller": target})
            response = conn.getresponse()
            response.read()
            stats.record(target, response.status)
            if response.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            stats.record(target, None)
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trustmesh-demo-app")
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--call", action="append", default=[], help="NAME=HOST:PORT/PATH (repeatable)")
    parser.add_argument("--every", default="1s", help="interval between calls to each target")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    every = parse_duration(args.every).total_seconds()
    stats = Stats()
    stop = threading.Event()
    server = ThreadingHTTPServer((host, int(port)), _handler(args.name, stats))
    server.daemon_threads = True

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    callers = []
    for spec in args.call:
        target, _, address = spec.partition("=")
        thread = threading.Thread(
            target=_call_loop, args=(target, address, every, stats, stop), name=f"call-{target}", daemon=True
        )
        thread.start()
        callers.append(thread)
    print(json.dumps({"event": "demo_app_ready", "name": args.name, "listen": args.listen}), flush=True)
    server.serve_forever(poll_interval=0.2)
    for thread in callers:
        thread.join(timeout=CALL_TIMEOUT_S + 1)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
