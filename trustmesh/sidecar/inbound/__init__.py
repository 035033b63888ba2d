"""trustmesh.sidecar.inbound: mTLS in from other sidecars, plain to the local app."""

from trustmesh.sidecar.inbound.authorize import AllowTrustDomain, Authorizer, AuthzDecision
from trustmesh.sidecar.inbound.serve import serve_inbound

__all__ = ["AllowTrustDomain", "Authorizer", "AuthzDecision", "serve_inbound"]
