"""The control plane's TLS connections as the trio stream hypercorn's `TCPServer` reads.

Why not `trio.SSLStream`: it runs OpenSSL over a memory BIO, copying every record twice
and taking a trio checkpoint per call. The sidecar measured stdlib `ssl.SSLSocket` in
non-blocking mode, driven by trio's readiness waits (`trustmesh.sidecar.conn.Conn`), at
1.4-1.8x the requests of `SSLStream` (docs/sidecar-design.md); on the control plane
py-spy put about a fifth of a `/v1/renew` in `SSLStream` sends and receives. So the
accept loop hands hypercorn this adapter instead: `Conn` does the I/O, hypercorn still does
all of HTTP.

One more saving: hypercorn writes a response head and its body in separate sends, which
would be two TLS records and two `write` calls. A final response head (not 1xx, so never a
websocket's 101) is held and leaves with the next send: the body, or the empty end of an
empty body, which hypercorn writes right after the head. (A streaming response would hold
its head until its first chunk; this listener serves none.)

Hypercorn's `TCPServer` asks a stream for `do_handshake`, `selected_alpn_protocol`,
`transport_stream.socket` (for the peer and local addresses), `send_all`, `receive_some`
and `aclose`; `send_eof` is absent on purpose, as on `SSLStream` (TCPServer expects the
AttributeError). Trio's resource errors are raised where hypercorn catches them.
"""

from __future__ import annotations

import ssl

import trio

from trustmesh.sidecar.conn import RECV_SIZE, Conn, ConnectionClosed, tls_handshake


class _Transport:
    """What `TCPServer` reads from `transport_stream`: the socket, for its addresses."""

    __slots__ = ("socket",)

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.socket = sock


class TlsStream(trio.abc.Stream):
    """A server-side TLS connection whose handshake is already done, as a trio `Stream`."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._conn = Conn(sock)
        self._sock = sock
        self.transport_stream = _Transport(sock)
        self._held = b""

    @classmethod
    async def accept(cls, sock: ssl.SSLSocket) -> TlsStream:
        """Complete the server handshake on a freshly wrapped non-blocking socket.

        Raises `ssl.SSLError` or `OSError` when the client fails it (foreign CA, plain HTTP).
        """
        sock.setblocking(False)
        await tls_handshake(sock)
        return cls(sock)

    @property
    def socket(self) -> ssl.SSLSocket:
        return self._sock

    async def do_handshake(self) -> None:
        """Already done by `accept`; hypercorn calls it anyway."""
        await trio.lowlevel.checkpoint()

    def selected_alpn_protocol(self) -> str | None:
        return self._sock.selected_alpn_protocol()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data = self._coalesce(data)
        if data:
            await self.send_rest(data)

    async def send_rest(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data` as it is (no head held back): the rest that `send_nowait` left."""
        try:
            await self._conn.send_all(data)
        except ConnectionClosed as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """`send_all` without waiting: what is left unsent (empty when all of it went or is held).

        What is left must go next, through `send_rest`, before anything else is sent.
        """
        data = self._coalesce(data)
        if not data:
            return b""
        try:
            sent = self._conn.send_nowait(data)
        except ConnectionClosed as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        return memoryview(data)[sent:] if sent else data

    def _coalesce(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """What to write now: a final response head is held (returns empty) and goes with the next write."""
        if self._conn.closed:
            raise trio.ClosedResourceError("connection closed")
        if self._held:
            data = self._held + data
            self._held = b""
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1":
            self._held = bytes(data)  # a final response head: see the module docstring
            return b""
        return data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._conn.closed:
            raise trio.ClosedResourceError("connection closed")
        try:
            return await self._conn.recv(max_bytes or RECV_SIZE)
        except ConnectionClosed as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def aclose(self) -> None:
        self._conn.close()
        await trio.lowlevel.checkpoint()
