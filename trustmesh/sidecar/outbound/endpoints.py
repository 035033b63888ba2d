"""Where a service's endpoints come from: a narrow source the traffic issue can replace.

`StaticEndpoints` serves `--endpoints SERVICE=HOST:PORT@SPIFFE_ID` flags; discovery (issue 5)
will implement the same protocol and keep the flags as a static override.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from trustmesh.sidecar.config import StaticEndpoint


class EndpointSource(Protocol):
    def endpoints(self, service: str) -> Sequence[StaticEndpoint]:
        """The current endpoints of `service`, each with the SPIFFE ID it must present."""
        ...


class StaticEndpoints:
    """Endpoints fixed at start-up, grouped by service (order kept, for the balancer)."""

    def __init__(self, endpoints: Iterable[StaticEndpoint]) -> None:
        self._by_service: dict[str, tuple[StaticEndpoint, ...]] = {}
        for ep in endpoints:
            self._by_service[ep.service] = (*self._by_service.get(ep.service, ()), ep)

    def endpoints(self, service: str) -> Sequence[StaticEndpoint]:
        return self._by_service.get(service, ())
