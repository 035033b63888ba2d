"""Free loopback ports for the processes this program starts (the demo; tests and benchmarks).

`bind(port 0)` and close, then hand the port to a child, is racy twice over: another program
may take the port first (accepted: the child then fails with a clear error), and the kernel
may hand the same just-released port back to the next `bind(0)` of this very process (6 plans
of 12 ports in 2,000 had a repeat: the demo once gave two apps one port). The second race is
ours to close: a port this process handed out recently is never handed out again, and
`free_ports(n)` holds all n sockets until every port is chosen.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque
from typing import Final

LOOPBACK: Final = "127.0.0.1"
# The ports handed out lately: enough for any one set-up, small enough to cost nothing.
_RECENT: Final[deque[int]] = deque(maxlen=512)
_LOCK: Final = threading.Lock()


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports, free a moment ago and not handed out lately here."""
    with _LOCK, contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
            if port not in _RECENT:  # held sockets keep the kernel from repeating within this call
                ports.append(port)
        _RECENT.extend(ports)
        return ports


def free_port() -> int:
    """One loopback TCP port: `free_ports(1)`."""
    return free_ports(1)[0]
