"""Running the control plane: TLS accept loop, hypercorn per connection, background rotation.

The accept loop is ours rather than hypercorn's `serve()` because the API authenticates
callers by their TLS client certificate and hypercorn does not pass it to the app (see
`tls.py`). For each TCP connection we:
1. wrap it in a stdlib `ssl.SSLSocket` with `ServerTls.context` (TLS 1.3 only, client cert
   optional) and complete the handshake ourselves (bounded by a timeout): `TlsStream`
   drives it with trio's readiness waits, measured faster than `trio.SSLStream`,
2. put the peer's chain in the `PEER_CHAIN` context variable of this connection's task,
3. hand the stream to hypercorn's trio `TCPServer` (`ApiConnection`: fewer scheduler trips),
   whose request tasks inherit the variable.
Hypercorn still does all of HTTP (h11 parsing, keep-alive, ASGI).

Background work lives in the same nursery: the intermediate rotates at half-life
(`rotate_if_due`) and the control plane's own SVID is reissued at half-life or when the
trust roots change.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio
from cryptography import x509
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from starlette.routing import BaseRoute

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import Clock, SystemClock
from trustmesh.control.api_connection import ApiConnection
from trustmesh.control.app import PEER_CHAIN, build_app
from trustmesh.control.gui.listener import GuiListener
from trustmesh.control.issuer import DEFAULT_EXPIRED_RENEW_GRACE, Issuer, record_ca_keys
from trustmesh.control.policy_service import PolicyService
from trustmesh.control.stream import StreamHub, StreamSettings
from trustmesh.control.tls import ServerTls
from trustmesh.control.tls_stream import TlsStream
from trustmesh.sidecar.tls import peer_chain_der
from trustmesh.startup_gc import freeze_startup_objects
from trustmesh.store import Store, open_store

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = structlog.get_logger(__name__)

# How often the background task asks "is a rotation due?". Rotations happen at half-life
# of lifetimes measured in hours, so a check every half minute is early enough.
DEFAULT_ROTATION_CHECK = timedelta(seconds=30)
# A client that cannot finish a TLS handshake in this time is not worth a task slot.
HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_TIMEOUT = timedelta(seconds=5)
# After SIGTERM, in-flight requests get this long to finish before they are cancelled.
GRACEFUL_SHUTDOWN_S = 5.0


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) to a pair; raise ValueError saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen address {text!r} must be host:port, e.g. 127.0.0.1:8443")
    host = host.removeprefix("[").removesuffix("]")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {text!r} has an invalid port")
    return host, int(port_text)


@dataclass
class ControlPlane:
    """One control plane over one state dir. `await nursery.start(cp.run)` returns once serving."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    svid_ttl: timedelta | None = None
    # How long after expiry an SVID may still be renewed (Issuer._recover); 0 turns it off.
    expired_renew_grace: timedelta = DEFAULT_EXPIRED_RENEW_GRACE
    clock: Clock = field(default_factory=SystemClock)
    store_url: str | None = None
    rotation_check: timedelta = DEFAULT_ROTATION_CHECK
    # An idle kept-alive client connection is closed after this (hypercorn's default).
    keep_alive_timeout: timedelta = DEFAULT_KEEP_ALIVE_TIMEOUT
    policy: PolicyService | None = None
    # The web GUI and OTLP receiver on their own plain-HTTP listener (trustmesh/control/gui).
    gui: GuiListener | None = None
    # OpenTelemetry tracer for join/renew/policy-activation spans; None when tracing is off.
    tracer: Tracer | None = None
    # The configuration stream (/v1/stream) and its registry; see trustmesh/control/stream.py.
    stream_settings: StreamSettings = field(default_factory=StreamSettings)
    stream: StreamHub | None = field(default=None, init=False)
    ca: CertificateAuthority | None = field(default=None, init=False)
    store: Store | None = field(default=None, init=False)
    issuer: Issuer | None = field(default=None, init=False)
    tls: ServerTls | None = field(default=None, init=False)
    bound_port: int = field(default=0, init=False)
    # Freeze start-up objects out of the cyclic GC once serving (startup_gc.py). The CLI
    # turns it on; in-process tests leave it off (it would freeze the test runner too).
    freeze_gc: bool = False
    _stop: trio.Event = field(default_factory=trio.Event, init=False)

    @property
    def listen_address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.bound_port}"

    def stop(self) -> None:
        """Ask `run` to stop accepting, let in-flight requests finish, and return."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        ca = CertificateAuthority.load(self.state_dir, clock=self.clock)
        store = await open_store(self.state_dir, self.store_url)
        try:
            self.ca, self.store = ca, store
            self.issuer = Issuer(
                ca,
                store,
                self.clock,
                svid_ttl=self.svid_ttl,
                expired_renew_grace=self.expired_renew_grace,
                tracer=self.tracer,
            )
            if self.policy is not None:
                self.policy.tracer = self.tracer
            self.tls = ServerTls(ca, self.clock, self.host, self.svid_ttl)
            self.tls.refresh()
            self.stream = StreamHub(
                self.issuer, store, self.clock, policy=self.policy, settings=self.stream_settings
            )
            await self._record_ca_keys()
            await self._serve(task_status)
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()
            log.info("control_plane_stopped")

    async def _serve(self, task_status: trio.TaskStatus[str]) -> None:
        assert self.issuer is not None and self.tls is not None and self.stream is not None
        extra_routes: list[BaseRoute] = [*(self.policy.routes(self.issuer) if self.policy else [])]
        extra_routes += self.stream.routes()
        app = ASGIWrapper(build_app(self.issuer, extra_routes))  # type: ignore[arg-type]  # ASGI typings differ
        config = Config()
        config.keep_alive_timeout = self.keep_alive_timeout.total_seconds()
        config.include_server_header = False  # no software banner for scanners (and one header less)
        context = WorkerContext(None)
        tls = self.tls

        async def handle(tcp: trio.SocketStream) -> None:
            # The accepted socket leaves trio's SocketStream for stdlib ssl (see tls_stream.py).
            raw = socket.socket(fileno=tcp.socket.detach())
            raw.setblocking(False)
            sock: socket.socket = raw
            try:
                # wrap_socket takes the descriptor over: from here `sock` is what to close.
                sock = tls.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    stream = await TlsStream.accept(sock)
            except (ssl.SSLError, OSError, trio.TooSlowError) as exc:
                # A client with a foreign CA, a plaintext client, a scanner: not our problem to fix.
                log.info("tls_handshake_failed", error=type(exc).__name__, detail=str(exc))
                trio.lowlevel.notify_closing(sock)
                sock.close()
                return
            try:
                chain = tuple(x509.load_der_x509_certificate(der) for der in peer_chain_der(stream.socket))
            except ValueError as exc:  # OpenSSL accepted it, cryptography cannot parse it
                log.info("tls_client_chain_unparsable", detail=str(exc))
                await stream.aclose()
                return
            PEER_CHAIN.set(chain)
            await ApiConnection(app, config, context, ConnectionState({}), stream).run()

        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as main:
                if self.policy is not None:
                    await main.start(self.policy.run)
                await main.start(self.stream.run)
                if self.gui is not None:
                    await main.start(self.gui.serve, self)
                main.start_soon(lambda: trio.serve_listeners(handle, listeners, handler_nursery=connections))
                main.start_soon(self._rotation_loop)
                log.info("control_plane_ready", listen=self.listen_address, state_dir=str(self.state_dir))
                task_status.started(self.listen_address)
                if self.freeze_gc:
                    freeze_startup_objects()
                await self._stop.wait()
                main.cancel_scope.cancel()
            # Idle keep-alive connections close at once; busy ones get a grace period.
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + GRACEFUL_SHUTDOWN_S

    async def _rotation_loop(self) -> None:
        # The control plane's own SVID has the --svid-ttl lifetime; with a short one (tests,
        # drills) a 30 s check would let it expire, so look at least four times per lifetime.
        interval = self.rotation_check
        if self.svid_ttl is not None:
            interval = min(interval, self.svid_ttl / 4)
        while True:
            await trio.sleep(interval.total_seconds())
            await self.rotate_now()

    async def rotate_now(self) -> None:
        """One rotation check (the background loop calls this; tests call it with a ManualClock)."""
        assert self.ca is not None and self.tls is not None
        if self.ca.rotate_if_due():
            log.info("intermediate_rotated")
            self.tls.refresh()
            await self._record_ca_keys()
            if self.stream is not None:
                self.stream.bundle_changed()
        elif self.tls.due():
            self.tls.refresh()
            await self._record_ca_keys()

    async def _record_ca_keys(self) -> None:
        assert self.ca is not None and self.store is not None
        await record_ca_keys(self.store, self.ca, self.clock.now())
