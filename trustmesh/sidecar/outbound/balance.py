"""Choosing an endpoint: round-robin for now, behind the interface P2C (issue 5) will fill."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from trustmesh.sidecar.config import StaticEndpoint


class Balancer(Protocol):
    def pick(self, endpoints: Sequence[StaticEndpoint]) -> StaticEndpoint:
        """One of `endpoints` (never empty) for the next request or connection."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def pick(self, endpoints: Sequence[StaticEndpoint]) -> StaticEndpoint:
        ep = endpoints[self._next % len(endpoints)]
        self._next += 1
        return ep
