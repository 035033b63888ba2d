"""How many inputs each fuzz test tries, and how hypothesis runs inside a trio test.

CI (`make test`) runs a small, reproducible budget: hypothesis is derandomized and keeps
no example database, so every run tries the same inputs. `TRUSTMESH_FUZZ_EXAMPLES=N`
(`make soak`) raises every test's budget to N; `TRUSTMESH_FUZZ_SEED` then picks a
different (but printed, so reproducible) stream of inputs.

The servers under test (control plane, inbound sidecar) run in the test's trio loop;
hypothesis runs its examples synchronously in a worker thread, and each example calls
back into the loop with `trio.from_thread.run`. So one server serves every example, and
every exchange runs under the loop's `trio.fail_after`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio
from hypothesis import HealthCheck, settings

# What every fuzz test tried, by test name: printed at the end of each (pytest -s or -rP).
TRIED: Counter[str] = Counter()


def examples(ci_default: int) -> int:
    """The budget of one test: `ci_default` in CI, `TRUSTMESH_FUZZ_EXAMPLES` when set."""
    raised = os.environ.get("TRUSTMESH_FUZZ_EXAMPLES")
    return int(raised) if raised else ci_default


def fuzz_settings(ci_default: int) -> settings:
    seed = os.environ.get("TRUSTMESH_FUZZ_SEED")
    return settings(
        max_examples=examples(ci_default),
        deadline=None,
        derandomize=seed is None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def seeded(test: Callable[..., Any]) -> Callable[..., Any]:
    """Apply `TRUSTMESH_FUZZ_SEED` (soak runs) to a @given test; CI stays derandomized."""
    seed = os.environ.get("TRUSTMESH_FUZZ_SEED")
    if seed is None:
        return test
    from hypothesis import seed as hypothesis_seed

    return hypothesis_seed(int(seed))(test)


async def run_examples(test: Callable[[], None]) -> None:
    """Run a @given test (synchronous) in a worker thread; it calls back with `trio.from_thread.run`."""
    await trio.to_thread.run_sync(test)


def on_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """From a hypothesis example (worker thread): run the async `fn(*args)` on the test's loop."""
    return trio.from_thread.run(fn, *args)


def report(name: str) -> None:
    print(f"\n[fuzz] {name}: {TRIED[name]} inputs")
