"""The per-request series (`trustmesh_requests_total`, `trustmesh_request_duration_seconds`,
`trustmesh_policy_decisions_total`) as a prometheus-client custom collector: counted in plain
Python objects, turned into metric families only when `/metrics` is scraped.

Why not prometheus-client's `Counter` and `Histogram`: every request updates both, and each
update goes through label checks and a lock per value (the sidecar is one trio thread; the lock
protects nothing here). In a profile of the sidecar under load that was a dozen Python calls per
request; this is a dict lookup, a `bisect` and three additions. The exposition is the same text:
same names, labels, buckets and help (`tests/tracing/test_metrics.py` reads it back). What is
left out is the `_created` sample of each series, which nothing here reads.

Not thread-safe by design: one sidecar's requests are counted on its one trio thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

DECISIONS_HELP = "Inbound authorization decisions."
REQUESTS_HELP = "HTTP requests handled, by direction, peer identity, mesh service and status class."
DURATION_HELP = "Time from request head received to response complete, as seen by the sidecar."


class _Durations:
    """One label set's histogram: counts per bucket (not cumulative; the last is +Inf) and sum."""

    __slots__ = ("buckets", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.total = 0.0


class _Series:
    """One (direction, peer, service, status class): its count and its label set's histogram."""

    __slots__ = ("count", "durations", "labels")

    def __init__(self, labels: tuple[str, str, str, str], durations: _Durations) -> None:
        self.labels = labels
        self.count = 0
        self.durations = durations


class RequestSeries(Collector):
    """Request counts by status class, latency histograms and policy decisions, for one sidecar's
    registry."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(buckets)
        self._series: dict[tuple[str, str, str, int], _Series] = {}
        self._durations: dict[tuple[str, str, str], _Durations] = {}
        self._decisions: dict[str, int] = {}

    def observe(self, direction: str, peer: str, service: str, status: int, duration_s: float) -> None:
        """One finished request: `status` is the HTTP status (0 for none), `duration_s` its time."""
        key = (direction, peer, service, status // 100)
        series = self._series.get(key)
        if series is None:
            series = self._add(key, status)
        series.count += 1
        durations = series.durations
        durations.buckets[bisect_left(self._bounds, duration_s)] += 1
        durations.total += duration_s

    def observe_decision(self, decision: str) -> None:
        """One inbound authorization decision (`allow`, `deny`)."""
        self._decisions[decision] = self._decisions.get(decision, 0) + 1

    def _add(self, key: tuple[str, str, str, int], status: int) -> _Series:
        direction, peer, service, _ = key
        durations = self._durations.get((direction, peer, service))
        if durations is None:
            durations = self._durations[(direction, peer, service)] = _Durations(len(self._bounds) + 1)
        series = self._series[key] = _Series((direction, peer, service, status_class(status)), durations)
        return series

    def describe(self) -> Iterator[Metric]:
        yield from self._families(empty=True)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(empty=False)

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "trustmesh_requests", REQUESTS_HELP, labels=["direction", "peer", "service", "status_class"]
        )
        durations = HistogramMetricFamily(
            "trustmesh_request_duration_seconds", DURATION_HELP, labels=["direction", "peer", "service"]
        )
        decisions = CounterMetricFamily("trustmesh_policy_decisions", DECISIONS_HELP, labels=["decision"])
        if not empty:
            for decision, count in list(self._decisions.items()):
                decisions.add_metric([decision], count)
            # A label set whose status classes share one histogram is exported once.
            for series in list(self._series.values()):
                requests.add_metric(list(series.labels), series.count)
            bounds = [_go_float(b) for b in self._bounds] + ["+Inf"]
            for (direction, peer, service), hist in list(self._durations.items()):
                cumulative = 0
                buckets = []
                for le, count in zip(bounds, hist.buckets, strict=True):
                    cumulative += count
                    buckets.append((le, cumulative))
                durations.add_metric([direction, peer, service], buckets, hist.total)
        yield requests
        yield durations
        yield decisions


def _go_float(bound: float) -> str:
    """A bucket bound as prometheus-client writes `le` (`0.005`, `1.0`, `30.0`)."""
    return repr(float(bound))


def status_class(status: int) -> str:
    """`2xx`…`5xx`; anything else (a sidecar that never got a status) is `other`."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"
