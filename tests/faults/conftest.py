"""Fixtures for the fault tests: the repository root importable, so
`from tests.sidecar_e2e.mesh import ...` works under --import-mode=importlib."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
