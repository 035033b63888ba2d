"""`x-forwarded-client-cert`: the caller's identity, as the app behind us reads it.

Envoy's format, so apps written for Envoy/Istio read it unchanged:
  `By=<our SPIFFE ID>;Hash=<hex sha256 of the caller's leaf DER>;URI=<caller's SPIFFE ID>`.
Any XFCC arriving from outside is removed first (`STRIP`): only the sidecar may assert who
called. SPIFFE IDs cannot contain `;`, `,`, `=` or `"` (ID-08/ID-15), so no quoting is needed.
"""

from __future__ import annotations

from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.sidecar.http.headers import XFCC
from trustmesh.sidecar.tls import VerifiedPeer

STRIP = frozenset({XFCC})


def xfcc_field(own: SpiffeId, peer: VerifiedPeer) -> bytes:
    """The serialized header line (computed once per connection: the peer cannot change)."""
    value = "By=" + str(own) + ";Hash=" + peer.leaf_sha256 + ";URI=" + str(peer.spiffe_id)
    return XFCC + b": " + value.encode("ascii") + b"\r\n"
