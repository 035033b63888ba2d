"""What the mesh did lately, computed from the spans the sidecars export (sans I/O).

The GUI's topology and its "recent decisions" come from here. The unit of observation is a
sidecar's SERVER span: one per request that reached an inbound sidecar, whoever sent it, with
the caller's verified identity (`trustmesh.peer.spiffe_id`), the policy decision
(`trustmesh.policy.decision`), the status and the duration. CLIENT spans are read only to learn
names: a CLIENT span says which service (`trustmesh.service`) a SPIFFE ID (`trustmesh.peer.spiffe_id`)
answered for, and its resource names the calling service, so an edge can be labelled even for a
workload the control plane has no registration for.

Why a separate aggregator rather than querying the `TraceStore`: the store is bounded by traces
and evicts whole traces, so rates computed from it would drift with its size; here every SERVER
span is counted once on arrival and kept only for the rate window. Nothing here reads a clock or
a socket: callers pass `now_ns` (Unix nanoseconds), tests pass spans and times.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from trustmesh.tracing.otlp_receiver import StoredSpan
from trustmesh.tracing.spans import (
    HTTP_METHOD,
    HTTP_STATUS,
    MESH_SERVICE,
    PEER_SPIFFE_ID,
    POLICY_DECISION,
    POLICY_REVISION,
    URL_PATH,
)

__all__ = ["DecisionRecord", "EdgeStats", "MeshObservations", "NodeStats", "Topology"]

# Rates, success and p99 are over the last minute: long enough to smooth a demo's timer-driven
# traffic, short enough that a fix (a policy commit) shows within a minute.
DEFAULT_WINDOW_S: Final = 60.0
# Memory bound: one small record per SERVER span in the window. 50k is ~800 req/s for a minute;
# beyond that the oldest are dropped and the window is effectively shorter (rates stay right
# because they are divided by the span the kept calls cover, see `_effective_window`).
DEFAULT_MAX_CALLS: Final = 50_000
DEFAULT_MAX_DECISIONS: Final = 200
# CLIENT span id -> calling service, to name a SERVER span's caller from its parent.
_MAX_CLIENT_SPANS: Final = 20_000
# Optional attributes a sidecar may add to name the deciding rule; read when present.
POLICY_NAME: Final = "trustmesh.policy.policy"
POLICY_RULE: Final = "trustmesh.policy.rule"
POLICY_REASON: Final = "trustmesh.policy.reason"
POLICY_LOCATION: Final = "trustmesh.policy.location"


@dataclass(frozen=True, slots=True)
class _Call:
    end_ns: int
    duration_ns: int
    source_id: str | None
    parent_span_id: str | None
    destination: str
    ok: bool
    denied: bool


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One inbound authorization as a sidecar reported it (newest first in `decisions()`).

    `policy`/`rule`/`reason`/`location` are filled only when the span carried them; the policy
    page fills the gaps by asking the active engine when `revision` is the active one.
    """

    time_unix_nano: int
    trace_id: str
    source_id: str | None
    destination: str
    method: str | None
    path: str | None
    decision: str
    revision: str | None
    status: int | None
    policy: str | None = None
    rule: int | None = None
    reason: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class EdgeStats:
    """Calls from one service to another over the window."""

    source: str
    destination: str
    requests: int
    rate_rps: float
    success_rate: float  # share of requests neither denied nor answered 5xx, 0..1
    p99_ms: float
    denied: int
    errors: int  # 5xx answers, denied ones excluded

    @property
    def state(self) -> str:
        """`denied` (every call refused by policy), `degraded` (some failed or denied) or `ok`."""
        if self.requests and self.denied == self.requests:
            return "denied"
        if self.denied or self.errors:
            return "degraded"
        return "ok"


@dataclass(frozen=True, slots=True)
class NodeStats:
    service: str
    spiffe_ids: tuple[str, ...]
    requests_in: int
    denied_in: int


