"""RetryBudget: the floor, the ratio, the sliding window, and the budget invariant."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.clock import ManualClock
from trustmesh.sidecar.outbound.retry_budget import BudgetSettings, RetryBudget


def grant_all(budget: RetryBudget, now: float, limit: int = 10_000) -> int:
    granted = 0
    while granted < limit and budget.try_withdraw(now):
        granted += 1
    return granted


def test_floor_alone_allows_min_per_second_times_window() -> None:
    budget = RetryBudget(BudgetSettings(percent=20, min_per_second=10, window=10))
    assert grant_all(budget, 0.0) == 100


def test_ratio_of_requests_without_floor() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetSettings(percent=20, min_per_second=0, window=10))
    for _ in range(50):
        budget.deposit(clock.monotonic())
    assert budget.available(clock.monotonic()) == 10
    assert grant_all(budget, clock.monotonic()) == 10
    assert not budget.try_withdraw(clock.monotonic())


def test_zero_budget_grants_nothing() -> None:
    budget = RetryBudget(BudgetSettings(percent=0, min_per_second=0, window=10))
    budget.deposit(0.0)
    assert not budget.try_withdraw(0.0)


def test_requests_and_retries_leave_the_window() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetSettings(percent=50, min_per_second=0, window=10))
    for _ in range(10):
        budget.deposit(clock.monotonic())
    assert grant_all(budget, clock.monotonic()) == 5
    clock.advance(5)
    assert not budget.try_withdraw(clock.monotonic())  # still inside the window
    clock.advance(5.5)
    # Both the deposits and the withdrawals have aged out together.
    assert budget.available(clock.monotonic()) == 0
    for _ in range(4):
        budget.deposit(clock.monotonic())
    assert grant_all(budget, clock.monotonic()) == 2


def test_a_long_silence_empties_every_bucket() -> None:
    budget = RetryBudget(BudgetSettings(percent=100, min_per_second=0, window=10))
    for _ in range(7):
        budget.deposit(0.0)
    budget.try_withdraw(0.0)
    assert budget.available(10_000.0) == 0
    budget.deposit(10_000.0)
    assert budget.available(10_000.0) == 1


def test_clock_going_backwards_counts_in_the_newest_bucket() -> None:
    budget = RetryBudget(BudgetSettings(percent=100, min_per_second=0, window=10))
    budget.deposit(50.0)
    budget.deposit(40.0)
    assert budget.available(50.0) == 2


@settings(max_examples=300, deadline=None)
@given(
    percent=st.sampled_from([0.0, 10.0, 20.0, 50.0, 100.0]),
    min_per_second=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
    window=st.sampled_from([1.0, 10.0]),
    ops=st.lists(
        st.tuples(st.sampled_from(["request", "retry", "wait"]), st.floats(0.0, 3.0)),
        max_size=200,
    ),
)
def test_retries_never_exceed_the_budget_in_any_window(
    percent: float, min_per_second: float, window: float, ops: list[tuple[str, float]]
) -> None:
    """At every moment t a retry is granted: retries granted in (t - window + bucket, t] are at
    most ceil(floor + ratio × requests in [t - window, t]).

    (The window is a ring of ten buckets, so its reach is between 0.9 and 1.0 of `window`.)
    The bound is checked when a retry is granted, the moment the budget decides: later, the
    requests that paid for a retry may leave the window before the retry does.
    """
    budget = RetryBudget(BudgetSettings(percent, min_per_second, window))
    bucket = window / 10
    now = 0.0
    requests: list[float] = []
    retries: list[float] = []
    for op, value in ops:
        if op == "wait":
            now += value
        elif op == "request":
            budget.deposit(now)
            requests.append(now)
        elif budget.try_withdraw(now):
            retries.append(now)
        for t in set(retries):
            granted = sum(1 for r in retries if t - window + bucket < r <= t)
            base = sum(1 for q in requests if t - window <= q <= t)
            allowed = math.ceil(min_per_second * window + percent / 100 * base - 1e-9)
            assert granted <= max(allowed, 0), (t, granted, base)
