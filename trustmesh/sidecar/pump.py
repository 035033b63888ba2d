"""Opaque TCP mode: copy bytes both ways, half-close preserved, until both sides are done.

Each direction is its own task: EOF from one side becomes a half-close (FIN, or a TLS 1.3
close_notify) towards the other, while the other direction keeps flowing, so protocols
that signal "no more requests" by shutting down their write side keep working.
"""

from __future__ import annotations

import trio

from trustmesh.sidecar.conn import Conn, ConnectionClosed


async def pump(a: Conn, b: Conn) -> int:
    """Copy a→b and b→a until both directions reached EOF or either side broke.

    Returns the number of bytes moved (both directions). Closes neither connection.
    """
    moved = [0]
    async with trio.open_nursery() as nursery:

        async def one_way(src: Conn, dst: Conn) -> None:
            try:
                while True:
                    data = await src.recv()
                    if not data:
                        await dst.send_eof()
                        return
                    await dst.send_all(data)
                    moved[0] += len(data)
            except ConnectionClosed:
                # A reset on either side ends both directions: there is no one left to
                # deliver the other direction's bytes to in a meaningful way.
                nursery.cancel_scope.cancel()

        nursery.start_soon(one_way, a, b)
        nursery.start_soon(one_way, b, a)
    return moved[0]
