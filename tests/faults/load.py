"""Steady load for the fault tests: plain HTTP GETs through a sidecar's outbound, counted.

One thread sends GETs one after another, mostly on one kept-alive connection and every
`fresh_every`-th on a new one (so new mTLS handshakes happen during the fault too). Each
request either gets a 200 with the echo app's answer, or counts as an error with what it
got. The loop is bounded twice: by `max_requests` and by `max_seconds`; `stop()` ends it
earlier. Figures (requests, errors, duration) are printed and returned for the docs.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
# Longer variants for `make soak`: TRUSTMESH_SOAK=1 multiplies every hold time.
SOAK = os.environ.get("TRUSTMESH_SOAK", "") not in ("", "0")
SOAK_FACTOR = 10 if SOAK else 1


@dataclass
class Figures:
    """What a fault test reports: the load held through the fault and how it went."""

    name: str
    requests: int = 0
    errors: int = 0
    # Of the errors: responses whose head had reached the app when the connection broke
    # (the endpoint was SIGKILLed mid-body). No proxy can retry those: part of the answer
    # is already with the app (docs/traffic.md, "upstream-reset").
    cut_after_head: int = 0
    seconds: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (
            f"FIGURES {self.name}: {self.requests} requests, {self.errors} errors"
            f" ({self.cut_after_head} cut after the response head), "
            f"{self.seconds:.1f} s ({rate:.0f} req/s)"
        )


class SteadyLoad:
    """GETs against 127.0.0.1:`port` in a background thread until stopped or a bound is hit."""

    def __init__(
        self,
        name: str,
        port: int,
        *,
        path: str = "/load",
        max_requests: int = 20_000,
        max_seconds: float = 60.0,
        fresh_every: int = 10,
        pause: float = 0.005,
    ) -> None:
        self.figures = Figures(name)
        self._port = port
        self._path = path
        self._max_requests = max_requests
        self._max_seconds = max_seconds
        self._fresh_every = fresh_every
        self._pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{name}", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests(self) -> int:
        with self._lock:
            return self.figures.requests

    def stop(self) -> Figures:
        self._stop.set()
        self._thread.join(timeout=self._max_seconds + 30)
        return self.figures

    def _record(self, ok: bool, what: str = "", *, cut: bool = False) -> None:
        with self._lock:
            self.figures.requests += 1
            self.figures.cut_after_head += cut
            if not ok:
                self.figures.errors += 1
                if len(self.figures.error_samples) < 10:
                    self.figures.error_samples.append(what)

    def _run(self) -> None:
        started = time.monotonic()
        conn: http.client.HTTPConnection | None = None
        n = 0
        try:
            while not self._stop.is_set() and n < self._max_requests:
                if time.monotonic() - started > self._max_seconds:
                    break
                if conn is None or n % self._fresh_every == 0:
                    if conn is not None:
                        conn.close()
                    conn = http.client.HTTPConnection(LOOPBACK, self._port, timeout=15)
                n += 1
                current = conn
                try:
                    current.request("GET", f"{self._path}/{n}")
                    resp = current.getresponse()
                    body = resp.read()
                    ok = resp.status == 200 and b'"method": "GET"' in body
                    what = f"{resp.status} {resp.getheader('x-trustmesh-error') or ''} {body[:80]!r}"
                    self._record(ok, what)
                    if resp.getheader("connection", "").lower() == "close":
                        current.close()
                        conn = None
                except http.client.IncompleteRead as exc:
                    self._record(False, repr(exc), cut=True)
                    current.close()
                    conn = None
                except (OSError, http.client.HTTPException) as exc:
                    self._record(False, repr(exc))
                    current.close()
                    conn = None
                time.sleep(self._pause)
        finally:
            if conn is not None:
                conn.close()
            self.figures.seconds = time.monotonic() - started
