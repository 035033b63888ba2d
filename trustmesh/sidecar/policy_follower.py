"""Keeping the sidecar's authorizer at the policy in a local directory (`--policy-dir`).

By default a sidecar takes policy from the control plane's stream (`stream_client.py`);
`--policy-dir` is for a sidecar run without a policy source on the control plane. The
directory is read every `--policy-poll`; a revision that does not validate is logged
and skipped, and the last good revision stays, as on the control plane.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import structlog
import trio

from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Problems, Revision
from trustmesh.policy.source import PolicySourceError, read_dir
from trustmesh.sidecar.inbound.authorize_policy import PolicyAuthorizer

log = structlog.get_logger(__name__)

DEFAULT_POLICY_POLL = timedelta(seconds=5)


class PolicyFollower:
    """Polls one policy source and hands each new revision to the authorizer."""

    def __init__(
        self,
        authorizer: PolicyAuthorizer,
        *,
        policy_dir: Path,
        interval: timedelta = DEFAULT_POLICY_POLL,
        also_apply: Sequence[Callable[[Revision], None]] = (),
    ) -> None:
        self.authorizer = authorizer
        self._dir = policy_dir
        self.interval = interval
        # Others that follow the same revision (the outbound's traffic settings).
        self._also_apply = tuple(also_apply)
        self._refused: str | None = None

    async def poll_once(self) -> bool:
        """One look at the source; True when a new revision was applied."""
        try:
            revision = await self._from_dir()
        except (OSError, PolicySourceError) as exc:
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
        snapshot = await trio.to_thread.run_sync(read_dir, self._dir)
        return self._compiled(snapshot.revision_id, dict(snapshot.files), snapshot.message)
