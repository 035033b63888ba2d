"""Policy in the control plane: follow the source (git or a directory), serve what is active.

The control plane validates every revision before anything sees it: a commit that
fails validation is refused and logged, and the last good revision stays active (see
`trustmesh.policy.watcher`). Sidecars fetch the active revision's *source files* from
`GET /v1/policy/revision` and compile them with the same loader, so the control plane
and every sidecar decide from byte-identical input. Until the configuration stream
(issue 5) pushes revisions, sidecars poll that endpoint with the revision they hold and
get `{"unchanged": true}` when nothing moved.

Both endpoints need a valid SVID of the trust domain as TLS client certificate: policy
reveals who may call whom, which is worth keeping from anonymous callers.
"""

from __future__ import annotations

import base64
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh.control.app import PEER_CHAIN
from trustmesh.control.errors import ApiError
from trustmesh.control.issuer import Issuer
from trustmesh.policy.watcher import Activated, PolicyWatcher, Refused

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = structlog.get_logger(__name__)

ACTIVATIONS = Counter("trustmesh_policy_activations", "Policy revisions activated")
REFUSALS = Counter("trustmesh_policy_refusals", "Policy revisions refused by validation")

DEFAULT_POLICY_POLL = timedelta(seconds=5)


class PolicyService:
    """Owns the policy watcher's poll loop and the policy endpoints."""

    def __init__(self, watcher: PolicyWatcher, poll_interval: timedelta = DEFAULT_POLICY_POLL) -> None:
        self.watcher = watcher
        self.poll_interval = poll_interval
        # Set by the control plane when tracing is on: one span per activated revision.
        self.tracer: Tracer | None = None
        self.changed = trio.Event()  # set (and replaced) on every activation

    async def poll_once(self) -> None:
        # dulwich and the filesystem block: keep them off the event loop.
        started_ns = time.time_ns()
        event = await trio.to_thread.run_sync(self.watcher.poll)
        if isinstance(event, Refused):
            REFUSALS.inc()
        if isinstance(event, Activated):
            ACTIVATIONS.inc()
            if self.tracer is not None:
                # Recorded after the fact: only a poll that activated something is worth a span.
                span = self.tracer.start_span("trustmesh.policy.activate", start_time=started_ns)
                span.set_attribute("trustmesh.policy.revision", event.active.revision.id)
                if event.previous is not None:
                    span.set_attribute("trustmesh.policy.previous_revision", event.previous)
                span.end()
            self.changed.set()
            self.changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the source every `poll_interval`; `started` after the first poll."""
        await self.poll_once()
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval.total_seconds())
            await self.poll_once()

    def revision_json(self, known: str | None) -> dict[str, Any]:
        """What a sidecar needs to compile the active revision (or that it already has it)."""
        active = self.watcher.active
        if active is None:
            # No valid revision yet: sidecars stay at default deny.
            return {"revision": None, "files": {}}
        if known == active.revision.id:
            return {"revision": active.revision.id, "unchanged": True}
        return {
            "revision": active.revision.id,
            "message": active.revision.message,
            "activated_at": active.activated_at.isoformat(),
            "files": {
                path: base64.b64encode(content).decode("ascii") for path, content in active.sources.items()
            },
        }

    def routes(self, issuer: Issuer) -> list[Route]:
        def require_svid() -> None:
            issuer.authenticate(PEER_CHAIN.get())

        async def policy_status(request: Request) -> Response:
            require_svid()
            return JSONResponse(self.watcher.to_json())

        async def policy_revision(request: Request) -> Response:
            require_svid()
            known = request.query_params.get("known")
            if known is not None and len(known) > 200:
                raise ApiError(400, "invalid_field", "query parameter 'known' is too long")
            return JSONResponse(self.revision_json(known))

        return [
            Route("/v1/policy", policy_status, methods=["GET"]),
            Route("/v1/policy/revision", policy_revision, methods=["GET"]),
        ]
