"""The same tree on two CPython builds: the harness's interpreter against another, in one run.

    .venv/bin/python -m bench.interpreter_ab OTHER_PYTHON [rounds] [seconds]   (default 4 rounds of 5 s)

Makes a throwaway venv from OTHER_PYTHON with this tree and its dependencies installed
(pip, from pyproject.toml), then measures, legs alternating round by round:
1. the sidecar pair as `make bench` runs it (`bench.interleaved`: stunnel, the pair on
   OTHER_PYTHON, the pair on the harness's interpreter): req/s and each sidecar's CPU µs
   per request;
2. `/v1/renew` per control-plane CPU-second, one control plane on each interpreter
   (`bench.ca_bench`'s loop, as `bench.renew_ab` runs it).
Both run this tree's code (the processes start from the repository root). This is how
the choice in scripts/pick-python.sh was measured (docs/sidecar-design.md, "The
interpreter"). Stops what it starts; the venv goes with the temporary directory.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import interleaved, topologies
from bench.renew_ab import REPO, alternate, start_all
from trustmesh.tracing.logs import configure_logging


def _venv(python: str, into: Path) -> str:
    """A venv from `python` with this tree installed; its interpreter's path."""
    subprocess.run([python, "-m", "venv", str(into)], check=True)
    bin_python = str(into / "bin" / "python")
    subprocess.run([bin_python, "-m", "pip", "install", "-q", str(REPO)], check=True)
    return bin_python


def _renew(pythons: dict[str, str], work: Path, rounds: int, seconds: float) -> None:
    plan = {name: (REPO, work / name, python) for name, python in pythons.items()}
    results = alternate(start_all(plan), rounds, seconds)
    print(f"\n/v1/renew, medians over {rounds} rounds of {seconds:g} s:")
    for name, values in results.items():
        print(f"  {name:14} {statistics.median(values):6.0f} renewals per control-plane CPU-second")


def main() -> None:
    other, rounds, seconds = interleaved.ab_arguments(__doc__)
    configure_logging(level="warning")
    with tempfile.TemporaryDirectory(prefix="trustmesh-interpreter-ab-") as tmp:
        other_python = _venv(other, Path(tmp) / "venv")
        pythons = {"other": other_python, "this-venv": sys.executable}
        for name, python in pythons.items():
            version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                     capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
            print(f"{name}: Python {version}, {os.path.realpath(python)}")
        client, server = interleaved.cpu_split()
        with interleaved.ab_setup(None, server, "trustmesh-interpreter-ab-") as ab:  # no other tree
            legs = [topologies.start_stunnel(ab.running, ab.work, ab.pki, ab.backend, server)]
            legs += [ab.trustmesh(name, python=python) for name, python in pythons.items()]
            results = interleaved.measure_pinned(legs, rounds, seconds, client)
        interleaved.print_medians(results, rounds, seconds)
        renew_work = Path(tmp) / "renew"
        renew_work.mkdir()
        _renew(pythons, renew_work, rounds, seconds)


if __name__ == "__main__":
    main()
