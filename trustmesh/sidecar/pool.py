"""Idle keep-alive connections kept for reuse, per upstream key.

A new connection costs a TCP handshake (and, outbound, a TLS handshake and SVID check):
reuse is what keeps that off the per-request path. The newest idle connection is reused
first (warm in every cache; the oldest ones age out). A connection idle for a while is
probed with one non-blocking read before reuse: EOF means the upstream closed it.

Idle times are `time.monotonic()`, not trio's clock: they are only compared with each
other, coarsely, and trio's `current_time()` is three Python calls where this is one C
call, twice per request.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Generic, TypeVar

from trustmesh.sidecar.conn import Conn, ConnectionClosed

K = TypeVar("K", bound=Hashable)

# Below this idle time a connection is assumed alive (a failure is retried once instead):
# a probe costs a syscall, and an upstream does not close a connection it just answered on.
_PROBE_AFTER = 1.0


class ConnPool(Generic[K]):
    def __init__(self, *, max_idle_per_key: int, idle_timeout: float) -> None:
        self._idle: dict[K, list[tuple[float, Conn]]] = {}
        self._max_idle = max_idle_per_key
        self._idle_timeout = idle_timeout

    def get(self, key: K) -> Conn | None:
        """An idle connection for `key` that still looks alive, or None."""
        stack = self._idle.get(key)
        if not stack:
            return None
        now = time.monotonic()
        while stack:
            since, conn = stack.pop()
            idle_for = now - since
            if idle_for > self._idle_timeout:
                conn.close()
                continue
            if idle_for > _PROBE_AFTER:
                try:
                    probe = conn.recv_nowait()
                except ConnectionClosed:
                    probe = b""
                if probe is not None:  # EOF, or bytes nobody asked for: unusable
                    conn.close()
                    continue
            return conn
        return None

    def put(self, key: K, conn: Conn) -> None:
        stack = self._idle.setdefault(key, [])
        if len(stack) >= self._max_idle:
            conn.close()
            return
        stack.append((time.monotonic(), conn))

    def close_all(self) -> None:
        for stack in self._idle.values():
            for _, conn in stack:
                conn.close()
        self._idle.clear()
