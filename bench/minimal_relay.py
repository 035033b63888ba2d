"""A minimal mTLS relay on trustmesh's own I/O layer: the floor the sidecar is measured against.

    python -m bench.minimal_relay client|server pump|http LISTEN_PORT TARGET_PORT CHAIN KEY ROOTS

Not a product: no policy, no telemetry, no traffic management, no limits, one upstream
connection per downstream connection (as stunnel). It uses exactly what the sidecar's hot
path uses for I/O (`trustmesh.sidecar.conn.Conn`: stdlib ssl on trio readiness waits,
the sidecar's TLS contexts), so the difference between it and a sidecar is the sidecar's
per-request Python, not trio, TLS or syscalls.

- `pump`: bytes both ways, no parsing;
- `http`: keep-alive HTTP/1.1 one exchange at a time: the request head and the response
  go through httptools (llhttp) to find where each message ends, and one header is added
  to the request. Bodies beyond what arrives with the head are not handled (the benchmark
  sends GETs).
"""

from __future__ import annotations

import socket
import sys

import httptools
import trio

from trustmesh.sidecar import tls
from trustmesh.sidecar.conn import Conn, ConnectionClosed, connect_tcp, tls_handshake


class _End:
    """httptools callbacks: only the end of a message matters here."""

    def __init__(self) -> None:
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True


async def _pump(a: Conn, b: Conn) -> None:
    try:
        while data := await a.recv_wait_first():
            await b.send_all(data)
    except (OSError, ConnectionClosed):
        pass  # either side went away: the relay ends


async def _http(down: Conn, up: Conn) -> None:
    while data := await down.recv_wait_first():
        httptools.HttpRequestParser(_End()).feed_data(data)
        end = data.index(b"\r\n\r\n")
        await up.send_all(data[:end] + b"\r\nx-relayed: 1" + data[end:])
        response = _End()
        parser = httptools.HttpResponseParser(response)
        recv = up.recv_wait_first
        while not response.done:
            piece = await recv()
            recv = up.recv
            if not piece:
                return
            parser.feed_data(piece)
            await down.send_all(piece)


class Relay:
    def __init__(self, role: str, mode: str, target: int, chain: bytes, key: bytes, roots: bytes) -> None:
        self.role, self.mode, self.target = role, mode, target
        self.server_ctx = tls.server_context(chain, key, roots)
        self.client_ctx = tls.client_context(chain, key, roots)
        self.client_ctx.check_hostname = False  # the benchmark's leaves name SPIFFE IDs, not hosts

    async def _open(self, sock: socket.socket) -> tuple[Conn, Conn]:
        if self.role == "server":
            wrapped = self.server_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            wrapped.setblocking(False)
            await tls_handshake(wrapped)
            return Conn(wrapped), Conn(await connect_tcp("127.0.0.1", self.target))
        raw = await connect_tcp("127.0.0.1", self.target)
        wrapped = self.client_ctx.wrap_socket(raw, server_side=False, do_handshake_on_connect=False)
        wrapped.setblocking(False)
        await tls_handshake(wrapped)
        return Conn(sock), Conn(wrapped)

    async def handle(self, sock: socket.socket) -> None:
        try:
            down, up = await self._open(sock)
        except OSError:  # ssl.SSLError included: a port probe, a failed handshake
            sock.close()
            return
        try:
            if self.mode == "pump":
                async with trio.open_nursery() as nursery:

                    async def back() -> None:
                        await _pump(up, down)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(back)
                    await _pump(down, up)
                    nursery.cancel_scope.cancel()
            else:
                await _http(down, up)
        except (OSError, ConnectionClosed, httptools.HttpParserError):
            pass  # the peer went away or sent what this relay does not handle
        finally:
            down.close()
            up.close()

    async def serve(self, port: int) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
        listener.setblocking(False)
        async with trio.open_nursery() as nursery:
            while True:  # until the harness stops the process (SIGTERM)
                await trio.lowlevel.wait_readable(listener)
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self.handle, sock)


def main() -> None:
    role, mode, listen, target, chain, key, roots = sys.argv[1:8]
    if role not in ("client", "server") or mode not in ("pump", "http"):
        raise SystemExit(__doc__)
    files = [open(path, "rb").read() for path in (chain, key, roots)]  # noqa: SIM115
    relay = Relay(role, mode, int(target), *files)
    trio.run(relay.serve, int(listen))


if __name__ == "__main__":
    main()
