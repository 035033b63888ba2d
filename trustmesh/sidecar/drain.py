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

import structlog
import trio

log = structlog.get_logger(__name__)


class Drain:
    """Shutdown coordination between the process (which starts a drain) and the proxies."""

    def __init__(self) -> None:
        self._started = trio.Event()
        # True once a drain has begun: accept nothing new, finish what is in flight. A plain
        # attribute, not a property over the event: it is read several times per request.
        self.draining = False
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.reason: str | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def begin(self, reason: str) -> None:
        """Start draining (idempotent: a second SIGTERM does not restart the clock)."""
        if self.draining:
            return
        self.draining = True
        self.reason = reason
        log.info("drain_started", reason=reason, in_flight=self._in_flight)
        self._started.set()

    async def wait_started(self) -> None:
        """Return once a drain has begun (listeners park a task here to stop accepting)."""
        await self._started.wait()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()

    def request(self) -> _InFlight:
        """Mark one request (or one TCP connection) as in flight for the duration of a `with` block.

        A small class rather than `@contextmanager`: this runs on every request, and a
        generator-based context manager costs several times more.
        """
        return _InFlight(self)

    def enter(self) -> None:
        """One request (or connection) more in flight; `exit()` must follow, in a `finally`.

        For the per-request hot path, where `with request()` costs an object and four calls.
        """
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle = trio.Event()

    def exit(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()


class _InFlight:
    __slots__ = ("_drain",)

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    def __enter__(self) -> None:
        self._drain.enter()

    def __exit__(self, *exc: object) -> None:
        self._drain.exit()
