"""The decision log event: one structured log line per authorization decision.

The sidecar's inbound emits it (through `log_decision`) and `trustmesh policy
whatif` reads it back (through `parse_decision_event`), so both sides of the
format live here. With structlog's JSON renderer a line looks like:

    {"event": "policy_decision", "decision": "DENY", "reason": "default-deny",
     "policy": null, "rule": null, "revision": "3f1c…", "source": "spiffe://…/web",
     "destination": "spiffe://…/api", "method": "GET", "path": "/admin", "port": 9001,
     "protocol": "http", "level": "info", "timestamp": "…"}

`path` is the request path as received with the query string removed (queries
carry secrets, and are not part of matching); it is *not* normalised, so a
replay normalises it again exactly as enforcement did. `audit` (a list of
`{"policy", "rule"}`) is present only when an AUDIT rule matched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from trustmesh.policy.engine import Decision, Request
from trustmesh.policy.model import JsonValue

__all__ = ["DECISION_EVENT", "RecordedDecision", "decision_fields", "log_decision", "parse_decision_event"]

DECISION_EVENT = "policy_decision"


class _Logger(Protocol):
    def info(self, event: str, **fields: Any) -> Any: ...

    def debug(self, event: str, **fields: Any) -> Any: ...


def decision_fields(decision: Decision, request: Request) -> dict[str, JsonValue]:
    """The event's fields other than `event` itself."""
    fields: dict[str, JsonValue] = {
        "decision": decision.decision,
        "reason": decision.reason,
        "policy": decision.policy,
        "rule": decision.rule,
        "revision": decision.revision,
        "source": request.source,
        "destination": request.destination,
        "method": request.method,
        "path": None if request.path is None else request.path.partition("?")[0],
        "port": request.port,
        "protocol": request.protocol,
    }
    if decision.audit:
        fields["audit"] = [{"policy": a.policy, "rule": a.rule} for a in decision.audit]
    return fields


def log_decision(logger: _Logger, decision: Decision, request: Request) -> None:
    """Denies and audited requests at info (operators look for them); plain allows at debug."""
    fields = decision_fields(decision, request)
    if decision.allowed and not decision.audit:
        logger.debug(DECISION_EVENT, **fields)
    else:
        logger.info(DECISION_EVENT, **fields)


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """A decision read back from a log: the request and what was decided then."""

    request: Request
    decision: str | None
    revision: str | None


class MalformedEvent(ValueError):
    """A line that claims to be a decision event but lacks what a replay needs."""


def parse_decision_event(line: str) -> RecordedDecision | None:
    """The decision in one log line; None for lines that are not decision events.

    Raises `MalformedEvent` for a `policy_decision` event without a usable source,
    destination, method, path or port.
    """
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("event") != DECISION_EVENT:
        return None
    source, destination = data.get("source"), data.get("destination")
    if not isinstance(source, str) or not isinstance(destination, str):
        raise MalformedEvent("decision event without source or destination")
    method, path, port = data.get("method"), data.get("path"), data.get("port")
    if data.get("protocol") == "tcp":
        method = path = None
    if method is not None and not isinstance(method, str):
        raise MalformedEvent(f"decision event with a non-string method {method!r}")
    if path is not None and not isinstance(path, str):
        raise MalformedEvent(f"decision event with a non-string path {path!r}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise MalformedEvent(f"decision event with a non-integer port {port!r}")
    recorded = data.get("decision")
    revision = data.get("revision")
    return RecordedDecision(
        Request(source, destination, method, path, port),
        recorded if isinstance(recorded, str) else None,
        revision if isinstance(revision, str) else None,
    )
