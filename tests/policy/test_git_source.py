"""Git as the source of truth, on real repositories made with the git CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from trustmesh.clock import ManualClock
from trustmesh.policy.model import Problems, Revision
from trustmesh.policy.source import (
    DirSource,
    GitSource,
    PolicySourceError,
    load_revision_from_dir,
    load_revision_from_git,
)
from trustmesh.policy.watcher import Activated, PolicyWatcher, Refused, SourceFailed, Unchanged

API = "spiffe://example.org/ns/default/sa/api"
WEB = "spiffe://example.org/ns/default/sa/web"


def allow(name: str, source: str = WEB) -> str:
    return f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
spec:
  selector: {{spiffeIds: ["{API}"]}}
  action: ALLOW
  rules:
    - from: {{spiffeIds: ["{source}"]}}
"""


def test_load_from_git_reads_the_commit_not_the_working_tree(git_repo) -> None:
    sha = git_repo.commit({"policies/api.yaml": allow("web-to-api")}, "allow web to call api")
    git_repo.write({"policies/api.yaml": "broken: [\n", "policies/new.yaml": allow("uncommitted")})
    revision = load_revision_from_git(git_repo.path, "main")
    assert isinstance(revision, Revision)
    assert revision.id == sha
    assert revision.message == "allow web to call api"
    assert [p.name for p in revision.authorization] == ["web-to-api"]
    # The same checkout read as a plain directory sees the uncommitted edits.
    assert isinstance(load_revision_from_dir(git_repo.path), Problems)


def test_load_from_git_at_older_ref_and_abbreviated_sha(git_repo) -> None:
    first = git_repo.commit({"a.yaml": allow("one")}, "one")
    git_repo.commit({"b.yaml": allow("two")}, "two")
    at_first = load_revision_from_git(git_repo.path, first[:10])
    assert isinstance(at_first, Revision) and at_first.id == first
    assert [p.name for p in at_first.authorization] == ["one"]
    at_main = load_revision_from_git(git_repo.path, "main")
    assert isinstance(at_main, Revision)
    assert [p.name for p in at_main.authorization] == ["one", "two"]


def test_dotfiles_and_ci_workflows_are_not_policy(git_repo) -> None:
    git_repo.commit({"a.yaml": allow("one"), ".github/workflows/ci.yaml": "on: push\n"}, "with ci")
    assert isinstance(load_revision_from_git(git_repo.path, "main"), Revision)


def test_unreadable_sources_raise_source_errors(tmp_path: Path, git_repo) -> None:
    with pytest.raises(PolicySourceError, match="not a git repository"):
        load_revision_from_git(tmp_path, "main")
    with pytest.raises(PolicySourceError, match="no commit for ref"):
        load_revision_from_git(git_repo.path, "main")  # no commits yet
    with pytest.raises(PolicySourceError):
        load_revision_from_dir(tmp_path / "missing")


def test_watcher_activates_good_refuses_bad_and_keeps_last_good(git_repo) -> None:
    clock = ManualClock()
    watcher = PolicyWatcher(GitSource(git_repo.path, "main"), clock)
    assert isinstance(watcher.poll(), SourceFailed)  # empty repository: nothing to read yet

    good = git_repo.commit({"api.yaml": allow("web-to-api")}, "good")
    event = watcher.poll()
    assert isinstance(event, Activated) and event.previous is None
    assert event.active.revision.id == good
    assert event.active.engine.decide(WEB, API).allowed
    activated_at = clock.now()

    clock.advance(timedelta(seconds=5))
    assert watcher.poll() == Unchanged(good)

    bad = git_repo.commit({"api.yaml": allow("web-to-api").replace("ALLOW", "PERMIT")}, "typo")
    clock.advance(timedelta(seconds=5))
    event = watcher.poll()
    assert isinstance(event, Refused)
    assert event.refused.revision_id == bad
    assert [str(p) for p in event.refused.problems] == [
        "api.yaml:7: spec.action: unknown action 'PERMIT' (expected ALLOW, DENY or AUDIT)"
    ]
    assert watcher.active is not None and watcher.active.revision.id == good
    assert watcher.active.engine.decide(WEB, API).allowed
    assert watcher.poll() == Unchanged(bad)  # refused once, not re-validated every poll

    # Uncommitted edits in the checkout change nothing.
    git_repo.write({"api.yaml": allow("web-to-api", source="spiffe://example.org/x")})
    assert watcher.poll() == Unchanged(bad)

    fixed = git_repo.commit({"api.yaml": allow("web-to-api-v2")}, "fix typo")
    event = watcher.poll()
    assert isinstance(event, Activated) and event.previous == good
    assert event.active.revision.id == fixed

    body = json.loads(json.dumps(watcher.to_json()))
    assert body["active"]["revision"] == fixed
    assert body["active"]["message"] == "fix typo"
    assert body["active"]["files"] == ["api.yaml"]
    assert [p["name"] for p in body["active"]["policies"]] == ["web-to-api-v2"]
    assert body["active"]["activated_at"] > activated_at.isoformat()
    assert body["last_refused"]["revision"] == bad
    assert body["last_refused"]["problems"][0]["line"] == 7


def test_first_commit_bad_leaves_nothing_active(git_repo) -> None:
    git_repo.commit({"api.yaml": "kind: [\n"}, "broken from the start")
    watcher = PolicyWatcher(GitSource(git_repo.path), ManualClock())
    assert isinstance(watcher.poll(), Refused)
    assert watcher.active is None
    assert watcher.to_json()["active"] is None


def test_dir_source_activates_on_content_change(tmp_path: Path, tree) -> None:
    tree(tmp_path, {"api.yaml": allow("one")})
    watcher = PolicyWatcher(DirSource(tmp_path), ManualClock())
    first = watcher.poll()
    assert isinstance(first, Activated) and first.active.revision.id.startswith("dir:")
    assert isinstance(watcher.poll(), Unchanged)
    tree(tmp_path, {"api.yaml": allow("two")})
    second = watcher.poll()
    assert isinstance(second, Activated)
    assert [p.name for p in second.active.revision.authorization] == ["two"]