@dataclass(frozen=True, slots=True)
class Topology:
    window_s: float
    nodes: tuple[NodeStats, ...]
    edges: tuple[EdgeStats, ...]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def p99(durations_ns: list[int]) -> float:
    """Nearest-rank 99th percentile in milliseconds (0 for no samples): no interpolation to explain."""
    if not durations_ns:
        return 0.0
    ordered = sorted(durations_ns)
    rank = max(1, math.ceil(0.99 * len(ordered)))
    return ordered[rank - 1] / 1e6


@dataclass
class MeshObservations:
    """Feed it spans with `ingest`; read `topology`, `decisions` and `last_seen`. Not thread-safe:
    the control plane calls it from its one trio thread (the OTLP handler and the GUI handlers)."""

    window_s: float = DEFAULT_WINDOW_S
    max_calls: int = DEFAULT_MAX_CALLS
    max_decisions: int = DEFAULT_MAX_DECISIONS
    _calls: deque[_Call] = field(default_factory=deque, init=False)
    _decisions: deque[DecisionRecord] = field(default_factory=deque, init=False)
    _client_service: OrderedDict[str, str] = field(default_factory=OrderedDict, init=False)
    _learned: dict[str, str] = field(default_factory=dict, init=False)  # SPIFFE ID -> service
    _id_seen: dict[str, int] = field(default_factory=dict, init=False)
    _service_seen: dict[str, int] = field(default_factory=dict, init=False)
    _first_ingest_ns: int | None = field(default=None, init=False)
    dropped_calls: int = field(default=0, init=False)

    def ingest(self, spans: Iterable[StoredSpan], now_ns: int) -> None:
        """Count the SERVER spans, learn names from the CLIENT spans."""
        if self._first_ingest_ns is None:
            self._first_ingest_ns = now_ns
        for span in spans:
            attrs = span.attributes
            if span.kind == "CLIENT":
                self._client_service[span.span_id] = span.service_name
                if len(self._client_service) > _MAX_CLIENT_SPANS:
                    self._client_service.popitem(last=False)
                peer, service = _str(attrs.get(PEER_SPIFFE_ID)), _str(attrs.get(MESH_SERVICE))
                if peer is not None and service is not None:
                    self._learned[peer] = service
                self._seen_service(span.service_name, span.end_time_unix_nano)
            elif span.kind == "SERVER":
                self._ingest_server(span)
        self._prune(now_ns)

    def _seen_service(self, service: str, at_ns: int) -> None:
        if at_ns > self._service_seen.get(service, 0):
            self._service_seen[service] = at_ns

    def _ingest_server(self, span: StoredSpan) -> None:
        attrs = span.attributes
        source = _str(attrs.get(PEER_SPIFFE_ID))
        status = _int(attrs.get(HTTP_STATUS))
        decision = _str(attrs.get(POLICY_DECISION))
        denied = decision is not None and decision.lower() == "deny"
        ok = not denied and span.status_code != "ERROR" and (status is None or status < 500)
        self._calls.append(
            _Call(
                end_ns=span.end_time_unix_nano,
                duration_ns=max(0, span.duration_ns),
                source_id=source,
                parent_span_id=span.parent_span_id,
                destination=span.service_name,
                ok=ok,
                denied=denied,
            )
        )
        if len(self._calls) > self.max_calls:
            self._calls.popleft()
            self.dropped_calls += 1
        self._seen_service(span.service_name, span.end_time_unix_nano)
        if source is not None and span.end_time_unix_nano > self._id_seen.get(source, 0):
            self._id_seen[source] = span.end_time_unix_nano
        if decision is not None:
            rule = _int(attrs.get(POLICY_RULE))
            self._decisions.appendleft(
                DecisionRecord(
                    time_unix_nano=span.end_time_unix_nano,
                    trace_id=span.trace_id,
                    source_id=source,
                    destination=span.service_name,
                    method=_str(attrs.get(HTTP_METHOD)),
                    path=_str(attrs.get(URL_PATH)),
                    decision=decision.upper(),
                    revision=_str(attrs.get(POLICY_REVISION)),
                    status=status,
                    policy=_str(attrs.get(POLICY_NAME)),
                    rule=rule,
                    reason=_str(attrs.get(POLICY_REASON)),
                    location=_str(attrs.get(POLICY_LOCATION)),
                )
            )
            while len(self._decisions) > self.max_decisions:
                self._decisions.pop()

    def _prune(self, now_ns: int) -> None:
        # Spans arrive in batches, roughly in end order; a straggler older than the window is
        # dropped when it reaches the front, which is all the precision a rate needs.
        horizon = now_ns - int(self.window_s * 1e9)
        while self._calls and self._calls[0].end_ns < horizon:
            self._calls.popleft()

    def _effective_window(self, now_ns: int) -> float:
        """Seconds the kept calls can cover: the window, or less just after start or after drops."""
        window = self.window_s
        if self._first_ingest_ns is not None and self.dropped_calls == 0:
            window = min(window, max(1.0, (now_ns - self._first_ingest_ns) / 1e9))
        elif self._calls and self.dropped_calls:
            window = min(window, max(1.0, (now_ns - self._calls[0].end_ns) / 1e9))
        return window

    def service_of(self, spiffe_id: str, registrations: Mapping[str, str]) -> str | None:
        """The service a SPIFFE ID runs as: the control plane's registration, else what spans said."""
        return registrations.get(spiffe_id) or self._learned.get(spiffe_id)

    def topology(self, now_ns: int, registrations: Mapping[str, str] = {}) -> Topology:  # read-only
        """Nodes and edges over the window. `registrations` maps SPIFFE ID -> service (the store's)."""
        self._prune(now_ns)
        window = self._effective_window(now_ns)
        grouped: dict[tuple[str, str], list[_Call]] = {}
        for call in self._calls:
            source = self._caller(call, registrations)
            grouped.setdefault((source, call.destination), []).append(call)
        edges = []
        for (source, destination), calls in sorted(grouped.items()):
            denied = sum(c.denied for c in calls)
            ok = sum(c.ok for c in calls)
            edges.append(
                EdgeStats(
                    source=source,
                    destination=destination,
                    requests=len(calls),
                    rate_rps=len(calls) / window,
                    success_rate=ok / len(calls),
                    # Latency of the calls that reached the app; a denial's few microseconds would
                    # hide it. An all-denied edge shows the denials' own latency.
                    p99_ms=p99(
                        [c.duration_ns for c in calls if not c.denied] or [c.duration_ns for c in calls]
                    ),
                    denied=denied,
                    errors=len(calls) - ok - denied,
                )
            )
        ids: dict[str, set[str]] = {}
        for spiffe_id, service in {**self._learned, **registrations}.items():
            ids.setdefault(service, set()).add(spiffe_id)
        names = set(ids) | {e.source for e in edges} | {e.destination for e in edges}
        nodes = tuple(
            NodeStats(
                service=name,
                spiffe_ids=tuple(sorted(ids.get(name, ()))),
                requests_in=sum(e.requests for e in edges if e.destination == name),
                denied_in=sum(e.denied for e in edges if e.destination == name),
            )
            for name in sorted(names)
        )
        return Topology(window_s=self.window_s, nodes=nodes, edges=tuple(edges))

    def _caller(self, call: _Call, registrations: Mapping[str, str]) -> str:
        if call.source_id is not None:
            known = self.service_of(call.source_id, registrations)
            if known is not None:
                return known
        if call.parent_span_id is not None:
            parent = self._client_service.get(call.parent_span_id)
            if parent is not None:
                return parent
        return call.source_id or "unknown"

    def decisions(self, limit: int = 50) -> list[DecisionRecord]:
        """The newest `limit` decisions, newest first."""
        return list(self._decisions)[:limit]

    def last_seen(self, spiffe_id: str) -> int | None:
        """When this identity last called through the mesh (Unix ns), or None if never seen."""
        return self._id_seen.get(spiffe_id)

    def service_last_seen(self, service: str) -> int | None:
        """When a sidecar of this service last reported a span (Unix ns), or None."""
        return self._service_seen.get(service)
