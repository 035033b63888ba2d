"""The TLS handshake of an inbound connection and the SPIFFE check of the caller.

Nothing is read from the connection before this passes: a caller with no certificate,
one from a foreign CA, or a leaf our CA's chain vouches for but that breaks an SVID rule
(CA flag, two URI SANs, keyCertSign, another trust domain) is closed here, with one log
event naming the reason.
"""

from __future__ import annotations

import socket
import ssl

import structlog
import trio

from trustmesh.sidecar.conn import Conn, tls_handshake
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.identity_view import IdentityView
from trustmesh.sidecar.tls import PeerRefused, PeerValidator, VerifiedPeer
from trustmesh.tracing.metrics import SidecarMetrics

log = structlog.get_logger(__name__)


async def require_identity(
    sock: socket.socket,
    identity: IdentityView,
    validator: PeerValidator,
    *,
    handshake_timeout: float,
    counters: ProxyCounters,
    listener: str,
    metrics: SidecarMetrics | None = None,
) -> tuple[Conn, VerifiedPeer] | None:
    """Handshake as server and validate the client's SVID; None (socket closed) if refused.

    `metrics` counts the connection as opened here (and closed when refused here; the caller
    counts the close otherwise) and the handshake by outcome.
    """
    if metrics is not None:
        metrics.connection_opened("inbound")
    peer_addr = _peer_address(sock)
    tls = identity.server_context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    conn = Conn(tls)
    try:
        with trio.fail_after(handshake_timeout):
            await tls_handshake(tls)
    except trio.TooSlowError:
        log.info("tls_handshake_failed", listener=listener, peer=peer_addr, reason="timeout")
        _refused(conn, metrics, "timeout")
        return None
    except (ssl.SSLError, OSError) as exc:
        reason = _ssl_reason(exc)
        log.info("tls_handshake_failed", listener=listener, peer=peer_addr, reason=reason)
        _refused(conn, metrics, reason)
        return None
    counters.tls_handshakes_in += 1
    if tls.session_reused:
        counters.tls_resumed_in += 1
    try:
        peer = validator.check(tls, identity.bundle(), identity.now())
    except PeerRefused as refused:
        counters.peers_refused += 1
        log.warning(
            "peer_refused", listener=listener, peer=peer_addr, reason=refused.reason, detail=refused.detail
        )
        _refused(conn, metrics, refused.reason)
        return None
    if metrics is not None:
        metrics.tls_handshake("inbound")
    return conn, peer


def _refused(conn: Conn, metrics: SidecarMetrics | None, reason: str) -> None:
    conn.close()
    if metrics is not None:
        metrics.tls_handshake("inbound", failure_reason=reason)
        metrics.connection_closed("inbound")


def _peer_address(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return str(host) + ":" + str(port)


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else type(exc).__name__
