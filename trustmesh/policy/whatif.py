"""Replaying recorded decisions against two revisions: what would a policy change do?

Istio's dry-run and Linkerd's audit mode only show the effect of a policy on
traffic that flows after it is deployed. Here the sidecars' decision log (see
`trustmesh.policy.decision_log`) is replayed offline against the policy at two
commits, and every flow whose decision differs is listed with its request count
and the rule responsible, before the change merges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from trustmesh.policy.decision_log import MalformedEvent, parse_decision_event
from trustmesh.policy.engine import Decision, PolicyEngine, Request
from trustmesh.policy.model import JsonValue

__all__ = ["FlowChange", "WhatIfReport", "replay"]


@dataclass(frozen=True, slots=True)
class FlowChange:
    """One flow (source, destination, method, path, port) whose decision changes."""

    request: Request
    before: Decision
    after: Decision
    count: int

    @property
    def responsible(self) -> Decision:
        """The decision that names the rule responsible for the change.

        A flow newly denied by the default (no rule matches any more) is explained by the
        ALLOW rule it used to match; otherwise by the rule that now decides.
        """
        if self.after.policy is None and self.before.policy is not None:
            return self.before
        return self.after

    def to_json(self) -> dict[str, JsonValue]:
        r = self.request
        return {
            "count": self.count,
            "source": r.source,
            "destination": r.destination,
            "method": r.method,
            "path": r.path,
            "port": r.port,
            "protocol": r.protocol,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }


@dataclass(slots=True)
class WhatIfReport:
    from_revision: str
    to_revision: str
    events: int = 0
    skipped_lines: int = 0
    malformed_events: int = 0
    # Recorded decisions that differ from a replay at `from`: the log came from another revision.
    recorded_mismatches: int = 0
    newly_denied: list[FlowChange] = field(default_factory=list)
    newly_allowed: list[FlowChange] = field(default_factory=list)

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "from": self.from_revision,
            "to": self.to_revision,
            "events": self.events,
            "skipped_lines": self.skipped_lines,
            "malformed_events": self.malformed_events,
            "recorded_mismatches": self.recorded_mismatches,
            "newly_denied": [c.to_json() for c in self.newly_denied],
            "newly_allowed": [c.to_json() for c in self.newly_allowed],
        }


def replay(lines: Iterable[str], before: PolicyEngine, after: PolicyEngine) -> WhatIfReport:
    """Decide every recorded request under both engines and group the changes by flow."""
    report = WhatIfReport(before.revision.id, after.revision.id)
    counts: dict[Request, int] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            recorded = parse_decision_event(line)
        except MalformedEvent:
            report.malformed_events += 1
            continue
        if recorded is None:
            report.skipped_lines += 1
            continue
        report.events += 1
        counts[recorded.request] = counts.get(recorded.request, 0) + 1
        replayed = before.decide_request(recorded.request).decision
        if recorded.decision is not None and recorded.decision != replayed:
            report.recorded_mismatches += 1
    for request, count in counts.items():
        old, new = before.decide_request(request), after.decide_request(request)
        if old.decision == new.decision:
            continue
        change = FlowChange(request, old, new, count)
        (report.newly_allowed if new.allowed else report.newly_denied).append(change)
    for changes in (report.newly_denied, report.newly_allowed):
        changes.sort(key=lambda c: (-c.count, c.request.source, c.request.destination, c.request.path or ""))
    return report
