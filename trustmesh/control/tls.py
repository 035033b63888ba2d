"""TLS for the control plane: its own SVID and the server SSLContext.

Why the control plane does its own TLS instead of letting hypercorn do it: hypercorn
does not pass the client certificate to the ASGI app, and `/v1/renew` and
`/v1/jwt-svid` authenticate callers by exactly that certificate. So `server.py`
accepts TCP, wraps it in a stdlib `ssl.SSLSocket` with the context built here (driven by
`tls_stream.TlsStream`), completes the
handshake, stores the peer chain for the app, and only then hands the stream to
hypercorn's `TCPServer`.

Client certificates are requested (CERT_OPTIONAL: /v1/join and /v1/bundle have no
certificate yet) and verified by OpenSSL against the bundle roots, so a chain from a
foreign CA fails the handshake. OpenSSL's time check is switched off
(X509_V_FLAG_NO_CHECK_TIME): validity is decided by `validate_x509_svid` with the
control plane's injectable clock, so an expired SVID gets a JSON 403 that says
"expired" rather than an opaque TLS alert, and tests need not wait for time to pass.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from cryptography.hazmat.primitives import serialization

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import Clock
from trustmesh.control.join_client import load_chain_into, new_key_and_csr
from trustmesh.identity import SpiffeId

log = structlog.get_logger(__name__)

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME; the ssl module has no name for it.
_X509_V_FLAG_NO_CHECK_TIME = 0x200000

CONTROL_PLANE_PATH = "/trustmesh/control-plane"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def control_plane_id(trust_domain: str) -> SpiffeId:
    return SpiffeId.parse(f"spiffe://{trust_domain}{CONTROL_PLANE_PATH}")


def server_names(host: str) -> tuple[list[str], list[IpAddress]]:
    """DNS and IP SANs for a listen host. A wildcard bind gets loopback plus the host name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return [host], []
    if ip.is_unspecified:
        return ["localhost", socket.gethostname()], [
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        ]
    return [], [ip]


@dataclass(frozen=True)
class _OwnSvid:
    issued_at: datetime
    not_after: datetime
    serial: int


class ServerTls:
    """The control plane's own SVID and the SSLContext that new connections use.

    The SVID is rotated at half-life like any workload's: the new chain is loaded into the
    same SSLContext (OpenSSL applies it to new handshakes only). When the bundle's roots
    change a new SSLContext is built, because OpenSSL can add trust anchors to a context
    but never remove one.
    """

    def __init__(
        self, ca: CertificateAuthority, clock: Clock, host: str, svid_ttl: timedelta | None = None
    ) -> None:
        self._ca = ca
        self._clock = clock
        self._host = host
        self._svid_ttl = svid_ttl
        self._roots_pem: bytes = b""
        self._context: ssl.SSLContext | None = None
        self._svid: _OwnSvid | None = None

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self.refresh()
        assert self._context is not None
        return self._context

    def refresh(self) -> None:
        """Re-read the bundle and issue a new server SVID; build a new context if the roots changed."""
        roots_pem = self._ca.bundle().to_pem()
        if self._context is None or roots_pem != self._roots_pem:
            self._context = self._new_context(roots_pem)
            self._roots_pem = roots_pem
            log.info("control_plane_trust_loaded", roots=roots_pem.count(b"BEGIN CERTIFICATE"))
        self._issue_own_svid(self._context)

    def due(self) -> bool:
        """True when the own SVID is past half its life (or the roots changed)."""
        if self._svid is None or self._ca.bundle().to_pem() != self._roots_pem:
            return True
        half = self._svid.issued_at + (self._svid.not_after - self._svid.issued_at) / 2
        return self._clock.now() >= half

    def _new_context(self, roots_pem: bytes) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= _X509_V_FLAG_NO_CHECK_TIME
        ctx.load_verify_locations(cadata=roots_pem.decode("ascii"))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def _issue_own_svid(self, ctx: ssl.SSLContext) -> None:
        key, csr = new_key_and_csr()
        dns, ips = server_names(self._host)
        spiffe_id = control_plane_id(self._ca.bundle().trust_domain)
        issued = self._ca.sign_x509_svid(csr, spiffe_id, ttl=self._svid_ttl, dns_names=dns, ip_addresses=ips)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        load_chain_into(ctx, issued.chain_pem(), key_pem)
        leaf = issued.chain[0]
        # Half-life counts from issuance, not from notBefore: the CA backdates notBefore for
        # clock skew, which would make a short-lived SVID look past half-life at once.
        self._svid = _OwnSvid(self._clock.now(), leaf.not_valid_after_utc, issued.serial)
        log.info(
            "control_plane_svid_rotated",
            spiffe_id=str(spiffe_id),
            serial=format(issued.serial, "x"),
            expires_at=issued.not_after.isoformat(),
        )


