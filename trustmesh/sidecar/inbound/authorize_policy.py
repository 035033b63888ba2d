"""Authorization by the policy engine: default deny, every decision logged and counted.

The authorizer holds one compiled `PolicyEngine` and swaps the reference when a new
revision arrives (`update`). Engines never change once built, so a request being
decided while a revision lands sees one revision or the other, never a mix, and a
kept-alive connection is judged by the new revision from its next request on.

Before the first revision arrives the engine is built from an empty revision: no
ALLOW selects anything, so everything is denied (zero trust: a workload no ALLOW
selects accepts nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import structlog

from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.policy.decision_log import log_decision
from trustmesh.policy.engine import Decision, PolicyEngine, Request
from trustmesh.policy.model import Revision
from trustmesh.tracing.logs import level_enabled

log = structlog.get_logger("trustmesh.policy.decisions")

# The revision id a sidecar reports before it has received any policy.
NO_REVISION = "none"

DecisionHook = Callable[[Decision], None]


class PolicyAuthorizer:
    """The `Authorizer` of `inbound.authorize` backed by a policy revision."""

    def __init__(self, own_id: SpiffeId, *, on_decision: DecisionHook | None = None) -> None:
        self._own = str(own_id)
        self._engine = PolicyEngine(Revision(id=NO_REVISION, files=(), authorization=()))
        self._on_decision = on_decision

    @property
    def revision(self) -> str:
        return self._engine.revision.id

    def update(self, revision: Revision) -> None:
        """Make `revision` decide every request from now on."""
        previous = self._engine.revision.id
        self._engine = PolicyEngine(revision)
        log.info("policy_revision_applied", revision=revision.id, previous_revision=previous)

    def authorize_http(self, peer: SpiffeId, method: str, path: str, port: int) -> Decision:
        source = str(peer)
        decision = self._engine.decide(source, self._own, method, path, port)
        self._record(decision, source, method, path, port)
        return decision

    def authorize_tcp(self, peer: SpiffeId, port: int) -> Decision:
        source = str(peer)
        decision = self._engine.decide(source, self._own, port=port)
        self._record(decision, source, None, None, port)
        return decision

    def _record(self, decision: Decision, peer: str, method: str | None, path: str | None, port: int) -> None:
        if self._on_decision is not None:
            self._on_decision(decision)
        # Plain allows are logged at debug; skip building the event when nobody reads it,
        # since this runs on every request.
        if decision.allowed and not decision.audit and not level_enabled(logging.DEBUG):
            return
        log_decision(log, decision, Request(peer, self._own, method, path, port))
