"""Hot-path design measurements for the sidecar (figures go to docs/sidecar-design.md).

    .venv/bin/python bench/hotpath_compare.py [seconds-per-case]

1. Parsing a typical request head: h11 vs llhttp (httptools, through our RequestParser).
2. Request/response over loopback TLS 1.3 (100-byte request and response, keep-alive,
   8 concurrent connections, client and server in this one process): trio's SSLStream
   vs stdlib ssl.SSLSocket non-blocking, driven by trio.lowlevel.wait_readable/writable
   (trustmesh.sidecar.conn.Conn).
Each case runs a fixed wall time (default 3 s); every loop is bounded by that deadline.
"""

from __future__ import annotations

import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import h11
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sidecar_proxy.harness import API, WEB, make_pki
from trustmesh.sidecar import tls
from trustmesh.sidecar.conn import Conn, connect_tcp, tls_handshake
from trustmesh.sidecar.http.parser import RequestParser

HEAD = (
    b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\n"
    b"host: api.internal:8080\r\nuser-agent: wrk\r\naccept: */*\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    b"x-request-id: 5f0c2a4e9b\r\n\r\n"
)
REQ = b"x" * 100
RESP = b"y" * 100
CONNS = int(__import__("os").environ.get("CONNS", "8"))


def bench_parsers(seconds: float) -> None:
    def run(parse: object, name: str) -> None:
        n = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(1000):
                parse()  # type: ignore[operator]
            n += 1000
        rate = n / seconds
        print(f"parser {name:10s} {rate:>10,.0f} heads/s  {1e6 / rate:6.2f} us/head")

    def with_h11() -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(HEAD)
        conn.next_event()
        conn.next_event()

    def with_httptools() -> None:
        p = RequestParser(65536)
        p.feed(HEAD)
        p.events.popleft()

    run(with_h11, "h11")
    run(with_httptools, "httptools")


async def bench_transport(seconds: float, kind: str, sctx: ssl.SSLContext, cctx: ssl.SSLContext) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    count = [0]
    deadline = trio.current_time() + seconds

    async def serve_one_stdlib(sock: socket.socket) -> None:
        conn = Conn(sctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False))
        await tls_handshake(conn.sock)  # type: ignore[arg-type]
        while data := await conn.recv():
            assert len(data) == len(REQ)
            await conn.send_all(RESP)
        conn.close()

    async def serve_one_trio(sock: socket.socket) -> None:
        stream = trio.SSLStream(
            trio.SocketStream(trio.socket.from_stdlib_socket(sock)), sctx, server_side=True
        )
        try:
            while data := await stream.receive_some(65536):
                assert len(data) == len(REQ)
                await stream.send_all(RESP)
        except trio.BrokenResourceError:
            pass

    async def client_stdlib() -> None:
        sock = await connect_tcp("127.0.0.1", port)
        conn = Conn(cctx.wrap_socket(sock, do_handshake_on_connect=False))
        await tls_handshake(conn.sock)  # type: ignore[arg-type]
        while trio.current_time() < deadline:
            await conn.send_all(REQ)
            await conn.recv()
            count[0] += 1
        conn.close()

    async def client_trio() -> None:
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), cctx, server_hostname="x")
        while trio.current_time() < deadline:
            await stream.send_all(REQ)
            await stream.receive_some(65536)
            count[0] += 1
        await stream.aclose()

    serve_one = serve_one_stdlib if kind == "stdlib" else serve_one_trio
    client = client_stdlib if kind == "stdlib" else client_trio
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            for _ in range(CONNS):
                await trio.lowlevel.wait_readable(listener)
                sock, _ = listener.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(serve_one, sock)

        nursery.start_soon(accept)
        async with trio.open_nursery() as clients:
            for _ in range(CONNS):
                clients.start_soon(client)
        nursery.cancel_scope.cancel()
    listener.close()
    print(
        f"transport {kind:7s} {count[0] / seconds:>10,.0f} req/s (client+server, one process, {CONNS} conns)"
    )


async def bench_pair(seconds: float, pki: object) -> None:
    """Client → outbound → inbound → canned-response backend, all in this process."""
    from datetime import timedelta

    from tests.sidecar_proxy.harness import endpoint, inbound_running, outbound_running
    from trustmesh.sidecar.config import Limits

    web, api = pki.identity(WEB), pki.identity(API)  # type: ignore[attr-defined]
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + RESP
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    backend_port = listener.getsockname()[1]
    count = [0]

    async def backend_conn(sock: socket.socket) -> None:
        conn = Conn(sock)
        while data := await conn.recv():
            for _ in range(data.count(b"\r\n\r\n")):
                await conn.send_all(answer)
        conn.close()

    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            while True:
                await trio.lowlevel.wait_readable(listener)
                sock, _ = listener.accept()
                nursery.start_soon(backend_conn, sock)

        nursery.start_soon(accept)
        limits = Limits(drain_timeout=timedelta(seconds=1))
        async with (
            inbound_running(api, limits=limits, app_port=backend_port) as inbound,
            outbound_running(web, [endpoint(inbound.port, API)], limits=limits) as outbound,
        ):
            deadline = trio.current_time() + seconds
            request = b"POST /x HTTP/1.1\r\nhost: api\r\ncontent-length: 100\r\n\r\n" + REQ

            async def client() -> None:
                conn = Conn(await connect_tcp("127.0.0.1", outbound.port))
                while trio.current_time() < deadline:
                    await conn.send_all(request)
                    got = b""
                    while not got.endswith(RESP):
                        got += await conn.recv()
                    count[0] += 1
                conn.close()

            async with trio.open_nursery() as clients:
                for _ in range(CONNS):
                    clients.start_soon(client)
            handshakes = outbound.counters.tls_handshakes_out
        nursery.cancel_scope.cancel()
    listener.close()
    print(
        f"pair      in-process {count[0] / seconds:>7,.0f} req/s (client, both sidecars, backend in one"
        f" process, {CONNS} conns, {handshakes} mTLS handshakes)"
    )


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    bench_parsers(seconds)
    pki = make_pki(Path(tempfile.mkdtemp()))
    server_chain, server_key = pki.issue(API)
    client_chain, client_key = pki.issue(WEB)
    sctx = tls.server_context(server_chain, server_key, pki.roots_pem)
    cctx = tls.client_context(client_chain, client_key, pki.roots_pem)
    for kind in ("trio", "stdlib"):
        trio.run(bench_transport, seconds, kind, sctx, cctx)
    trio.run(bench_pair, seconds, pki)


if __name__ == "__main__":
    main()
