"""Fixtures for the identity tests: a real CA (to issue and forge SVIDs), driven by a ManualClock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock

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
