"""TLS for the data plane: contexts between sidecars, and the SPIFFE check of the peer.

OpenSSL checks that the peer's chain reaches one of our roots, and nothing more: it
accepts a CA-flagged leaf, a leaf with two URI SANs, a leaf allowed to sign certificates
or a leaf naming another trust domain, as long as it chains. So every handshake is
followed by `PeerValidator.check`, which re-validates the chain the peer sent with the
X.509-SVID rules of `trustmesh.identity` before a single byte is forwarded.

Choices, each deliberate:
- TLS 1.3 only: one round trip, no renegotiation, no legacy cipher suites to audit.
- `check_hostname` off: a sidecar is named by its SPIFFE ID (URI SAN), not a DNS name;
  the ID is compared by the caller (secure naming on the outbound side).
- Session tickets on (one per handshake): sidecars talk to the same few peers over and
  over, and a resumed TLS 1.3 handshake skips both certificate signatures. A ticket is only
  valid with the `SSLContext` that issued it, so the identity lifecycle must hand out the
  same server context until the SVID rotates (it does: `IdentityView.server_context()`).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustmesh.identity.bundle import TrustBundle
from trustmesh.identity.errors import SvidError
from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.identity.x509_svid import validate_x509_svid

# Enough for every peer a sidecar talks to between two rotations; a bound, so a peer
# cycling through fresh certificates cannot grow the cache without limit.
DEFAULT_PEER_CACHE_ENTRIES = 4096

# One ticket per full handshake is enough for the connection pool that reuses it; OpenSSL's
# default of two costs a second encryption per handshake for nothing.
_TICKETS_PER_HANDSHAKE = 1


class PeerRefused(Exception):
    """The peer completed the TLS handshake but is not an acceptable SPIFFE identity.

    `reason` is a short code for logs and metrics (the `SvidError` reason, or `no_certificate`).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class VerifiedPeer:
    """What the proxies know about the other end once `PeerValidator.check` passed."""

    spiffe_id: SpiffeId
    leaf_sha256: str  # hex of sha256(leaf DER): the `Hash=` of x-forwarded-client-cert
    not_after: datetime  # earliest expiry in the validated chain


def _load_svid(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load key and chain into `context` through a private temporary file.

    `ssl` can only read certificates and keys from files. The file lives in a fresh 0700
    directory, is 0600, and is removed before this returns, so the key is on disk (tmpfs
    on most systems) only for the duration of the load.
    """
    with tempfile.TemporaryDirectory(prefix="trustmesh-tls-") as tmp:
        path = Path(tmp) / "svid.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
            f.write(b"\n")
            f.write(chain_pem)
        context.load_cert_chain(path)


def _base_context(purpose: int, chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=roots_pem.decode("ascii"))
    _load_svid(context, chain_pem, key_pem)
    return context


def server_context(chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> ssl.SSLContext:
    """Context for accepting mTLS: TLS 1.3 only, our SVID chain sent, a client certificate required.

    `chain_pem` is leaf first, then the intermediate, so peers can build the path to the root.
    """
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, chain_pem, key_pem, roots_pem)
    context.options &= ~ssl.OP_NO_TICKET
    context.num_tickets = _TICKETS_PER_HANDSHAKE
    return context


def client_context(chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> ssl.SSLContext:
    """Context for originating mTLS: TLS 1.3 only, our SVID chain sent, a server certificate required."""
    return _base_context(ssl.PROTOCOL_TLS_CLIENT, chain_pem, key_pem, roots_pem)


def peer_chain_der(sock: ssl.SSLSocket) -> list[bytes]:
    """The certificates the peer sent, leaf first, as DER.

    Python 3.11 has no public API for the peer's chain (`get_unverified_chain` is public from
    3.13); the private `_sslobj` carries it since 3.10. On the server side OpenSSL leaves the
    leaf out of the list; CPython puts it back. A resumed session may keep only the leaf.
    A server that asked for no certificate, or was sent none, gets an empty list (3.11
    puts a None in the chain then).
    """
    sslobj = sock._sslobj  # type: ignore[attr-defined]  # private on 3.11, see docstring
    chain = sslobj.get_unverified_chain() if sslobj is not None else None
    if chain:
        return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in chain if cert is not None]  # type: ignore[attr-defined]
    leaf = sock.getpeercert(binary_form=True)
    return [leaf] if leaf else []


class PeerValidator:
    """Re-validates each peer chain as an X.509-SVID, with a bounded cache per leaf.

    The cache is keyed by the leaf's DER: OpenSSL has already checked in this very handshake
    that the leaf chains to a root of the current context, so a leaf that passed the SVID
    rules once passes them again until it expires. Swapping the bundle (root rotation)
    empties the cache. Refusals are not cached: a refused peer is rare and may be an attack,
    and re-validating costs no more than the handshake it just made us do.
    """

    def __init__(self, max_entries: int = DEFAULT_PEER_CACHE_ENTRIES) -> None:
        self._max_entries = max_entries
        self._cache: OrderedDict[bytes, VerifiedPeer] = OrderedDict()
        self._bundle: TrustBundle | None = None
        self.validations = 0  # full validations performed (tests assert the cache works)

    def check(self, sock: ssl.SSLSocket, bundle: TrustBundle, now: datetime) -> VerifiedPeer:
        """Return the verified peer of a completed handshake, or raise `PeerRefused`."""
        if bundle is not self._bundle:
            self._cache.clear()
            self._bundle = bundle
        leaf = sock.getpeercert(binary_form=True)
        if not leaf:
            raise PeerRefused("no_certificate", "peer presented no certificate")
        cached = self._cache.get(leaf)
        if cached is not None:
            if now < cached.not_after:
                self._cache.move_to_end(leaf)
                return cached
            del self._cache[leaf]
        return self._validate(leaf, peer_chain_der(sock), bundle, now)

    def check_chain(self, chain_der: Sequence[bytes], bundle: TrustBundle, now: datetime) -> VerifiedPeer:
        """Validate a chain given as DER (leaf first) without a socket; same cache and rules."""
        if bundle is not self._bundle:
            self._cache.clear()
            self._bundle = bundle
        if not chain_der:
            raise PeerRefused("no_certificate", "peer presented no certificate")
        return self._validate(chain_der[0], chain_der, bundle, now)

    def _validate(
        self, leaf: bytes, chain_der: Sequence[bytes], bundle: TrustBundle, now: datetime
    ) -> VerifiedPeer:
        self.validations += 1
        try:
            chain = [x509.load_der_x509_certificate(der) for der in chain_der]
        except ValueError as exc:
            raise PeerRefused("malformed_certificate", str(exc)) from exc
        if chain and chain[0].public_bytes(serialization.Encoding.DER) != leaf:
            # get_unverified_chain and getpeercert disagree: never trust either.
            raise PeerRefused("chain_mismatch", "peer chain does not start with the peer certificate")
        try:
            spiffe_id = validate_x509_svid(chain, bundle, now)
        except SvidError as exc:
            raise PeerRefused(exc.reason, str(exc)) from exc
        peer = VerifiedPeer(
            spiffe_id=spiffe_id,
            leaf_sha256=hashlib.sha256(leaf).hexdigest(),
            not_after=min(cert.not_valid_after_utc for cert in chain),
        )
        self._cache[leaf] = peer
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return peer
