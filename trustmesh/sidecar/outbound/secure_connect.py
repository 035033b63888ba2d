"""mTLS connections to other sidecars: pooled, resumed, and checked by secure naming.

Secure naming: the server's SPIFFE ID must be exactly the one registered for the
endpoint. A valid SVID of another service (a hijacked address, a stale endpoint list) is
refused here with `UpstreamError(502, "secure-naming")` and a log event, before a byte of
the request is sent.

Reuse, in order of what it saves: a pooled kept-alive connection (no handshake at all);
else a TLS 1.3 resumption with the last session ticket from that endpoint (no certificate
signatures); else a full handshake. `counters.tls_handshakes_out` counts every handshake,
so a test can assert that many requests cost one.
"""

from __future__ import annotations

import ssl
import weakref

import structlog
import trio

from trustmesh.sidecar.config import HostPort, Limits, StaticEndpoint
from trustmesh.sidecar.conn import Conn, connect_tcp, tls_handshake
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.identity_view import IdentityView
from trustmesh.sidecar.pool import ConnPool
from trustmesh.sidecar.tls import PeerRefused, PeerValidator
from trustmesh.tracing.metrics import SidecarMetrics

log = structlog.get_logger(__name__)

_MAX_IDLE_PER_ENDPOINT = 256


class UpstreamError(Exception):
    """No usable connection to an endpoint; `status`/`code` are what the app is answered."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class SecureConnector:
    """Hands out mTLS connections to endpoints, from the pool or freshly made and checked."""

    def __init__(
        self,
        identity: IdentityView,
        limits: Limits,
        *,
        counters: ProxyCounters,
        validator: PeerValidator,
        listener: str,
        metrics: SidecarMetrics | None = None,
    ) -> None:
        self._identity = identity
        self._metrics = metrics
        self._connect_timeout = limits.connect_timeout.total_seconds()
        self._counters = counters
        self._validator = validator
        self._listener = listener
        self.pool: ConnPool[HostPort] = ConnPool(
            max_idle_per_key=_MAX_IDLE_PER_ENDPOINT, idle_timeout=limits.idle_timeout.total_seconds()
        )
        # Last session per endpoint, with the context it belongs to (a session only
        # resumes with the SSLContext that made it; a rotated SVID means a new context).
        self._sessions: dict[HostPort, tuple[ssl.SSLContext, ssl.SSLSession]] = {}
        # New connections whose session ticket has not been read yet (see `put`).
        self._fresh: weakref.WeakSet[Conn] = weakref.WeakSet()

    async def get(self, ep: StaticEndpoint, connect_timeout: float | None = None) -> tuple[Conn, bool]:
        """(connection, reused): a pooled one if any, else a new checked one.

        `connect_timeout` (seconds, TCP and TLS handshake together) overrides the default
        from `Limits`: a TrafficPolicy may set it per service.
        """
        conn = self.pool.get(ep.address)
        if conn is not None:
            return conn, True
        return await self.connect(ep, connect_timeout), False

    def put(self, ep: StaticEndpoint, conn: Conn) -> None:
        """Return a connection after a clean exchange, and keep its session ticket.

        The session is read once per new connection (its ticket arrives with the first
        response): `SSLSocket.session` builds a new object each call, and reading it on
        every request cost 30% of the process in a profile.
        """
        sock = conn.sock
        if conn in self._fresh and isinstance(sock, ssl.SSLSocket):
            self._fresh.discard(conn)
            session = sock.session
            if session is not None and session.has_ticket and sock.context is not None:
                self._sessions[ep.address] = (sock.context, session)
        self.pool.put(ep.address, conn)

    async def connect(self, ep: StaticEndpoint, connect_timeout: float | None = None) -> Conn:
        context = self._identity.client_context()
        remembered = self._sessions.get(ep.address)
        session = remembered[1] if remembered is not None and remembered[0] is context else None
        try:
            with trio.fail_after(connect_timeout if connect_timeout is not None else self._connect_timeout):
                sock = await connect_tcp(ep.address.host, ep.address.port)
                tls = context.wrap_socket(sock, do_handshake_on_connect=False, session=session)
                conn = Conn(tls)
                try:
                    await tls_handshake(tls)
                except BaseException:
                    conn.close()
                    raise
        except trio.TooSlowError:
            raise self._fail(ep, 504, "connect-timeout", "no connection within the connect timeout") from None
        except ssl.SSLError as exc:
            self._handshake_failed(exc.reason or type(exc).__name__)
            raise self._fail(ep, 502, "tls-handshake", str(exc)) from None
        except OSError as exc:
            raise self._fail(ep, 503, "connect-failed", exc.strerror or str(exc)) from None
        self._counters.tls_handshakes_out += 1
        if tls.session_reused:
            self._counters.tls_resumed_out += 1
        try:
            peer = self._validator.check(tls, self._identity.bundle(), self._identity.now())
        except PeerRefused as refused:
            conn.close()
            self._counters.peers_refused += 1
            self._handshake_failed(refused.reason)
            raise self._fail(ep, 502, "peer-refused", refused.reason + ": " + refused.detail) from None
        if peer.spiffe_id != ep.spiffe_id:
            conn.close()
            self._counters.peers_refused += 1
            self._handshake_failed("secure-naming")
            self._sessions.pop(ep.address, None)
            log.warning(
                "secure_naming_refused",
                listener=self._listener,
                service=ep.service,
                endpoint=str(ep.address),
                expected=str(ep.spiffe_id),
                presented=str(peer.spiffe_id),
            )
            raise UpstreamError(502, "secure-naming", "endpoint presented " + str(peer.spiffe_id))
        self._fresh.add(conn)
        if self._metrics is not None:
            self._metrics.tls_handshake("outbound")
        return conn

    def _handshake_failed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.tls_handshake("outbound", failure_reason=reason)

    def _fail(self, ep: StaticEndpoint, status: int, code: str, detail: str) -> UpstreamError:
        log.warning(
            "upstream_connect_failed",
            listener=self._listener,
            service=ep.service,
            endpoint=str(ep.address),
            reason=code,
            detail=detail,
        )
        return UpstreamError(status, code, detail)
