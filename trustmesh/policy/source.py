"""Where policy files come from: the committed tree of a git ref, or a plain directory.

The git reader uses dulwich to read objects, never the working tree: what is
enforced is exactly what was committed (and reviewed), whatever is lying around
uncommitted in a checkout. A plain directory is for development and for sidecars
that load policy themselves before the control-plane stream exists.

Both skip dot-files and dot-directories (`.git`, `.github/workflows/*.yaml`,
`.pre-commit-config.yaml` are not policy) and symbolic links (a link's content in
git is its target path, not a file; following them would read outside the tree).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trustmesh.policy.loader import is_expectation_file, is_policy_file, load_revision
from trustmesh.policy.model import Problems, Revision

if TYPE_CHECKING:
    from dulwich.objects import Commit
    from dulwich.repo import Repo

__all__ = [
    "DirSource",
    "GitSource",
    "PolicySourceError",
    "Snapshot",
    "load_revision_from_dir",
    "load_revision_from_git",
    "read_dir",
    "read_git",
    "resolve_git_ref",
]


class PolicySourceError(Exception):
    """The source could not be read at all (no such repository, ref or directory): not a policy problem."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The policy and expectation files of one state of a source, by path relative to its root."""

    revision_id: str
    files: Mapping[str, bytes]
    message: str | None = None

    def load(self) -> Revision | Problems:
        return load_revision(self.files, revision_id=self.revision_id, message=self.message)


def _wanted(path: str) -> bool:
    if any(part.startswith(".") for part in path.split("/")):
        return False
    return is_policy_file(path) or is_expectation_file(path)


def _open_repo(repo: str | Path) -> Repo:
    # dulwich is imported where git is read: a sidecar following a plain directory (or the
    # control plane's stream) never loads it.
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo

    try:
        return Repo(str(repo))
    except NotGitRepository as exc:
        raise PolicySourceError(f"{repo}: not a git repository") from exc


def _resolve(repository: Repo, repo: str | Path, ref: str) -> Commit:
    from dulwich.objectspec import parse_commit

    try:
        return parse_commit(repository, ref)
    except KeyError as exc:
        raise PolicySourceError(f"{repo}: no commit for ref {ref!r}") from exc


def resolve_git_ref(repo: str | Path, ref: str) -> str:
    """The commit SHA that `ref` (branch, tag, full or abbreviated SHA) names now."""
    with _open_repo(repo) as repository:
        return str(_resolve(repository, repo, ref).id.decode("ascii"))


def read_git(repo: str | Path, ref: str) -> Snapshot:
    """The committed tree at `ref`: revision id = commit SHA, message = commit message."""
    from dulwich.objects import Blob

    with _open_repo(repo) as repository:
        commit = _resolve(repository, repo, ref)
        files: dict[str, bytes] = {}
        for entry in repository.object_store.iter_tree_contents(commit.tree):
            if entry.path is None or entry.mode is None or entry.sha is None:
                continue
            if not stat.S_ISREG(entry.mode):  # symlinks and submodules are not policy files
                continue
            path = entry.path.decode("utf-8", errors="replace")
            if not _wanted(path):
                continue
            blob = repository.object_store[entry.sha]
            if isinstance(blob, Blob):
                files[path] = blob.as_raw_string()
        message = commit.message.decode("utf-8", errors="replace").strip()
        return Snapshot(commit.id.decode("ascii"), files, message)


def read_dir(path: str | Path) -> Snapshot:
    """Policy and expectation files under `path` (or `path` itself if it is a file).

    The revision id is `dir:` and the SHA-256 of the files' names and contents, so an
    unchanged directory keeps its id from one poll to the next.
    """
    root = Path(path)
    files: dict[str, bytes] = {}
    try:
        if root.is_file():
            files[root.name] = root.read_bytes()
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in filenames:
                    full = Path(dirpath) / filename
                    relative = full.relative_to(root).as_posix()
                    if _wanted(relative) and not full.is_symlink():
                        files[relative] = full.read_bytes()
        else:
            raise PolicySourceError(f"{path}: no such file or directory")
    except OSError as exc:
        raise PolicySourceError(f"{path}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return Snapshot(f"dir:{digest.hexdigest()[:40]}", files)


def load_revision_from_git(repo: str | Path, ref: str) -> Revision | Problems:
    """Validate the committed tree at `ref`. Raises `PolicySourceError` if it cannot be read."""
    return read_git(repo, ref).load()


def load_revision_from_dir(path: str | Path) -> Revision | Problems:
    """Validate a plain directory (or one file). Raises `PolicySourceError` if it cannot be read."""
    return read_dir(path).load()


class GitSource:
    """A git ref polled by `PolicyWatcher`: `current_id` is one ref lookup, no tree read."""

    def __init__(self, repo: str | Path, ref: str = "main") -> None:
        self.repo = repo
        self.ref = ref

    def describe(self) -> str:
        return f"git:{self.repo}@{self.ref}"

    def current_id(self) -> str:
        return resolve_git_ref(self.repo, self.ref)

    def snapshot(self) -> Snapshot:
        return read_git(self.repo, self.ref)


class DirSource:
    """A plain directory polled by `PolicyWatcher` (`--policy-dir`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"dir:{self.path}"

    def current_id(self) -> str:
        return read_dir(self.path).revision_id

    def snapshot(self) -> Snapshot:
        return read_dir(self.path)
