"""Choosing an endpoint: the `Balancer` interface, and round-robin.

The outbound hands a balancer only endpoints it may use (not ejected, not already tried
for this request), so a balancer never needs to know about outlier detection or retries.
It is told when a request to an endpoint starts and how it ended, which is all a
load-aware balancer (`p2c.PeakEwmaP2C`) needs; round-robin ignores both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from trustmesh.sidecar.config import StaticEndpoint


class Balancer(Protocol):
    def pick(self, endpoints: Sequence[StaticEndpoint], now: float) -> StaticEndpoint:
        """One of `endpoints` (never empty) for the next request; `now` is monotonic seconds."""
        ...

    def start(self, ep: StaticEndpoint) -> None:
        """A request to `ep` begins (it is outstanding until `finish`)."""
        ...

    def finish(self, ep: StaticEndpoint, now: float, rtt: float, *, failed: bool) -> None:
        """The request to `ep` that began at `now - rtt` ended; `failed` for errors and 5xx."""
        ...


class RoundRobin:
    """Each endpoint in turn; blind to load, predictable (and what tests of ejection use)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, endpoints: Sequence[StaticEndpoint], now: float = 0.0) -> StaticEndpoint:
        ep = endpoints[self._next % len(endpoints)]
        self._next += 1
        return ep

    def start(self, ep: StaticEndpoint) -> None:
        pass

    def finish(self, ep: StaticEndpoint, now: float, rtt: float, *, failed: bool) -> None:
        pass
