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
  is taken with `acquire_nowait` (the lock still orders concurrent senders).

Behaviour is hypercorn's: an idle connection closes after `keep_alive_timeout`, and at
shutdown (`context.terminated`) idle connections close at once and busy ones as soon as
their response is done.
"""

from __future__ import annotations

import math
from typing import Any

import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer


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
    """Hypercorn's `TCPServer` with the keep-alive timer and send lock above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_task = _KeepAliveTimer(self)  # type: ignore[assignment]

    async def close_idle(self) -> None:
        await self._initiate_server_close()

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        lock = self.send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            with trio.CancelScope(shield=True):
                await self.stream.send_all(event.data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
        finally:
            lock.release()
