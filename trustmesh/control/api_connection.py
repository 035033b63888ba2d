"""One API connection served by hypercorn, with fewer trips through trio's scheduler.

Hypercorn's trio `TCPServer` does all of HTTP here; this subclass changes only how it
waits, because each trip through trio's run loop costs about as much as the HTTP work of
a small request, and a `/v1/renew` took eleven of them (`strace -c`: eleven `epoll_wait`
per renew). Two of hypercorn's habits cost most of those trips:

- its keep-alive timer is a task restarted after every response with `nursery.start`
  (which waits for the new task to run) under a `trio.Lock`; here it is one task per
  connection whose cancel-scope deadline moves: set when the connection goes idle,
  cleared when a request arrives;
- every send takes a `trio.Lock`, whose `acquire` always yields; here an uncontended lock
  is taken with `acquire_nowait` (the lock still orders concurrent senders);
- every request's ASGI messages (body, end of body) cross a trio memory channel, whose
  `send` and `receive` each yield even when they need not wait: two puts and two gets per
  POST. Here they cross an `AppInbox` (app_inbox.py), which yields only to wait;
- every read sits in a `fail_after(read_timeout)` scope even when there is no read
  timeout (the default); here the scope exists only when one is configured.

Behaviour is hypercorn's: an idle connection closes after `keep_alive_timeout`, and at
shutdown (`context.terminated`) idle connections close at once and busy ones as soon as
their response is done.
"""

from __future__ import annotations

import math
from typing import Any

import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr

from trustmesh.control.app_inbox import InboxTaskGroup
from trustmesh.control.tls_stream import TlsStream


class _KeepAliveTimer:
    """hypercorn's `TrioSingleTask` for the idle timeout, without a task per request."""

    def __init__(self, server: ApiConnection) -> None:
        self._server = server
        self._scope = trio.CancelScope()
        self._idle = False
        self._watching = False

    async def restart(self, task_group: Any, action: Any) -> None:
        """The connection is idle: close it after the keep-alive timeout (or at shutdown)."""
        server = self._server
        self._idle = True
        self._scope.deadline = trio.current_time() + server.config.keep_alive_timeout
        if not self._watching:
            self._watching = True
            task_group._nursery.start_soon(self._watch)
        elif server.context.terminated.is_set():
            self._scope.cancel()

    async def stop(self) -> None:
        """A request arrived: no idle timeout while it is served."""
        self._idle = False
        self._scope.deadline = math.inf

    async def _watch(self) -> None:
        with self._scope:
            await self._server.context.terminated.wait()
            if not self._idle:
                # Shutting down mid-request: `restart` cancels us once the response is done.
                await trio.sleep_forever()
        with trio.CancelScope(shield=True):
            await self._server.close_idle()


class ApiConnection(TCPServer):
    """Hypercorn's `TCPServer` with the keep-alive timer, send lock, inbox and reads above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_task = _KeepAliveTimer(self)  # type: ignore[assignment]

    async def run(self) -> None:
        """`TCPServer.run` for a stream whose TLS handshake is done, with `InboxTaskGroup`."""
        sock = self.stream.transport_stream.socket
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with InboxTaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = ProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    True,
                    client,
                    server,
                    self.protocol_send,
                    self.stream.selected_alpn_protocol(),
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def _read_data(self) -> None:
        timeout = self.config.read_timeout
        receive_some = self.stream.receive_some
        handle = self.protocol.handle
        while True:
            try:
                if timeout is None:
                    data = await receive_some(MAX_RECV)
                else:
                    with trio.fail_after(timeout):
                        data = await receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            await handle(RawData(bytes(data)))
            if not data:
                break
        await handle(Closed())

    async def close_idle(self) -> None:
        await self._initiate_server_close()

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        lock = self.send_lock
        stream: TlsStream = self.stream  # type: ignore[assignment]  # server.py hands it one
        try:
            if lock.locked():
                rest = None  # another send is waiting for the socket: queue behind it
            else:
                # Nobody is mid-send, and this does not yield: no lock or shield needed
                # unless the socket is full.
                rest = stream.send_nowait(event.data)
                if not rest:
                    return
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                with trio.CancelScope(shield=True):
                    if rest is None:
                        await stream.send_all(event.data)
                    else:
                        await stream.send_rest(rest)
            finally:
                lock.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
