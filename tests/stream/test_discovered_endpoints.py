"""What the outbound sees from discovery: static --endpoints win, healthy endpoints first."""

from __future__ import annotations

from trustmesh.control.stream_protocol import Endpoint
from trustmesh.sidecar.config import StaticEndpoint
from trustmesh.sidecar.outbound.discovered_endpoints import DiscoveredEndpoints

API = "spiffe://example.org/api"


def addrs(source: DiscoveredEndpoints, service: str) -> list[str]:
    return [str(e.address) for e in source.endpoints(service)]


def test_healthy_first_disconnected_only_when_none_is_healthy_and_junk_dropped() -> None:
    source = DiscoveredEndpoints()
    assert addrs(source, "api") == []
    source.update(
        "api",
        [Endpoint("10.0.0.1:80", API), Endpoint("10.0.0.2:80", API, "disconnected"), Endpoint("x:1", "nope")],
    )
    assert addrs(source, "api") == ["10.0.0.1:80"]
    assert [str(e.spiffe_id) for e in source.endpoints("api")] == [API]
    source.update("api", [Endpoint("10.0.0.2:80", API, "disconnected")])
    assert addrs(source, "api") == ["10.0.0.2:80"]
    source.update("api", [])
    assert addrs(source, "api") == []


def test_static_endpoints_override_discovery_per_service() -> None:
    source = DiscoveredEndpoints([StaticEndpoint.parse(f"api=127.0.0.1:9000@{API}")])
    source.update("api", [Endpoint("10.0.0.1:80", API)])
    source.update("web", [Endpoint("10.0.0.3:80", API)])
    assert addrs(source, "api") == ["127.0.0.1:9000"]
    assert addrs(source, "web") == ["10.0.0.3:80"]
