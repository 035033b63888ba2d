"""The seam between the sidecar's identity lifecycle and its proxies.

The proxies (inbound/, outbound/) never see keys or the control plane: they ask
this view for the TLS context to use for the *next* handshake and for the trust
bundle to validate peers with. Rotation swaps what the view returns; connections
already established keep the context they were made with.
"""

from __future__ import annotations

import ssl
from datetime import datetime
from typing import Protocol

from trustmesh.identity.bundle import TrustBundle
from trustmesh.identity.spiffe_id import SpiffeId


class IdentityView(Protocol):
    @property
    def spiffe_id(self) -> SpiffeId: ...

    def server_context(self) -> ssl.SSLContext:
        """Context for accepting mTLS: TLS 1.3 only, our current SVID, client cert required."""
        ...

    def client_context(self) -> ssl.SSLContext:
        """Context for originating mTLS: TLS 1.3 only, our current SVID, server cert required."""
        ...

    def bundle(self) -> TrustBundle:
        """Current trust bundle of our trust domain (roots change during root rotation)."""
        ...

    def now(self) -> datetime:
        """Wall-clock time for certificate validity checks (injected clock)."""
        ...

    def serving(self) -> bool:
        """False once the SVID has expired: fail closed, accept nothing new."""
        ...
