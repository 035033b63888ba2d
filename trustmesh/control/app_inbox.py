"""The ASGI receive queue of one request, which yields to trio's scheduler only to wait.

hypercorn hands each request's messages (body chunks, end of body, disconnect) to the app
through a trio memory channel. A channel's `send` and `receive` each pass through the
scheduler even when nothing has to wait, so a POST whose body arrived with its head (every
`/v1/renew`) made four extra trips (`strace`: five `epoll_wait` per renewal before, about
two after; docs/api.md).

`AppInbox` keeps hypercorn's contract: messages arrive in order, at most
`max_app_queue_size` wait unread (a reader whose app does not keep up is held back, so an
upload cannot fill memory), and the app's `receive` waits when there is nothing to read.
Once the app has returned, further messages are dropped: nobody will read them, and a
channel there would hold the connection's reader forever once full.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.typing import AppWrapper, ASGIReceiveEvent, ASGISendEvent, Scope


class AppInbox:
    """One request's messages for its app, written by the connection's reader."""

    __slots__ = ("_items", "_limit", "_readers", "_writers", "done")

    def __init__(self, limit: int) -> None:
        self._items: deque[ASGIReceiveEvent] = deque()
        self._limit = max(limit, 1)
        self._readers = trio.lowlevel.ParkingLot()  # app tasks waiting in `receive`
        self._writers = trio.lowlevel.ParkingLot()  # the reader, waiting for room in `put`
        self.done = False  # the app has returned

    async def put(self, message: ASGIReceiveEvent) -> None:
        """Queue a message; wait only while `limit` messages are already unread."""
        # As a channel's send would: a cancelled caller queues nothing.
        await trio.lowlevel.checkpoint_if_cancelled()
        while len(self._items) >= self._limit and not self.done:
            await self._writers.park()
        if self.done:
            return
        self._items.append(message)
        if self._readers:
            self._readers.unpark()

    async def receive(self) -> ASGIReceiveEvent:
        """The next message, waiting for it only when none is queued."""
        # As a channel's receive would: a cancelled caller takes nothing (Starlette's
        # `is_disconnected` calls receive in an already-cancelled scope to peek).
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            await self._readers.park()
        message = self._items.popleft()
        if self._writers:
            self._writers.unpark()
        return message

    def close(self) -> None:
        """The app has returned: drop what is queued and release a waiting writer."""
        self.done = True
        self._items.clear()
        self._writers.unpark_all()


async def _run_app(
    inbox: AppInbox,
    app: AppWrapper,
    config: Config,
    scope: Scope,
    send: Callable[[ASGISendEvent | None], Awaitable[None]],
) -> None:
    try:
        await _handle(app, config, scope, inbox.receive, send, trio.to_thread.run_sync, trio.from_thread.run)
    finally:
        inbox.close()


class InboxTaskGroup(TaskGroup):
    """hypercorn's per-connection `TaskGroup`, handing each request's messages over in an `AppInbox`."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        inbox = AppInbox(config.max_app_queue_size)
        assert self._nursery is not None
        self._nursery.start_soon(_run_app, inbox, app, config, scope, send)
        return inbox.put
