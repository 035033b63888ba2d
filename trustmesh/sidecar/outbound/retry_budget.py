"""Retry budget: retries allowed as a share of live traffic, not only a count per request.

A fixed "3 attempts" triples the load on a service that is already failing, which is how
a partial outage becomes a full one. Linkerd (after Finagle) bounds retries instead by a
budget: over a sliding window, retries may be at most `percent` of the original requests,
plus `min_per_second` so that a quiet client can still retry at all. When every endpoint
fails, the extra load is then at most `percent`, whatever the attempt limit says.

The window is a ring of ten buckets (whole windows are not kept per request): a request
or retry counts for between 0.9 and 1.0 of `window`. Pure: time comes in as `now`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    # Linkerd's defaults: retries add at most 20% load, a client below 50 req/s may still
    # retry 10 times a second, and bursts are judged over 10 s.
    percent: float = 20.0
    min_per_second: float = 10.0
    window: float = 10.0


class RetryBudget:
    """Counts requests (`deposit`) and grants retries (`try_withdraw`) within the budget."""

    __slots__ = (
        "_cursor",
        "_floor",
        "_ratio",
        "_requests",
        "_retries",
        "_sum_requests",
        "_sum_retries",
        "_width",
    )

    def __init__(self, settings: BudgetSettings = BudgetSettings()) -> None:
        if settings.window <= 0:
            raise ValueError("retry budget window must be positive")
        self._width = settings.window / _BUCKETS
        self._ratio = settings.percent / 100.0
        self._floor = settings.min_per_second * settings.window
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._sum_requests = 0
        self._sum_retries = 0
        self._cursor: int | None = None  # absolute index of the newest bucket

    def deposit(self, now: float) -> None:
        """One original request (not a retry) was made."""
        slot = self._advance(now)
        self._requests[slot] += 1
        self._sum_requests += 1

    def try_withdraw(self, now: float) -> bool:
        """Spend one retry if the budget has one; False means do not retry."""
        slot = self._advance(now)
        if self._sum_retries >= self._floor + self._ratio * self._sum_requests:
            return False
        self._retries[slot] += 1
        self._sum_retries += 1
        return True

    def available(self, now: float) -> int:
        """Retries that would be granted now (for metrics and tests)."""
        self._advance(now)
        return max(0, math.ceil(self._floor + self._ratio * self._sum_requests) - self._sum_retries)

    def _advance(self, now: float) -> int:
        index = int(now // self._width)
        cursor = self._cursor
        if cursor is None:
            self._cursor = index
        elif index > cursor:
            # Empty the buckets that fell out of the window: at most all of them.
            for absolute in range(cursor + 1, min(index, cursor + _BUCKETS) + 1):
                slot = absolute % _BUCKETS
                self._sum_requests -= self._requests[slot]
                self._sum_retries -= self._retries[slot]
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._cursor = index
        else:
            index = cursor  # the clock never goes back; a tie or a stale `now` uses the newest bucket
        return index % _BUCKETS
