"""Deadlines on cancel scopes kept in a dict and enforced by one timer task, not by trio deadline moves.

Two timeouts run on every request: the outbound request deadline (from the head to the
response head) and the keep-alive idle timeout (waiting for the next request). Setting
each on the connection's cancel scope and lifting it again cost two trio deadline moves
per request (a heap update behind a generator context manager each): about 5% of the
outbound sidecar's CPU under load in a py-spy profile. Here `arm` and `disarm` are a dict
insert and a dict pop, and `run`, one task per listener, sleeps until the earliest deadline
armed and cancels every scope past its own.

Exact: the timer sleeps until the earliest deadline itself. It keeps that target while
requests come and go (a disarmed deadline wakes it for nothing once, and it re-aims at the
earliest one left), so under steady traffic with one timeout it wakes about once per
timeout; only a deadline earlier than the target moves the timer's own scope (after an
idle spell, or a shorter timeout).
"""

from __future__ import annotations

import math

import trio


class ScopeDeadlines:
    """Cancel scopes to cancel at given `trio.current_time()` instants, unless disarmed first."""

    def __init__(self) -> None:
        self._due: dict[trio.CancelScope, float] = {}
        self._target = math.inf
        self._timer: trio.CancelScope | None = None

    def arm(self, scope: trio.CancelScope, timeout: float) -> None:
        """Cancel `scope` `timeout` seconds from now unless `disarm(scope)` comes first."""
        due = trio.current_time() + timeout
        self._due[scope] = due
        if due < self._target:
            self._target = due
            if self._timer is not None:
                self._timer.deadline = due

    def disarm(self, scope: trio.CancelScope) -> None:
        self._due.pop(scope, None)

    def expire(self, now: float) -> int:
        """Cancel (and forget) the scopes due at `now`; how many."""
        due = self._due
        expired = [scope for scope, when in due.items() if when <= now]
        for scope in expired:
            del due[scope]
            scope.cancel()
        return len(expired)

    def next_due(self) -> float:
        """The earliest deadline armed (inf if none)."""
        return min(self._due.values(), default=math.inf)

    def cancel_all(self) -> None:
        """Cancel every armed scope now (a drain ends idle keep-alive connections at once)."""
        for scope in self._due:
            scope.cancel()

    async def run(self) -> None:
        """The timer: forever (cancelled with its nursery)."""
        while True:
            self.expire(trio.current_time())
            self._target = self.next_due()
            with trio.CancelScope(deadline=self._target) as self._timer:
                await trio.sleep_forever()
            self._timer = None
