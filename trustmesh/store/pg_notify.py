"""PostgreSQL LISTEN/NOTIFY between control-plane replicas that share one database.

A sidecar streams updates (bundle, policy revision) from whichever replica it is connected
to, but the change may happen on another replica. The replica that makes a change calls
`publish(store, channel, payload)`; every replica keeps `listen(store, channel)` open and
pushes what arrives to its own sidecars. PostgreSQL delivers a NOTIFY to every session
listening on the channel when (and only if) the publishing transaction commits.

What a user of this module must know:
- Notifications are a wake-up call, not a log: one sent while a listener's connection is
  down is lost. A listener that fails raises `PostgresStoreError`; after listening again, a
  replica re-reads the current state from the database before trusting notifications.
  Payloads should therefore be small hints ("bundle changed, sequence 7"), not the data.
- A payload must be shorter than 8000 bytes (PostgreSQL's limit) and channels are plain
  identifiers; both are checked here so a mistake is a `ValueError`, not a server error.

Why a thread: psycopg's async API is asyncio-only, so, as in `PostgresStore`, a dedicated
sync connection waits in a worker thread (`Connection.notifies` with a short timeout, so
that it notices when to stop) and hands each notification to trio through a memory channel.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
import structlog
import trio
from psycopg import sql

from trustmesh.store.postgres import Connection, PostgresStore, PostgresStoreError

log = structlog.get_logger(__name__)

# PostgreSQL refuses payloads of 8000 bytes or more (in the default configuration).
MAX_PAYLOAD_BYTES = 7999

# Channels are unquoted-identifier-shaped, at most 63 bytes (NAMEDATALEN - 1), so that the
# same name works in `LISTEN name` typed at psql and in `pg_notify('name', ...)`.
_CHANNEL = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# How often the listening thread looks up from waiting to check whether it should stop:
# the longest `listen()` takes to exit. Short, because exits happen at shutdown.
_POLL_S = 0.2

# Notifications buffered for a slow consumer before the listening thread waits for it.
_BUFFER = 256


@dataclass(frozen=True)
class Notification:
    """One NOTIFY as received: the channel, the payload, and the PID of the publishing backend."""

    channel: str
    payload: str
    pid: int


def _check_channel(channel: str) -> str:
    if not _CHANNEL.fullmatch(channel):
        raise ValueError(
            f"notification channel {channel!r} must be a lowercase identifier of at most 63 characters"
        )
    return channel


async def publish(store: PostgresStore, channel: str, payload: str) -> None:
    """Send `payload` to every session listening on `channel` (on any replica)."""
    _check_channel(channel)
    size = len(payload.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"notification payload is {size} bytes; PostgreSQL allows at most {MAX_PAYLOAD_BYTES}"
        )

    def run(conn: Connection) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    # Not retried after a lost connection: a listener might then see it twice.
    await store.run_with_connection(run)
    log.debug("notify_published", channel=channel, payload_bytes=size)


@asynccontextmanager
async def listen(
    store: PostgresStore, *channels: str
) -> AsyncIterator[trio.MemoryReceiveChannel[Notification]]:
    """Listen on `channels` over a dedicated connection; yield a channel of `Notification`s.

    LISTEN is in effect before the body runs, so nothing published after entry is missed.
    Leaving the block stops the listener and closes its connection; a lost connection raises
    `PostgresStoreError` out of the block.
    """
    if not channels:
        raise ValueError("listen() needs at least one channel")
    for channel in channels:
        _check_channel(channel)
    conn = await trio.to_thread.run_sync(store.connect_sync)
    try:

        def subscribe() -> None:
            for channel in channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

        await trio.to_thread.run_sync(subscribe)
    except BaseException:
        conn.close()
        raise
    send, receive = trio.open_memory_channel[Notification](_BUFFER)
    stop = threading.Event()
    trio_token = trio.lowlevel.current_trio_token()

    def pump() -> None:
        try:
            while not stop.is_set():
                for n in conn.notifies(timeout=_POLL_S):
                    trio.from_thread.run(
                        send.send, Notification(n.channel, n.payload, n.pid), trio_token=trio_token
                    )
                    if stop.is_set():
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
            return  # the consumer has gone: nothing left to deliver to
        except psycopg.OperationalError as exc:
            if stop.is_set():
                return
            log.warning("notify_listen_lost", url=store.url, channels=list(channels), error=str(exc).strip())
            raise PostgresStoreError(
                f"lost the LISTEN connection to the PostgreSQL store at {store.url}; notifications sent"
                " while it was down are lost, so re-read state after listening again"
            ) from None
        finally:
            conn.close()

    async def run_pump() -> None:
        async with send:
            await trio.to_thread.run_sync(pump)

    log.info("notify_listening", url=store.url, channels=list(channels))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_pump)
            try:
                yield receive
            finally:
                # Both, so the thread stops whether it is waiting on the server or on a full buffer.
                stop.set()
                receive.close()
    except BaseExceptionGroup as group:
        # The nursery is an implementation detail: callers catch PostgresStoreError (or their own
        # exception from the body) directly, not wrapped in a group of one.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
