"""OutlierDetector: ejection after consecutive failures, growing ejections, probation, the cap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from trustmesh.clock import ManualClock
from trustmesh.sidecar.outbound.outlier import OutlierDetector, OutlierSettings

S = OutlierSettings(consecutive_failures=5, base_ejection=30, max_ejection=300, max_ejected_percent=50)


def fail(det: OutlierDetector[str], key: str, clock: ManualClock, times: int, total: int = 4) -> list[bool]:
    return [det.failure(key, clock.monotonic(), total=total) for _ in range(times)]


def test_five_consecutive_failures_eject() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    assert fail(det, "a", clock, 5) == [False] * 4 + [True]
    assert not det.available("a", clock.monotonic())
    assert det.available("b", clock.monotonic())
    assert det.ejected(clock.monotonic()) == {"a"}


def test_a_success_resets_the_streak() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    fail(det, "a", clock, 4)
    det.success("a", clock.monotonic())
    assert fail(det, "a", clock, 4) == [False] * 4
    assert det.available("a", clock.monotonic())
    assert "a" in det._health  # a streak in progress is remembered
    det.success("a", clock.monotonic())
    assert "a" not in det._health  # healthy endpoints cost no memory


def test_readmitted_after_the_ejection_time_on_probation() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    fail(det, "a", clock, 5)
    clock.advance(29.9)
    assert not det.available("a", clock.monotonic())
    clock.advance(0.1)
    assert det.available("a", clock.monotonic())
    # On probation one failure is enough, and the second ejection lasts twice as long.
    assert det.failure("a", clock.monotonic(), total=4)
    clock.advance(59)
    assert not det.available("a", clock.monotonic())
    clock.advance(1)
    assert det.available("a", clock.monotonic())
    det.success("a", clock.monotonic())  # probation passed
    assert fail(det, "a", clock, 4) == [False] * 4


def test_ejection_time_grows_and_is_capped() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    durations = []
    for _ in range(14):
        fail(det, "a", clock, 1 if det._health.get("a") and det._health["a"].probation else 5)
        start = clock.monotonic()
        while not det.available("a", clock.monotonic()):
            clock.advance(1)
        durations.append(clock.monotonic() - start)
    assert durations[:4] == [30, 60, 90, 120]
    assert max(durations) == 300 and durations[-1] == 300


def test_the_count_is_forgotten_after_a_long_healthy_spell() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    fail(det, "a", clock, 5)
    clock.advance(30)
    assert det.available("a", clock.monotonic())
    det.success("a", clock.monotonic())
    clock.advance(300)
    det.success("a", clock.monotonic())
    assert "a" not in det._health
    fail(det, "a", clock, 5)
    clock.advance(30)
    assert det.available("a", clock.monotonic())  # 30 s again, not 60 s


def test_never_more_than_max_percent_ejected() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    assert fail(det, "a", clock, 5) == [False] * 4 + [True]
    assert fail(det, "b", clock, 5) == [False] * 4 + [True]
    assert fail(det, "c", clock, 8) == [False] * 8  # 2 of 4 out already: 50%
    assert det.ejected(clock.monotonic()) == {"a", "b"}


def test_a_lone_endpoint_is_never_ejected_at_50_percent_but_is_at_100() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    assert not any(fail(det, "a", clock, 10, total=1))
    all_out: OutlierDetector[str] = OutlierDetector(
        OutlierSettings(consecutive_failures=2, max_ejected_percent=100)
    )
    assert fail(all_out, "a", clock, 2, total=1) == [False, True]


def test_failures_of_an_ejected_endpoint_are_answers_to_old_requests() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    fail(det, "a", clock, 5)
    assert fail(det, "a", clock, 5) == [False] * 5
    clock.advance(30)
    assert det.available("a", clock.monotonic())
    assert det._health["a"].ejections == 1


def test_retain_forgets_departed_endpoints() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S)
    fail(det, "a", clock, 5)
    fail(det, "b", clock, 2)
    det.retain({"b"})
    assert not det.any_ejected and set(det._health) == {"b"}


def test_ejection_and_readmission_are_logged_with_fields() -> None:
    clock = ManualClock()
    det: OutlierDetector[str] = OutlierDetector(S, service="api")
    with capture_logs() as logs:
        fail(det, "a", clock, 5)
        clock.advance(30)
        det.available("a", clock.monotonic())
    ejected, readmitted = logs
    assert ejected["event"] == "endpoint_ejected"
    assert (ejected["service"], ejected["endpoint"], ejected["ejections"], ejected["seconds"]) == (
        "api",
        "a",
        1,
        30,
    )
    assert readmitted["event"] == "endpoint_readmitted" and readmitted["endpoint"] == "a"


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 6),
    percent=st.sampled_from([0, 10, 34, 50, 100]),
    ops=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["ok", "fail", "wait"])), max_size=150),
)
def test_cap_holds_and_ejections_end(total: int, percent: int, ops: list[tuple[int, str]]) -> None:
    clock = ManualClock()
    det: OutlierDetector[int] = OutlierDetector(
        OutlierSettings(
            consecutive_failures=2, base_ejection=10, max_ejection=40, max_ejected_percent=percent
        )
    )
    for index, op in ops:
        key = index % total
        if op == "ok":
            det.success(key, clock.monotonic())
        elif op == "fail":
            det.failure(key, clock.monotonic(), total=total)
        else:
            clock.advance(7)
        assert len(det.ejected(clock.monotonic())) * 100 <= total * percent
    clock.advance(40)
    assert det.ejected(clock.monotonic()) == frozenset()


def test_breaker_transitions_are_reported_for_the_metric() -> None:
    """open on ejection, half_open on readmission, closed once probation passes."""
    seen: list[tuple[str, str]] = []
    d: OutlierDetector[str] = OutlierDetector(S, service="api", on_state=lambda k, s: seen.append((k, s)))
    for _ in range(5):
        d.failure("a", 0.0, total=2)
    assert seen == [("a", "open")]
    assert not d.available("a", 29.0)
    assert d.available("a", 30.0)
    assert seen[-1] == ("a", "half_open")
    d.success("a", 31.0)
    assert seen == [("a", "open"), ("a", "half_open"), ("a", "closed")]
