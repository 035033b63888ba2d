"""Accepting connections: bind, accept, enforce the connection limit, stop on drain.

Inbound and outbound listeners differ only in what they do with an accepted socket, so
this module owns everything else: the socket itself (accepting in a tight loop, many per
wake-up), the concurrent-connection limit (beyond it, new connections are closed at once
and logged), and the drain sequence (stop accepting, wake idle keep-alive connections so
they close, give in-flight work `drain_timeout`, then cancel what is left).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable

import structlog
import trio

from trustmesh.sidecar.config import HostPort
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.scope_deadlines import ScopeDeadlines

log = structlog.get_logger(__name__)

_BACKLOG = 4096
# accept() errors that concern one connection or a momentary shortage, not the listener.
_TRANSIENT_ACCEPT = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EPERM}
)


class IdleConnections(ScopeDeadlines):
    """The cancel scopes of connections waiting for their next request, with their expiry.

    A connection going idle arms its scope here instead of moving its own deadline (see
    `ScopeDeadlines`: a dict insert instead of a trio heap update, twice per request), and
    `sweep` (run by `serve_listener`) cancels it once idle for the timeout.

    Drain cancels them all (an idle keep-alive connection has nothing in flight); a
    connection that becomes idle after the drain began is cancelled on the spot.
    """

    def __init__(self, drain: Drain) -> None:
        super().__init__()
        self._drain = drain

    def enter(self, scope: trio.CancelScope, timeout: float) -> None:
        """Register `scope` as idle; it is cancelled once idle for `timeout` seconds."""
        if self._drain.draining:
            scope.cancel()
        self.arm(scope, timeout)

    def leave(self, scope: trio.CancelScope) -> None:
        self.disarm(scope)

    async def sweep(self) -> None:
        """Expire idle connections, forever (cancelled with the listener's nursery)."""
        await self.run()


def bind(address: HostPort) -> socket.socket:
    """A non-blocking listening TCP socket on `address` (port 0: the kernel picks one)."""
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_listener(
    listen: socket.socket,
    handle: Callable[[socket.socket], Awaitable[None]],
    *,
    name: str,
    max_connections: int,
    drain: Drain,
    drain_timeout: float,
    idle: IdleConnections,
    counters: ProxyCounters,
) -> None:
    """Accept on `listen` and run `handle(sock)` for each connection until a drain ends.

    `handle` owns the socket it is given (it must close it). Returns once draining is over:
    every connection finished or was cancelled after `drain_timeout`.
    """
    active = 0

    async def run(sock: socket.socket) -> None:
        nonlocal active
        try:
            await handle(sock)
        finally:
            active -= 1

    async with trio.open_nursery() as connections:
        with trio.CancelScope() as accepting:

            async def stop_on_drain() -> None:
                await drain.wait_started()
                accepting.cancel()

            connections.start_soon(stop_on_drain)
            connections.start_soon(idle.sweep)
            try:
                while True:
                    await trio.lowlevel.wait_readable(listen)
                    while True:  # accept everything queued before waiting again
                        try:
                            sock, peer = listen.accept()
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            if exc.errno not in _TRANSIENT_ACCEPT:
                                raise
                            log.warning("accept_failed", listener=name, error=exc.strerror)
                            break
                        if active >= max_connections:
                            counters.connections_refused_limit += 1
                            log.warning(
                                "connection_refused",
                                listener=name,
                                reason="max_connections",
                                limit=max_connections,
                                peer=str(peer[0]),
                            )
                            sock.close()
                            continue
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        active += 1
                        counters.connections_accepted += 1
                        connections.start_soon(run, sock)
            finally:
                trio.lowlevel.notify_closing(listen)
                listen.close()
        # Draining: nothing new is accepted; idle keep-alive connections close now, the rest
        # finish the request they are serving (they check `drain.draining` between requests).
        log.info("listener_draining", listener=name, connections=active)
        idle.cancel_all()
        with trio.move_on_after(drain_timeout) as waited:
            while active:
                await trio.sleep(0.01)  # bounded by drain_timeout
        if waited.cancelled_caught:
            log.warning("drain_timeout", listener=name, connections_cancelled=active)
        connections.cancel_scope.cancel()
