"""Test harness for the proxies: a real CA, identities, an echo app and small HTTP clients.

Everything runs in-process on loopback with real sockets and real TLS. The echo app is
written with h11 (not the sidecar's parser) so the proxies are checked by an independent
HTTP implementation.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h11
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.ca.forge import make_csr
from trustmesh.ca import CertificateAuthority
from trustmesh.clock import SystemClock
from trustmesh.identity.bundle import TrustBundle
from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.sidecar import tls

TRUST_DOMAIN = "example.org"
WEB = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
API = SpiffeId.parse("spiffe://example.org/ns/default/sa/api")
OTHER = SpiffeId.parse("spiffe://example.org/ns/default/sa/other")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    ca: CertificateAuthority
    state_dir: Path

    @property
    def bundle(self) -> TrustBundle:
        return self.ca.bundle()

    @property
    def roots_pem(self) -> bytes:
        return self.ca.bundle().to_pem()

    def issue(self, spiffe_id: SpiffeId) -> tuple[bytes, bytes]:
        """(chain PEM, key PEM) of a fresh SVID for `spiffe_id`."""
        key, csr_pem = make_csr()
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        csr = x509.load_pem_x509_csr(csr_pem)
        issued = self.ca.sign_x509_svid(csr, spiffe_id)
        return issued.chain_pem(), key_to_pem(key)

    def identity(self, spiffe_id: SpiffeId) -> StaticIdentity:
        chain_pem, key_pem = self.issue(spiffe_id)
        return StaticIdentity(spiffe_id, chain_pem, key_pem, self)


def make_pki(tmp: Path) -> Pki:
    state = tmp / "ca"
    return Pki(CertificateAuthority.init(state, TRUST_DOMAIN, clock=SystemClock()), state)


class StaticIdentity:
    """An IdentityView over one SVID that never rotates (the lifecycle is helper-5's)."""

    def __init__(self, spiffe_id: SpiffeId, chain_pem: bytes, key_pem: bytes, pki: Pki) -> None:
        self._id = spiffe_id
        self._pki = pki
        self.chain_pem = chain_pem
        self.key_pem = key_pem
        self._server = tls.server_context(chain_pem, key_pem, pki.roots_pem)
        self._client = tls.client_context(chain_pem, key_pem, pki.roots_pem)
        self._bundle = pki.bundle
        self.is_serving = True

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._id

    def server_context(self) -> ssl.SSLContext:
        return self._server

    def client_context(self) -> ssl.SSLContext:
        return self._client

    def bundle(self) -> TrustBundle:
        return self._bundle

    def now(self) -> datetime:
        return datetime.now(UTC)

    def serving(self) -> bool:
        return self.is_serving


# ---------------------------------------------------------------- echo app


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_len: int
    body_sha256: str

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


@dataclass
class EchoApp:
    """An HTTP/1.1 app (h11) that answers every request with a JSON echo of what it saw.

    It streams request bodies (hashing, never storing them) and counts connections, so a
    test can assert that a refused caller never reached it.
    """

    port: int = 0
    requests: list[SeenRequest] = field(default_factory=list)
    connections: int = 0
    raw_bytes: int = 0
    # Behaviour a test may change at any time (traffic tests: a failing or slow endpoint).
    status: int = 200
    delay: float = 0.0  # seconds before answering (a large value: a hanging app)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await self._next(stream, conn)
                if event is None or isinstance(event, h11.ConnectionClosed):
                    return
                assert isinstance(event, h11.Request)
                digest = hashlib.sha256()
                length = 0
                while True:
                    ev = await self._next(stream, conn)
                    if ev is None:
                        return
                    if isinstance(ev, h11.Data):
                        digest.update(ev.data)
                        length += len(ev.data)
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                seen = SeenRequest(
                    event.method.decode(),
                    event.target.decode(),
                    [(n.decode(), v.decode()) for n, v in event.headers],
                    length,
                    digest.hexdigest(),
                )
                self.requests.append(seen)
                body = json.dumps(seen.__dict__).encode()
                if self.delay:
                    await trio.sleep(self.delay)
                await stream.send_all(
                    conn.send(
                        h11.Response(
                            status_code=self.status,
                            headers=[
                                ("content-type", "application/json"),
                                ("content-length", str(len(body))),
                            ],
                        )
                    )
                    or b""
                )
                if event.method != b"HEAD":
                    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    async def _next(self, stream: trio.SocketStream, conn: h11.Connection) -> h11.Event | None:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                self.raw_bytes += len(data)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return None
                continue
            if event is h11.PAUSED:
                return None
            return event  # type: ignore[return-value]


# ---------------------------------------------------------------- clients


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def json(self) -> dict[str, object]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


class HttpClient:
    """A keep-alive HTTP/1.1 client (h11) over any trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | AsyncIterator[bytes] | None = None,
    ) -> Response:
        hdrs = [("host", "svc"), *headers]
        if isinstance(body, bytes):
            hdrs.append(("content-length", str(len(body))))
        elif body is not None:
            hdrs.append(("transfer-encoding", "chunked"))
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        await self.stream.send_all(
            self.conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
        )
        if isinstance(body, bytes):
            if body:
                await self.stream.send_all(self.conn.send(h11.Data(data=body)) or b"")
        elif body is not None:
            async for piece in body:
                await self.stream.send_all(self.conn.send(h11.Data(data=piece)) or b"")
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()) or b"")
        return await self.read_response()

    async def read_response(self) -> Response:
        status = 0
        headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = [(n.decode(), v.decode()) for n, v in event.headers]
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("closed before a response")


async def open_plain(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def open_tls(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname="sidecar")
    await stream.do_handshake()
    return stream


async def raw_exchange(port: int, data: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Send raw bytes (TLS if `context`), then read until the server closes; all it sent back."""
    stream: trio.abc.Stream = await (open_tls(port, context) if context else open_plain(port))
    got: list[bytes] = []
    try:
        await stream.send_all(data)
        with trio.fail_after(10):
            while True:
                piece = await stream.receive_some(65536)
                if not piece:
                    break
                got.append(piece)
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    return b"".join(got)


def client_context(identity: StaticIdentity) -> ssl.SSLContext:
    """A test client presenting `identity`'s SVID (as another sidecar would)."""
    return tls.client_context(identity.chain_pem, identity.key_pem, identity._pki.roots_pem)


def bare_client_context(
    roots_pem: bytes, chain_pem: bytes | None = None, key_pem: bytes | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=roots_pem.decode())
    if chain_pem is not None and key_pem is not None:
        import tempfile

        with tempfile.NamedTemporaryFile() as f:
            f.write(key_pem + b"\n" + chain_pem)
            f.flush()
            ctx.load_cert_chain(f.name)
    return ctx


def vm_rss_kib() -> int:
    """This process's resident set size, from /proc (no psutil)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ = timedelta  # re-exported for tests building Limits


# ---------------------------------------------------------------- running proxies

from contextlib import asynccontextmanager  # noqa: E402
from typing import Any  # noqa: E402

from trustmesh.sidecar.config import HostPort, InboundConfig, Limits  # noqa: E402
from trustmesh.sidecar.counters import ProxyCounters  # noqa: E402
from trustmesh.sidecar.drain import Drain  # noqa: E402
from trustmesh.sidecar.inbound import AllowTrustDomain, serve_inbound  # noqa: E402
from trustmesh.sidecar.inbound.authorize import Authorizer  # noqa: E402


@dataclass
class RunningInbound:
    port: int
    app: EchoApp
    counters: ProxyCounters
    drain: Drain
    done: trio.Event


@asynccontextmanager
async def inbound_running(
    identity: StaticIdentity,
    *,
    protocol: str = "http",
    limits: Limits | None = None,
    app_port: int | None = None,
    authorizer: Authorizer | None = None,
) -> AsyncIterator[RunningInbound]:
    """An echo app behind an inbound sidecar; both stopped on exit (drain, then cancel)."""
    limits = limits or Limits(drain_timeout=timedelta(seconds=2))
    app = EchoApp()
    counters = ProxyCounters()
    drain = Drain()
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        port = app_port if app_port is not None else await nursery.start(app.serve)
        cfg = InboundConfig(HostPort("127.0.0.1", 0), HostPort("127.0.0.1", port), protocol)  # type: ignore[arg-type]

        async def run(task_status: trio.TaskStatus[HostPort] = trio.TASK_STATUS_IGNORED) -> None:
            await serve_inbound(
                cfg,
                identity,
                authorizer if authorizer is not None else AllowTrustDomain(TRUST_DOMAIN),
                limits,
                drain=drain,
                counters=counters,
                task_status=task_status,
            )
            done.set()

        bound = await nursery.start(run)
        try:
            yield RunningInbound(bound.port, app, counters, drain, done)
        finally:
            drain.begin("test over")
            with trio.move_on_after(5):
                await done.wait()
            nursery.cancel_scope.cancel()


from trustmesh.sidecar.config import OutboundConfig, StaticEndpoint  # noqa: E402
from trustmesh.sidecar.outbound import serve_outbound  # noqa: E402


@dataclass
class RunningOutbound:
    port: int
    counters: ProxyCounters
    drain: Drain
    done: trio.Event


@asynccontextmanager
async def outbound_running(
    identity: StaticIdentity,
    endpoints: Sequence[StaticEndpoint],
    *,
    service: str = "api",
    protocol: str = "http",
    limits: Limits | None = None,
    **traffic: Any,
) -> AsyncIterator[RunningOutbound]:
    """`traffic`: serve_outbound's traffic options (settings, clock, balancer, traffic_counters)."""
    limits = limits or Limits(drain_timeout=timedelta(seconds=2))
    counters = ProxyCounters()
    drain = Drain()
    done = trio.Event()
    cfg = OutboundConfig(service, HostPort("127.0.0.1", 0), protocol)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[HostPort] = trio.TASK_STATUS_IGNORED) -> None:
            await serve_outbound(
                cfg,
                identity,
                endpoints,
                limits,
                drain=drain,
                counters=counters,
                task_status=task_status,
                **traffic,
            )
            done.set()

        bound = await nursery.start(run)
        try:
            yield RunningOutbound(bound.port, counters, drain, done)
        finally:
            drain.begin("test over")
            with trio.move_on_after(5):
                await done.wait()
            nursery.cancel_scope.cancel()


def endpoint(port: int, spiffe_id: SpiffeId, service: str = "api") -> StaticEndpoint:
    return StaticEndpoint(service, HostPort("127.0.0.1", port), spiffe_id)
