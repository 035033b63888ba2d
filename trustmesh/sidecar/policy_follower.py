"""Keeping the sidecar's authorizer at the active policy revision.

Two sources, one at a time:
- the control plane (default): `GET /v1/policy/revision?known=<rev>` over mTLS every
  `--policy-poll`; the answer is the active revision's validated files, which the
  sidecar compiles with the same loader the control plane used. (The configuration
  stream of issue 5 will push instead of being polled; the compile-and-swap stays.)
- a local directory (`--policy-dir`), for a sidecar run without a policy source on
  the control plane.

A revision that does not compile here (which the control plane's validation makes
unexpected) is logged and skipped: the last good revision stays, as on the control
plane. A control plane that cannot be reached leaves the current revision in force.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
import trio

from trustmesh.control.join_client import ControlPlaneError
from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Problems, Revision
from trustmesh.policy.source import PolicySourceError, read_dir
from trustmesh.sidecar.inbound.authorize_policy import PolicyAuthorizer

log = structlog.get_logger(__name__)

DEFAULT_POLICY_POLL = timedelta(seconds=5)

# fetch(known_revision) -> the JSON body of GET /v1/policy/revision
FetchRevision = Callable[[str | None], Awaitable[dict[str, Any]]]


class PolicyFollower:
    """Polls one policy source and hands each new revision to the authorizer."""

    def __init__(
        self,
        authorizer: PolicyAuthorizer,
        *,
        fetch: FetchRevision | None = None,
        policy_dir: Path | None = None,
        interval: timedelta = DEFAULT_POLICY_POLL,
        also_apply: Sequence[Callable[[Revision], None]] = (),
    ) -> None:
        if (fetch is None) == (policy_dir is None):
            raise ValueError("exactly one of fetch and policy_dir is needed")
        self.authorizer = authorizer
        self._fetch = fetch
        self._dir = policy_dir
        self.interval = interval
        # Others that follow the same revision (the outbound's traffic settings).
        self._also_apply = tuple(also_apply)
        self._refused: str | None = None

    async def poll_once(self) -> bool:
        """One look at the source; True when a new revision was applied."""
        try:
            revision = await (self._from_dir() if self._dir is not None else self._from_control_plane())
        except (OSError, PolicySourceError, ControlPlaneError) as exc:
            log.warning("policy_fetch_failed", error=type(exc).__name__, detail=str(exc))
            return False
        if revision is None:
            return False
        self.authorizer.update(revision)
        for apply in self._also_apply:
            apply(revision)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.poll_once()
        task_status.started()
        while True:
            await trio.sleep(self.interval.total_seconds())
            await self.poll_once()

    def _compiled(self, revision_id: str, files: dict[str, bytes], message: str | None) -> Revision | None:
        if revision_id in (self.authorizer.revision, self._refused):
            return None
        loaded = load_revision(files, revision_id=revision_id, message=message)
        if isinstance(loaded, Problems):
            self._refused = revision_id
            log.warning(
                "policy_revision_refused",
                revision=revision_id,
                active_revision=self.authorizer.revision,
                problems=[str(p) for p in loaded.items[:20]],
            )
            return None
        return loaded

    async def _from_dir(self) -> Revision | None:
        assert self._dir is not None
        snapshot = await trio.to_thread.run_sync(read_dir, self._dir)
        return self._compiled(snapshot.revision_id, dict(snapshot.files), snapshot.message)

    async def _from_control_plane(self) -> Revision | None:
        assert self._fetch is not None
        body = await self._fetch(self.authorizer.revision)
        revision_id = body.get("revision")
        if not isinstance(revision_id, str) or body.get("unchanged"):
            return None
        raw = body.get("files")
        if not isinstance(raw, dict):
            log.warning("policy_revision_malformed", revision=revision_id)
            return None
        try:
            files = {str(path): base64.b64decode(data, validate=True) for path, data in raw.items()}
        except (binascii.Error, TypeError, ValueError):
            log.warning("policy_revision_malformed", revision=revision_id)
            return None
        message = body.get("message")
        return self._compiled(revision_id, files, message if isinstance(message, str) else None)
