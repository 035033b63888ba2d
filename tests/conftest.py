"""Suite-wide fixtures: the repository root importable, one real PostgreSQL server per session.

The cluster starts only when a test asks for `pg_cluster` (store contract tests, replicas),
and is stopped (by pg_ctl, else by PID) when the session ends.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.pgcluster import PgCluster, running_cluster  # noqa: E402


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A real PostgreSQL server for the whole session."""
    with running_cluster() as cluster:
        yield cluster
