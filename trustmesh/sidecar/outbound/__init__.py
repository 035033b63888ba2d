"""trustmesh.sidecar.outbound: plain in from the local app, mTLS out to other sidecars."""

from trustmesh.sidecar.outbound.balance import Balancer, RoundRobin
from trustmesh.sidecar.outbound.endpoints import EndpointSource, StaticEndpoints
from trustmesh.sidecar.outbound.serve import serve_outbound

__all__ = ["Balancer", "EndpointSource", "RoundRobin", "StaticEndpoints", "serve_outbound"]
