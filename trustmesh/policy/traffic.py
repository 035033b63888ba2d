"""Reading a TrafficPolicy `spec` into a `TrafficSpec`, every problem at its file:line.

    spec:
      service: spiffe://example.org/ns/default/sa/api   # whose calls these settings govern
      timeouts: {request: 2s, connect: 500ms}
      retries:
        maxAttempts: 3
        budget: {percent: 20, minPerSecond: 10, window: 10s}
        retryOn: [connection-failure, 502, 503, 504]
      outlierDetection: {consecutiveFailures: 5, baseEjection: 30s, maxEjection: 5m, maxEjectedPercent: 50}
      loadBalancer: {policy: P2C_EWMA}                   # or ROUND_ROBIN

Every field is optional; what is absent takes the sidecar's default. Bounds are there to
catch typos (`window: 10h`), not to second-guess operators: each is far from sensible values.
"""

from __future__ import annotations

import yaml

from trustmesh.durations import parse_duration
from trustmesh.policy.model import TrafficSpec
from trustmesh.policy.yamltree import Field, NodeReader, line_of

__all__ = ["SPEC_FIELDS", "read_traffic_spec"]

SPEC_FIELDS = frozenset({"service", "timeouts", "retries", "outlierDetection", "loadBalancer"})
_TIMEOUTS = frozenset({"request", "connect"})
_RETRIES = frozenset({"maxAttempts", "budget", "retryOn"})
_BUDGET = frozenset({"percent", "minPerSecond", "window"})
_OUTLIER = frozenset({"consecutiveFailures", "baseEjection", "maxEjection", "maxEjectedPercent"})
_BALANCER = frozenset({"policy"})
BALANCER_POLICIES = ("P2C_EWMA", "ROUND_ROBIN")
CONNECTION_FAILURE = "connection-failure"

_HOUR = 3600.0


def read_traffic_spec(reader: NodeReader, spec: dict[str, Field]) -> TrafficSpec:
    """The settings in `spec` (a mapping already checked against `SPEC_FIELDS`).

    Problems go to `reader`; the caller discards the result if any were added.
    """
    values: dict[str, object] = {}
    if "timeouts" in spec:
        fields = _mapping(reader, spec["timeouts"], "spec.timeouts", _TIMEOUTS)
        request = _duration(reader, fields.get("request"), "spec.timeouts.request", 0.001, _HOUR)
        connect = _duration(reader, fields.get("connect"), "spec.timeouts.connect", 0.001, 300.0)
        if request is not None and connect is not None and connect > request:
            reader.problem(
                fields["connect"].key_line,
                "spec.timeouts.connect: longer than spec.timeouts.request"
                " (the request deadline would always fire first)",
            )
        values.update(request_timeout=request, connect_timeout=connect)
    if "retries" in spec:
        fields = _mapping(reader, spec["retries"], "spec.retries", _RETRIES)
        values["max_attempts"] = _integer(
            reader, fields.get("maxAttempts"), "spec.retries.maxAttempts", 1, 10
        )
        if "budget" in fields:
            budget = _mapping(reader, fields["budget"], "spec.retries.budget", _BUDGET)
            values["budget_percent"] = _number(
                reader, budget.get("percent"), "spec.retries.budget.percent", 0, 100
            )
            values["budget_min_per_second"] = _number(
                reader, budget.get("minPerSecond"), "spec.retries.budget.minPerSecond", 0, 10_000
            )
            values["budget_window"] = _duration(
                reader, budget.get("window"), "spec.retries.budget.window", 1.0, _HOUR
            )
        if "retryOn" in fields:
            on_failure, statuses = _retry_on(reader, fields["retryOn"].value)
            values.update(retry_on_connection_failure=on_failure, retry_statuses=statuses)
    if "outlierDetection" in spec:
        where = "spec.outlierDetection"
        fields = _mapping(reader, spec["outlierDetection"], where, _OUTLIER)
        base = _duration(reader, fields.get("baseEjection"), where + ".baseEjection", 1.0, _HOUR)
        cap = _duration(reader, fields.get("maxEjection"), where + ".maxEjection", 1.0, 24 * _HOUR)
        if base is not None and cap is not None and base > cap:
            reader.problem(
                fields["baseEjection"].key_line, f"{where}.baseEjection: longer than {where}.maxEjection"
            )
        values.update(
            consecutive_failures=_integer(
                reader, fields.get("consecutiveFailures"), where + ".consecutiveFailures", 1, 1000
            ),
            base_ejection=base,
            max_ejection=cap,
            max_ejected_percent=_integer(
                reader, fields.get("maxEjectedPercent"), where + ".maxEjectedPercent", 0, 100
            ),
        )
    if "loadBalancer" in spec:
        fields = _mapping(reader, spec["loadBalancer"], "spec.loadBalancer", _BALANCER, required=_BALANCER)
        if "policy" in fields:
            node = fields["policy"].value
            policy = reader.string(node, "spec.loadBalancer.policy")
            if policy is not None and policy not in BALANCER_POLICIES:
                reader.problem(
                    line_of(node),
                    f"spec.loadBalancer.policy: unknown policy {policy!r} (expected P2C_EWMA or ROUND_ROBIN)",
                )
            elif policy is not None:
                values["load_balancer"] = policy
    return TrafficSpec(**values)  # type: ignore[arg-type]


