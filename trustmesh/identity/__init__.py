"""trustmesh.identity: SPIFFE IDs, X.509-/JWT-SVID validation and trust bundles.

Pure code with no I/O: the CA, the control plane and the sidecars all import these names.
"""

from trustmesh.identity.bundle import BundleError, PublicKey, TrustBundle
from trustmesh.identity.errors import SvidError
from trustmesh.identity.jwt_svid import JwtSvid, validate_jwt_svid
from trustmesh.identity.spiffe_id import InvalidSpiffeId, SpiffeId, validate_trust_domain
from trustmesh.identity.x509_svid import leaf_spiffe_id, validate_x509_svid

__all__ = [
    "BundleError",
    "InvalidSpiffeId",
    "JwtSvid",
    "PublicKey",
    "SpiffeId",
    "SvidError",
    "TrustBundle",
    "leaf_spiffe_id",
    "validate_jwt_svid",
    "validate_trust_domain",
    "validate_x509_svid",
]
