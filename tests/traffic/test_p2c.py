"""PeakEwmaP2C: the cost model, the two-choice pick, and invariants under random use."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sidecar_proxy.harness import API, endpoint
from trustmesh.sidecar.config import StaticEndpoint
from trustmesh.sidecar.outbound.balance import RoundRobin
from trustmesh.sidecar.outbound.p2c import DEFAULT_RTT, PeakEwmaP2C

EPS = [endpoint(9000 + i, API) for i in range(4)]


def test_single_endpoint_is_returned_without_randomness() -> None:
    assert PeakEwmaP2C(rng=random.Random(1)).pick(EPS[:1], 0.0) is EPS[0]


def test_an_endpoint_never_tried_is_tried_first() -> None:
    b = PeakEwmaP2C(rng=random.Random(3))
    assert b.cost(EPS[0], 5.0) == 0.0
    b.start(EPS[1])
    b.finish(EPS[1], 0.0, 0.002, failed=False)  # a known, fast endpoint
    assert b.pick(EPS[:2], 0.0) is EPS[0]  # the new one still gets its first request


def test_outstanding_requests_multiply_the_cost() -> None:
    b = PeakEwmaP2C()
    b.start(EPS[0])
    b.start(EPS[0])
    assert b.cost(EPS[0], 0.0) == DEFAULT_RTT * 3
    b.finish(EPS[0], 0.0, 0.001, failed=False)
    assert b.outstanding(EPS[0]) == 1


def test_a_slow_sample_is_taken_at_once_and_decays_over_time() -> None:
    b = PeakEwmaP2C(decay=10.0)
    b.start(EPS[0])
    b.finish(EPS[0], 100.0, 0.5, failed=False)
    assert b.cost(EPS[0], 100.0) == 0.5  # the peak
    assert 0.5 * 0.36 < b.cost(EPS[0], 110.0) < 0.5 * 0.38  # e^-1 after one decay period
    assert b.cost(EPS[0], 200.0) < 0.001  # forgotten: tried again


def test_a_fast_failure_never_lowers_the_estimate() -> None:
    b = PeakEwmaP2C()
    b.start(EPS[0])
    b.finish(EPS[0], 0.0, 0.2, failed=False)
    b.start(EPS[0])
    b.finish(EPS[0], 5.0, 0.0001, failed=True)
    assert b.cost(EPS[0], 5.0) >= 0.2 * 0.6  # only time decayed it, not the fast 503


def test_pick_prefers_the_cheaper_of_two() -> None:
    b = PeakEwmaP2C(rng=random.Random(7))
    b.start(EPS[1])
    b.finish(EPS[1], 0.0, 1.0, failed=False)  # EPS[1] slow
    picks = Counter(b.pick(EPS[:2], 0.0).address.port for _ in range(200))
    assert picks == {9000: 200}  # with two endpoints both are always compared


def test_slow_endpoint_gets_few_among_many() -> None:
    b = PeakEwmaP2C(rng=random.Random(3))
    slow = EPS[3]
    b.start(slow)
    b.finish(slow, 0.0, 1.0, failed=False)
    picks = Counter(b.pick(EPS, 0.0) for _ in range(1000))
    # It is chosen only when both random choices are it: never, since the two differ.
    assert picks[slow] == 0
    assert all(picks[ep] > 250 for ep in EPS[:3])


def test_state_of_departed_endpoints_is_pruned() -> None:
    b = PeakEwmaP2C(rng=random.Random(0))
    for i in range(200):
        ep = endpoint(10_000 + i, API)
        b.start(ep)
        b.finish(ep, 0.0, 0.01, failed=False)
    b.pick(EPS[:2], 1.0)
    assert len(b._state) <= 2


def test_round_robin_cycles() -> None:
    rr = RoundRobin()
    assert [rr.pick(EPS[:3], 0.0).address.port for _ in range(6)] == [9000, 9001, 9002] * 2


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=6),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["pick", "finish"]),
            st.integers(0, 5),
            st.floats(0, 2.0),
            st.booleans(),
        ),
        max_size=80,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants_under_random_use(n: int, ops: list[tuple[str, int, float, bool]], seed: int) -> None:
    """Picks come from the offered list; outstanding never negative; costs finite and >= 0."""
    b = PeakEwmaP2C(rng=random.Random(seed))
    eps = EPS[:n] if n <= len(EPS) else EPS
    now = 0.0
    inflight: list[StaticEndpoint] = []
    for op, index, value, failed in ops:
        now += value
        if op == "pick":
            ep = b.pick(eps, now)
            assert ep in eps
            b.start(ep)
            inflight.append(ep)
        elif inflight:
            ep = inflight.pop(index % len(inflight))
            b.finish(ep, now, value, failed=failed)
    for ep in eps:
        assert b.outstanding(ep) == inflight.count(ep)
        cost = b.cost(ep, now)
        assert 0.0 <= cost < float("inf")