def _mapping(
    reader: NodeReader,
    entry: Field,
    where: str,
    allowed: frozenset[str],
    required: frozenset[str] = frozenset(),
) -> dict[str, Field]:
    return (
        reader.mapping(entry.value, where, allowed=allowed, required=required, owner_line=entry.key_line)
        or {}
    )


def _duration(reader: NodeReader, entry: Field | None, where: str, low: float, high: float) -> float | None:
    if entry is None:
        return None
    text = reader.string(entry.value, where)
    if text is None:
        return None
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        reader.problem(line_of(entry.value), f"{where}: {exc}")
        return None
    if not low <= seconds <= high:
        reader.problem(line_of(entry.value), f"{where}: {text} is outside {_span(low)}-{_span(high)}")
        return None
    return seconds


def _span(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds >= _HOUR and seconds % _HOUR == 0:
        return f"{int(seconds // _HOUR)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _integer(reader: NodeReader, entry: Field | None, where: str, low: int, high: int) -> int | None:
    if entry is None:
        return None
    value = reader.integer(entry.value, where)
    if value is not None and not low <= value <= high:
        reader.problem(line_of(entry.value), f"{where}: {value} is outside {low}-{high}")
        return None
    return value


def _number(reader: NodeReader, entry: Field | None, where: str, low: float, high: float) -> float | None:
    if entry is None:
        return None
    node = entry.value
    value = reader.plain(node, where) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        reader.problem(line_of(node), f"{where}: expected a number, got {node.value!r}")
        return None
    if not low <= value <= high:
        reader.problem(line_of(node), f"{where}: {value:g} is outside {low:g}-{high:g}")
        return None
    return float(value)


def _retry_on(reader: NodeReader, node: yaml.Node) -> tuple[bool | None, frozenset[int] | None]:
    """`[connection-failure, 502, 503]`: the failures to retry on (replacing the default list)."""
    items = reader.sequence(node, "spec.retries.retryOn")
    if items is None:
        return None, None
    on_failure = False
    statuses: set[int] = set()
    for i, item in enumerate(items):
        where = f"spec.retries.retryOn[{i}]"
        value = reader.plain(item, where) if isinstance(item, yaml.ScalarNode) else None
        if value == CONNECTION_FAILURE:
            on_failure = True
        elif isinstance(value, int) and not isinstance(value, bool) and 500 <= value <= 599:
            statuses.add(value)
        else:
            shown = repr(value) if isinstance(item, yaml.ScalarNode) else "a nested value"
            reader.problem(line_of(item), f"{where}: {shown} is not connection-failure or a 5xx status code")
    return on_failure, frozenset(statuses)
