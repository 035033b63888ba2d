"""Fixtures for the identity tests: a real CA (to issue and forge SVIDs), driven by a ManualClock."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `from tests.ca.forge import ...` needs the repository root importable (pytest runs with
# --import-mode=importlib, which does not add it).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from trustmesh.ca import CertificateAuthority  # noqa: E402
from trustmesh.clock import ManualClock  # noqa: E402

TRUST_DOMAIN = "example.org"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def ca(state_dir: Path, clock: ManualClock) -> Iterator[CertificateAuthority]:
    yield CertificateAuthority.init(state_dir, TRUST_DOMAIN, clock=clock)
