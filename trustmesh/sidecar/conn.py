"""One connection of the hot path: a non-blocking socket (plain or stdlib `ssl`) driven by trio.

Measured (docs/sidecar-design.md): trio's `SSLStream` over `SocketStream` moves about half
the requests of stdlib `ssl.SSLSocket` in non-blocking mode driven by
`trio.lowlevel.wait_readable`/`wait_writable`. The cost is not crypto but waits and
scheduling, so every operation here *tries first* and only waits when the kernel or
OpenSSL says it would block; OpenSSL does the socket syscalls itself, with no memory BIO
copy in between.

Trio needs a checkpoint now and then to deliver cancellation and keep other tasks running;
an operation that never has to wait takes one every `_CHECKPOINT_EVERY` operations, so a
fast peer cannot starve the scheduler or outrun a timeout.

Where the data cannot be there yet (the answer to a request we have just sent), trying
first only costs a failed syscall and an exception: `recv_wait_first` waits first.

Reads and writes call the `_ssl._SSLSocket` object's `read`/`write` directly: the
`SSLSocket.recv → read → _sslobj.read` wrappers cost two Python frames per call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
from collections.abc import Callable

import trio

RECV_SIZE = 64 * 1024
_CHECKPOINT_EVERY = 32
# TLS 1.3 close_notify is one record; waiting for it to leave must not hold a closing
# connection open for long.
_CLOSE_NOTIFY_TIMEOUT = 0.5


class ConnectionClosed(Exception):
    """The peer reset or broke the connection (as opposed to a clean EOF, which is `b""`)."""


class Conn:
    """A connected non-blocking socket (`socket.socket` or `ssl.SSLSocket`) with trio waits.

    `recv` returns `b""` on a clean EOF (FIN, or TLS close_notify) and raises
    `ConnectionClosed` on a reset or a broken TLS stream.
    """

    __slots__ = ("__weakref__", "_ops", "_pending", "_read", "_write", "closed", "is_tls", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.is_tls = isinstance(sock, ssl.SSLSocket)
        self.closed = False
        self._ops = 0
        sslobj = getattr(sock, "_sslobj", None) if self.is_tls else None
        # The same calls SSLSocket.recv/send end in, without their Python wrappers.
        self._read: Callable[[int], bytes] = sslobj.read if sslobj is not None else sock.recv
        self._write: Callable[[bytes | bytearray | memoryview], int] = (
            sslobj.write if sslobj is not None else sock.send
        )
        # Plaintext OpenSSL already holds (TLS only; `SSLSocket.pending` is two Python frames).
        self._pending: Callable[[], int] | None = sslobj.pending if sslobj is not None else None

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        read = self._read
        sock = self.sock
        while True:
            try:
                data = read(size)
            except (BlockingIOError, ssl.SSLWantReadError):
                self._ops = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except ssl.SSLWantWriteError:
                self._ops = 0
                await trio.lowlevel.wait_writable(sock)
                continue
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                # close_notify after our own (half-closed) one, or a peer that closed
                # without close_notify: an EOF all the same.
                return b""
            except (ssl.SSLError, OSError) as exc:
                raise ConnectionClosed(str(exc)) from exc
            self._ops += 1
            if self._ops >= _CHECKPOINT_EVERY:
                self._ops = 0
                await trio.lowlevel.checkpoint()
            return data

    async def recv_wait_first(self, size: int = RECV_SIZE) -> bytes:
        """`recv` for data that is not here yet: wait for readability before reading.

        For the first read of a response to a request just sent, and after `recv_nowait`
        found nothing: a read tried first would fail with EAGAIN (or `SSLWantReadError`)
        nearly every time. Plaintext OpenSSL already holds (`pending()`) is returned
        without waiting.
        """
        pending = self._pending
        if pending is None or not pending():
            self._ops = 0
            await trio.lowlevel.wait_readable(self.sock)
            # The read `recv` would make, without its frame: this runs twice per request.
            try:
                return self._read(size)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass  # woken with only part of a TLS record: `recv` waits for the rest
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return b""
            except (ssl.SSLError, OSError) as exc:
                raise ConnectionClosed(str(exc)) from exc
        return await self.recv(size)

    def recv_nowait(self) -> bytes | None:
        """One non-blocking read: data, `b""` at EOF, or None if nothing is there yet.

        Used to probe an idle pooled connection before reuse (did the peer close it?) and
        to consume TLS 1.3 session tickets that arrived after the handshake.
        """
        try:
            return self._read(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return b""
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionClosed(str(exc)) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write the whole buffer; wait only when the socket (or OpenSSL) would block.

        OpenSSL writes a record whole or not at all (no partial-write mode), and on a
        would-block it must be retried with the same buffer, which is what happens here.
        """
        write = self._write
        try:
            # The common case: the whole buffer goes in one call, no view is needed.
            sent = write(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionClosed(str(exc)) from exc
        if sent < len(data):
            await self._send_rest(data, sent)
        self._ops += 1
        if self._ops >= _CHECKPOINT_EVERY:
            self._ops = 0
            await trio.lowlevel.checkpoint()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what can go without waiting; how many bytes went (0 if the socket would block).

        For a caller that must not yield between deciding to send and sending (hypercorn's
        send path, see control/api_connection.py); what is left goes through `send_all`.
        """
        try:
            return self._write(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionClosed(str(exc)) from exc

    async def _send_rest(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        sock = self.sock
        write = self._write
        view = memoryview(data)[offset:]
        try:
            while view:
                try:
                    sent = write(view)
                except (BlockingIOError, ssl.SSLWantWriteError):
                    self._ops = 0
                    await trio.lowlevel.wait_writable(sock)
                    continue
                except ssl.SSLWantReadError:
                    # Only during a TLS 1.3 key update; another task may be parked reading
                    # this socket, so do not wait on readability (trio allows one waiter).
                    await trio.sleep(0.001)
                    continue
                except (ssl.SSLError, OSError) as exc:
                    raise ConnectionClosed(str(exc)) from exc
                view = view[sent:]
        finally:
            view.release()

    async def send_eof(self) -> None:
        """Half-close: no more data from us; the peer can still send.

        Plain TCP: `shutdown(SHUT_WR)`. TLS 1.3: a close_notify alert, after which reading
        continues until the peer's own close_notify (TLS 1.3 makes this half-close legal).
        """
        if self.is_tls:
            await self._send_close_notify()
        else:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise ConnectionClosed(str(exc)) from exc

    async def _send_close_notify(self) -> None:
        sslobj = self.sock._sslobj  # type: ignore[attr-defined]
        if sslobj is None:
            return
        # SSLSocket.unwrap() would also drop the TLS layer; we only want the alert sent.
        with trio.move_on_after(_CLOSE_NOTIFY_TIMEOUT):
            while True:
                try:
                    sslobj.shutdown()
                    return
                except ssl.SSLWantReadError:
                    return  # ours is sent; the peer's close_notify comes later
                except ssl.SSLWantWriteError:
                    await trio.lowlevel.wait_writable(self.sock)
                except (ssl.SSLError, OSError):
                    return

    def close(self) -> None:
        """Close at once (no waiting): best-effort close_notify for TLS, then the socket."""
        if self.closed:
            return
        self.closed = True
        if self.is_tls:
            sslobj = self.sock._sslobj  # type: ignore[attr-defined]
            if sslobj is not None:
                # best effort: the peer treats a missing close_notify as EOF too
                with contextlib.suppress(ssl.SSLError, OSError):
                    sslobj.shutdown()
        # The cached `_sslobj` methods would bypass SSLSocket's closed check, and the fd
        # number may soon belong to another connection: make any later use fail instead.
        self._read = _closed_read
        self._write = _closed_write
        self._pending = _closed_pending  # "something to read": straight to the failing read
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


def _closed_pending() -> int:
    return 1


def _closed_read(size: int) -> bytes:
    raise OSError(errno.EBADF, "connection closed")


def _closed_write(data: bytes | bytearray | memoryview) -> int:
    raise OSError(errno.EBADF, "connection closed")


async def tls_handshake(sock: ssl.SSLSocket) -> None:
    """Drive a non-blocking handshake to completion (raises `ssl.SSLError`/`OSError` on failure)."""
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(sock)
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(sock)


async def connect_tcp(host: str, port: int) -> socket.socket:
    """Non-blocking TCP connect with trio waits; TCP_NODELAY on (requests are small writes)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            if err:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
            return sock
        except BaseException as exc:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            if isinstance(exc, OSError):
                last = exc
                continue
            raise
    raise last or OSError("no address for host")
