"""Graceful shutdown as one shared object: stop accepting, let in-flight work finish, then stop.

SIGTERM (or `POST /shutdown` on the admin port) calls `Drain.begin()`. From then on:

- listeners stop accepting (they wait on `wait_started()` and close their sockets);
- a keep-alive connection finishes the request it is serving and then closes instead of
  reading the next one (it checks `draining` between requests);
- the process waits, for at most the drain timeout, until `in_flight == 0`
  (`wait_idle()`), and then cancels whatever is left.

Requests announce themselves with `with drain.request(): ...` so the process knows what
"in flight" means without knowing anything about HTTP or TCP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog
import trio

log = structlog.get_logger(__name__)


class Drain:
    """Shutdown coordination between the process (which starts a drain) and the proxies."""

    def __init__(self) -> None:
        self._started = trio.Event()
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.reason: str | None = None

    @property
    def draining(self) -> bool:
        """True once a drain has begun: accept nothing new, finish what is in flight."""
        return self._started.is_set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def begin(self, reason: str) -> None:
        """Start draining (idempotent: a second SIGTERM does not restart the clock)."""
        if self._started.is_set():
            return
        self.reason = reason
        log.info("drain_started", reason=reason, in_flight=self._in_flight)
        self._started.set()

    async def wait_started(self) -> None:
        """Return once a drain has begun (listeners park a task here to stop accepting)."""
        await self._started.wait()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Mark one request (or one TCP connection) as in flight for the duration of the block."""
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle = trio.Event()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
