"""CLI tests run the installed `trustmesh` command as a real subprocess."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trustmesh_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "trustmesh"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("trustmesh")
    return [found] if found else [sys.executable, "-m", "trustmesh.cli.main"]
