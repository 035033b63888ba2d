"""Plain counters the proxies bump on the hot path; the admin server exports them.

Integers on one object, not Prometheus calls: a counter increment per request must cost
nothing measurable, and `/metrics` (the observability issue) can read these when scraped.
Tests read them to assert behaviour that has no other visible trace (connection reuse).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProxyCounters:
    connections_accepted: int = 0
    connections_refused_limit: int = 0  # over Limits.max_connections
    tls_handshakes_in: int = 0  # full or resumed, completed, inbound
    tls_resumed_in: int = 0
    tls_handshakes_out: int = 0  # outbound mTLS connections made (a handshake per request is a defect)
    tls_resumed_out: int = 0
    peers_refused: int = 0  # handshake completed but the SVID failed our checks, or secure naming
    requests: int = 0
    upstream_connects: int = 0  # plain connections opened to the local app
