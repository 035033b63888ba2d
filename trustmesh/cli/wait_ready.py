"""`trustmesh wait-ready`: block a script until a sidecar's `/ready` answers 200.

Exit 0 once ready; exit 1 with one line when the timeout passes (saying what the last
answer was, so "connection refused" and "SVID expired" are told apart).
"""

from __future__ import annotations

import argparse
import http.client
import time
from typing import Any

from trustmesh.cli.errors import CliError
from trustmesh.durations import parse_duration
from trustmesh.sidecar.config import HostPort

POLL_INTERVAL = 0.2  # seconds between polls: start-up takes a few hundred milliseconds
REQUEST_TIMEOUT = 2.0


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "wait-ready",
        help="wait until a sidecar is ready (for start-up ordering in scripts)",
        description="Poll the sidecar's admin /ready until it answers 200 or the timeout passes.",
    )
    p.add_argument(
        "--admin", default="127.0.0.1:15000", metavar="HOST:PORT", help="the sidecar's admin address"
    )
    p.add_argument(
        "--timeout", default="30s", metavar="DURATION", help="give up after this long (default 30s)"
    )
    p.set_defaults(func=run)


def probe(admin: HostPort) -> tuple[bool, str]:
    """One GET /ready: (ready, what it said)."""
    conn = http.client.HTTPConnection(admin.host, admin.port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/ready")
        resp = conn.getresponse()
        body = resp.read(512).decode("utf-8", "replace").strip()
        return resp.status == 200, f"{resp.status} {body}"
    except OSError as err:
        return False, err.strerror or type(err).__name__
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    try:
        admin = HostPort.parse(args.admin)
        timeout = parse_duration(args.timeout).total_seconds()
    except ValueError as err:
        raise CliError(str(err)) from err
    deadline = time.monotonic() + timeout
    while True:
        ready, said = probe(admin)
        if ready:
            return 0
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CliError(f"sidecar at {admin} not ready after {args.timeout} (last answer: {said})")
        time.sleep(min(POLL_INTERVAL, remaining))
