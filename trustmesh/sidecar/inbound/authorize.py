"""Who may call: the seam the policy engine (issue 4) plugs into.

Until policy is wired in, `AllowTrustDomain` lets any authenticated caller of our own
trust domain through. The caller is already authenticated (require_identity) when an
`Authorizer` is asked; it only decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from trustmesh.identity.spiffe_id import SpiffeId


class AuthzDecision(Protocol):
    """What an authorizer answers. `trustmesh.policy.engine.Decision` has this shape."""

    @property
    def allowed(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class Authorizer(Protocol):
    def authorize_http(self, peer: SpiffeId, method: str, path: str, port: int) -> AuthzDecision:
        """Decide one HTTP request (path is the raw request target)."""
        ...

    def authorize_tcp(self, peer: SpiffeId, port: int) -> AuthzDecision:
        """Decide one opaque TCP connection."""
        ...


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


_ALLOW = Decision(True, "trust-domain")
_DENY = Decision(False, "foreign-trust-domain")


class AllowTrustDomain:
    """Allow every caller whose SPIFFE ID is in `trust_domain` (the pre-policy default).

    require_identity already refuses other trust domains; this check is kept so that the
    authorizer is correct on its own, whoever calls it.
    """

    def __init__(self, trust_domain: str) -> None:
        self._trust_domain = trust_domain

    def authorize_http(self, peer: SpiffeId, method: str, path: str, port: int) -> AuthzDecision:
        return _ALLOW if peer.trust_domain == self._trust_domain else _DENY

    def authorize_tcp(self, peer: SpiffeId, port: int) -> AuthzDecision:
        return _ALLOW if peer.trust_domain == self._trust_domain else _DENY
