"""Fixtures for the GUI tests: a seeded control plane (real CA, git policy, joins, OTLP spans)
served in-process on loopback, and a per-test directory for screenshots under test-output/."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trustmesh.control.gui.seeded import SeededMesh, start_seeded_mesh

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def mesh(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[SeededMesh]:
    with trio.fail_after(60):
        seeded = await start_seeded_mesh(nursery, tmp_path, requests=30)
    try:
        yield seeded
    finally:
        seeded.stop()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """test-output/gui/<test name>/: kept after the run (CI uploads test-output/), ignored by git."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    out = REPO / "test-output" / "gui" / name
    out.mkdir(parents=True, exist_ok=True)
    return out
