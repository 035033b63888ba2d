"""`DiscoveredEndpoints`: the outbound's `EndpointSource` fed by the configuration stream.

The stream delivers, per called service, its complete endpoint list (address, SPIFFE ID,
health); `update` swaps a service's list in one assignment, so the balancer reads either
the old list or the new one, never half of each. `--endpoints` flags stay an override:
a service with static entries is served from them alone, whatever discovery says (the
static case the issue keeps, and a way out when the registry is wrong).

Health: endpoints whose stream is live are `healthy`; those whose stream dropped are
`disconnected` until the control plane's grace period removes them. Only healthy ones are
offered while any exist; if none are, the disconnected ones are (the sidecar may well be
serving while its stream reconnects), and the outbound's breaker judges them by results.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import structlog

from trustmesh.control.stream_protocol import Endpoint
from trustmesh.identity.spiffe_id import InvalidSpiffeId, SpiffeId
from trustmesh.sidecar.config import HostPort, StaticEndpoint
from trustmesh.sidecar.outbound.endpoints import StaticEndpoints

log = structlog.get_logger(__name__)


class DiscoveredEndpoints:
    """Endpoints per service from discovery, with static `--endpoints` entries taking precedence."""

    def __init__(self, static: Iterable[StaticEndpoint] = ()) -> None:
        self._static = StaticEndpoints(static)
        # service -> (healthy, disconnected)
        self._discovered: dict[str, tuple[tuple[StaticEndpoint, ...], tuple[StaticEndpoint, ...]]] = {}

    def endpoints(self, service: str) -> Sequence[StaticEndpoint]:
        static = self._static.endpoints(service)
        if static:
            return static
        healthy, disconnected = self._discovered.get(service, ((), ()))
        return healthy or disconnected

    def update(self, service: str, endpoints: Sequence[Endpoint]) -> None:
        """Replace `service`'s discovered endpoints (the stream client's `on_endpoints`)."""
        healthy: list[StaticEndpoint] = []
        disconnected: list[StaticEndpoint] = []
        for ep in endpoints:
            try:
                parsed = StaticEndpoint(service, HostPort.parse(ep.address), SpiffeId.parse(ep.spiffe_id))
            except (ValueError, InvalidSpiffeId) as exc:
                log.warning("endpoint_ignored", service=service, address=ep.address[:100], detail=str(exc))
                continue
            (healthy if ep.health == "healthy" else disconnected).append(parsed)
        self._discovered[service] = (tuple(healthy), tuple(disconnected))
        log.info(
            "endpoints_discovered",
            service=service,
            healthy=[str(e.address) for e in healthy][:20],
            disconnected=len(disconnected),
            overridden=bool(self._static.endpoints(service)),
        )
