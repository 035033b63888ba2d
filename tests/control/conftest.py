"""Fixtures for control-plane tests: a real CA in a temp dir and the control plane serving
real HTTPS on a loopback port, in-process, with a ManualClock shared by CA and server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock
from trustmesh.control.testing import ControlPlaneHarness, start_control_plane


@pytest.fixture
def clock() -> ManualClock:
    # Start at wall-clock now: the client side of TLS still checks real time.
    return ManualClock(current=datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def state_dir(tmp_path: Path, clock: ManualClock) -> Path:
    state = tmp_path / "state"
    CertificateAuthority.init(state, "example.org", clock=clock)
    return state


@pytest.fixture
async def running(
    state_dir: Path, clock: ManualClock, nursery: trio.Nursery
) -> AsyncIterator[ControlPlaneHarness]:
    harness = await start_control_plane(nursery, state_dir, clock)
    try:
        yield harness
    finally:
        harness.cp.stop()
