"""trustmesh.ca: the identity CA (root, intermediate and JWT keys; signing; rotation; CSR checks).

`CertificateAuthority` is the only holder of private keys; the control plane and CLI call
it and never touch a key. Join tokens live in `trustmesh.ca.join_token`.
"""

from trustmesh.ca.authority import (
    DEFAULT_INTERMEDIATE_TTL,
    DEFAULT_JWT_SVID_TTL,
    DEFAULT_ROOT_OVERLAP,
    DEFAULT_ROOT_TTL,
    DEFAULT_X509_SVID_TTL,
    CaAlreadyInitialised,
    CaError,
    CertificateAuthority,
    IssuedX509Svid,
    RootRotation,
    spki_fingerprint,
)
from trustmesh.ca.csr import CsrRejected, check_csr
from trustmesh.ca.keystore import CaStateError

__all__ = [
    "DEFAULT_INTERMEDIATE_TTL",
    "DEFAULT_JWT_SVID_TTL",
    "DEFAULT_ROOT_OVERLAP",
    "DEFAULT_ROOT_TTL",
    "DEFAULT_X509_SVID_TTL",
    "CaAlreadyInitialised",
    "CaError",
    "CaStateError",
    "CertificateAuthority",
    "CsrRejected",
    "IssuedX509Svid",
    "RootRotation",
    "check_csr",
    "spki_fingerprint",
]
