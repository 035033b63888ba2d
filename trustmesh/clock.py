"""Injectable time, so rotation, expiry, breakers and budgets are tested without sleeping.

Everything that asks "what time is it" takes a `Clock`; production code passes
`SystemClock()`, tests pass a `ManualClock` and move it by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC (certificate validity is wall-clock)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (timeouts, rates, windows)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class ManualClock:
    """A clock that only moves when told to."""

    current: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    mono: float = 1000.0

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.mono

    def advance(self, delta: timedelta | float) -> None:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        self.current += timedelta(seconds=seconds)
        self.mono += seconds
