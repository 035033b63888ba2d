"""Keeping the active policy revision in step with its source (what the control plane runs).

`PolicyWatcher.poll()` is one step, with no clock loop and no threads of its own:
the control plane calls it every `--policy-poll` (in `trio.to_thread.run_sync`,
since dulwich reads files) and acts on the event it returns. A commit that fails
validation is refused and logged with its problems; the last good revision stays
active, because a typo in a policy repository must never open or close the mesh.
`to_json()` is the body of `GET /v1/policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import structlog

from trustmesh.clock import Clock
from trustmesh.policy.engine import PolicyEngine
from trustmesh.policy.model import JsonValue, Problems, Revision
from trustmesh.policy.source import PolicySourceError, Snapshot

__all__ = [
    "Activated",
    "ActiveRevision",
    "PolicySource",
    "PolicyWatcher",
    "PollEvent",
    "Refused",
    "RefusedRevision",
    "SourceFailed",
    "Unchanged",
]

log = structlog.get_logger(__name__)

# How many problems one refusal log event carries; the rest are in GET /v1/policy.
_LOGGED_PROBLEMS = 20


class PolicySource(Protocol):
    """`GitSource` or `DirSource` (trustmesh.policy.source)."""

    def describe(self) -> str: ...

    def current_id(self) -> str:
        """The revision id the source holds now; cheap for git (one ref lookup)."""
        ...

    def snapshot(self) -> Snapshot: ...


@dataclass(frozen=True, slots=True)
class ActiveRevision:
    revision: Revision
    engine: PolicyEngine
    activated_at: datetime
    # The validated source files themselves (policy files only), so the control plane can
    # hand sidecars exactly what it validated; they compile it with the same loader.
    sources: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefusedRevision:
    revision_id: str
    message: str | None
    problems: Problems
    refused_at: datetime


@dataclass(frozen=True, slots=True)
class Activated:
    """A new revision is active: push `active.engine`/`active.revision` to sidecars."""

    active: ActiveRevision
    previous: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    """The source moved to a revision with problems; the previous revision stays active."""

    refused: RefusedRevision


@dataclass(frozen=True, slots=True)
class Unchanged:
    revision_id: str


@dataclass(frozen=True, slots=True)
class SourceFailed:
    """The source could not be read (repository or ref missing, I/O error); try again next poll."""

    error: str


PollEvent = Activated | Refused | Unchanged | SourceFailed


class PolicyWatcher:
    """Holds the active revision of one source and moves it forward on `poll()`."""

    def __init__(self, source: PolicySource, clock: Clock) -> None:
        self.source = source
        self.clock = clock
        self.active: ActiveRevision | None = None
        self.last_refused: RefusedRevision | None = None

    def poll(self) -> PollEvent:
        try:
            current = self.source.current_id()
            if self._seen(current):
                return Unchanged(current)
            snapshot = self.source.snapshot()
        except PolicySourceError as exc:
            log.warning("policy_source_failed", source=self.source.describe(), error=str(exc))
            return SourceFailed(str(exc))
        if self._seen(snapshot.revision_id):  # the ref moved back between the two reads
            return Unchanged(snapshot.revision_id)
        loaded = snapshot.load()
        now = self.clock.now()
        if isinstance(loaded, Problems):
            refused = RefusedRevision(snapshot.revision_id, snapshot.message, loaded, now)
            self.last_refused = refused
            log.warning(
                "policy_revision_refused",
                source=self.source.describe(),
                revision=snapshot.revision_id,
                active_revision=self.active.revision.id if self.active else None,
                problem_count=len(loaded),
                problems=[str(p) for p in loaded.items[:_LOGGED_PROBLEMS]],
            )
            return Refused(refused)
        previous = self.active.revision.id if self.active else None
        sources = {path: snapshot.files[path] for path in loaded.files if path in snapshot.files}
        self.active = ActiveRevision(loaded, PolicyEngine(loaded), now, sources)
        log.info(
            "policy_revision_activated",
            source=self.source.describe(),
            revision=loaded.id,
            previous_revision=previous,
            files=len(loaded.files),
            authorization_policies=len(loaded.authorization),
            traffic_policies=len(loaded.traffic),
        )
        return Activated(self.active, previous)

    def _seen(self, revision_id: str) -> bool:
        if self.active is not None and self.active.revision.id == revision_id:
            return True
        return self.last_refused is not None and self.last_refused.revision_id == revision_id

    def to_json(self) -> dict[str, JsonValue]:
        """The body of `GET /v1/policy`."""
        active: JsonValue = None
        if self.active is not None:
            revision = self.active.revision
            active = {
                "revision": revision.id,
                "message": revision.message,
                "activated_at": self.active.activated_at.isoformat(),
                "files": list(revision.files),
                "policies": revision.policies_json(),
            }
        refused: JsonValue = None
        if self.last_refused is not None:
            refused = {
                "revision": self.last_refused.revision_id,
                "message": self.last_refused.message,
                "refused_at": self.last_refused.refused_at.isoformat(),
                "problems": self.last_refused.problems.to_json(),
            }
        return {"source": self.source.describe(), "active": active, "last_refused": refused}
