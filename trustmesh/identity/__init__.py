"""trustmesh.identity: SPIFFE IDs, X.509-/JWT-SVID validation and trust bundles.

Pure code with no I/O: the CA, the control plane and the sidecars all import these names.
"""

from trustmesh.identity.spiffe_id import InvalidSpiffeId, SpiffeId, validate_trust_domain

__all__ = ["InvalidSpiffeId", "SpiffeId", "validate_trust_domain"]
