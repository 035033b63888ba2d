"""The decision log event: what the sidecar emits is exactly what whatif reads back."""

from __future__ import annotations

import io
import json

import structlog

from trustmesh.policy.decision_log import DECISION_EVENT, log_decision, parse_decision_event
from trustmesh.policy.engine import PolicyEngine, Request
from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Revision

API = "spiffe://example.org/ns/default/sa/api"
WEB = "spiffe://example.org/ns/default/sa/web"

POLICIES = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: web-reads}}
spec:
  selector: {{spiffeIds: ["{API}"]}}
  action: ALLOW
  rules: [{{from: {{spiffeIds: ["{WEB}"]}}, to: {{methods: [GET]}}}}]
---
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: watch}}
spec:
  action: AUDIT
  rules: [{{to: {{paths: ["/audited"]}}}}]
"""


def _json_lines_logger(stream: io.StringIO) -> structlog.typing.FilteringBoundLogger:
    """A logger configured like the sidecar's (JSON lines), writing into `stream`, at debug."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream),
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(10),
    )


def test_logged_events_round_trip_and_levels() -> None:
    revision = load_revision({"p.yaml": POLICIES.encode()}, revision_id="rev")
    assert isinstance(revision, Revision)
    engine = PolicyEngine(revision)
    stream = io.StringIO()
    logger = _json_lines_logger(stream)
    requests = [
        Request(WEB, API, "GET", "/items?secret=1", 9001),
        Request(WEB, API, "POST", "/items", 9001),
        Request(WEB, API, "GET", "/audited", 9001),
        Request(WEB, API, port=5432),
    ]
    for request in requests:
        log_decision(logger, engine.decide_request(request), request)
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["decision"], e["level"]) for e in events] == [
        (DECISION_EVENT, "ALLOW", "debug"),
        (DECISION_EVENT, "DENY", "info"),
        (DECISION_EVENT, "ALLOW", "info"),  # audited allows are logged where operators look
        (DECISION_EVENT, "DENY", "info"),
    ]
    assert set(events[0]) >= {
        "decision", "reason", "policy", "rule", "revision", "source", "destination",
        "method", "path", "port", "protocol",
    }  # fmt: skip
    assert events[0]["path"] == "/items"  # query strings (secrets) never reach the log
    assert events[2]["audit"] == [{"policy": "watch", "rule": 0}]
    assert events[3]["protocol"] == "tcp"

    parsed = [parse_decision_event(line) for line in lines]
    assert [p.request if p else None for p in parsed] == [
        Request(WEB, API, "GET", "/items", 9001),
        *requests[1:],
    ]
    assert [p.decision if p else None for p in parsed] == ["ALLOW", "DENY", "ALLOW", "DENY"]
    assert parse_decision_event('{"event": "http_request"}') is None
    assert parse_decision_event("plain text") is None
