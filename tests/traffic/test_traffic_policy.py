"""TrafficPolicy files: the spec read into TrafficSpec, problems at file:line, settings with defaults."""

from __future__ import annotations

import textwrap

import pytest

from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Problems, Revision, TrafficSpec
from trustmesh.sidecar.outbound.traffic_settings import (
    DEFAULT_SETTINGS,
    TrafficSettingsStore,
    settings_for,
    settings_from_spec,
)

API = "spiffe://example.org/ns/default/sa/api"
HEAD = f"apiVersion: trustmesh.dev/v1\nkind: TrafficPolicy\nmetadata:\n  name: t\nspec:\n  service: {API}\n"


def load(spec: str, extra: dict[str, str] | None = None) -> Revision | Problems:
    files = {"traffic.yaml": (HEAD + textwrap.indent(textwrap.dedent(spec), "  ")).encode()}
    files.update({k: v.encode() for k, v in (extra or {}).items()})
    return load_revision(files, revision_id="r1")


def problems(spec: str) -> list[str]:
    result = load(spec)
    assert isinstance(result, Problems), result
    return [str(p) for p in result]


def test_full_spec() -> None:
    result = load(
        """\
        timeouts: {request: 2s, connect: 250ms}
        retries:
          maxAttempts: 2
          budget: {percent: 12.5, minPerSecond: 0, window: 30s}
          retryOn: [connection-failure, 503]
        outlierDetection: {consecutiveFailures: 3, baseEjection: 10s, maxEjection: 1m, maxEjectedPercent: 100}
        loadBalancer: {policy: ROUND_ROBIN}
        """
    )
    assert isinstance(result, Revision), result
    (policy,) = result.traffic
    assert policy.spec == TrafficSpec(
        request_timeout=2.0,
        connect_timeout=0.25,
        max_attempts=2,
        budget_percent=12.5,
        budget_min_per_second=0.0,
        budget_window=30.0,
        retry_on_connection_failure=True,
        retry_statuses=frozenset({503}),
        consecutive_failures=3,
        base_ejection=10.0,
        max_ejection=60.0,
        max_ejected_percent=100,
        load_balancer="ROUND_ROBIN",
    )
    s = settings_for(result, API)
    assert (s.request_timeout, s.connect_timeout, s.load_balancer) == (2.0, 0.25, "ROUND_ROBIN")
    assert (s.retry.max_attempts, s.retry.on_connection_failure, s.retry.retry_statuses) == (
        2,
        True,
        frozenset({503}),
    )
    assert (s.budget.percent, s.budget.min_per_second, s.budget.window) == (12.5, 0.0, 30.0)
    assert (s.outlier.consecutive_failures, s.outlier.base_ejection, s.outlier.max_ejection) == (
        3,
        10.0,
        60.0,
    )
    assert s.outlier.max_ejected_percent == 100


def test_absent_fields_take_the_defaults() -> None:
    result = load("timeouts: {request: 3s}\n")
    assert isinstance(result, Revision)
    s = settings_for(result, API)
    assert s.request_timeout == 3.0
    assert s.connect_timeout == DEFAULT_SETTINGS.connect_timeout
    assert s.retry == DEFAULT_SETTINGS.retry and s.budget == DEFAULT_SETTINGS.budget
    assert s.outlier == DEFAULT_SETTINGS.outlier and s.load_balancer == "P2C_EWMA"
    assert settings_for(result, "spiffe://example.org/other") is DEFAULT_SETTINGS
    assert settings_for(None, API) is DEFAULT_SETTINGS


def test_defaults_are_the_documented_ones() -> None:
    d = settings_from_spec(TrafficSpec())
    assert d == DEFAULT_SETTINGS
    assert (d.request_timeout, d.connect_timeout) == (10.0, 1.0)
    assert (d.retry.max_attempts, d.retry.retry_statuses, d.retry.on_connection_failure) == (
        3,
        frozenset({502, 503, 504}),
        True,
    )
    assert (d.budget.percent, d.budget.min_per_second, d.budget.window) == (20.0, 10.0, 10.0)
    assert (d.outlier.consecutive_failures, d.outlier.base_ejection, d.outlier.max_ejected_percent) == (
        5,
        30.0,
        50,
    )


def test_a_base_ejection_above_the_default_cap_raises_the_cap() -> None:
    s = settings_from_spec(TrafficSpec(base_ejection=600.0))
    assert s.outlier.max_ejection == 600.0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("timeout: 2s\n", "traffic.yaml:7: spec: unknown field 'timeout'"),
        ("timeouts: {request: 2}\n", "traffic.yaml:7: spec.timeouts.request: expected a string, got integer"),
        ("timeouts: {request: 2x}\n", "traffic.yaml:7: spec.timeouts.request: invalid duration '2x'"),
        ("timeouts: {request: 0s}\n", "traffic.yaml:7: spec.timeouts.request: 0s is outside 1ms-1h"),
        ("timeouts:\n  request: 1s\n  connect: 2s\n", "traffic.yaml:9: spec.timeouts.connect: longer than"),
        ("timeouts: {deadline: 1s}\n", "traffic.yaml:7: spec.timeouts: unknown field 'deadline'"),
        ("retries: {maxAttempts: 0}\n", "traffic.yaml:7: spec.retries.maxAttempts: 0 is outside 1-10"),
        ("retries: {maxAttempts: '3'}\n", "traffic.yaml:7: spec.retries.maxAttempts: expected an integer"),
        (
            "retries:\n  budget: {percent: 120}\n",
            "traffic.yaml:8: spec.retries.budget.percent: 120 is outside 0-100",
        ),
        (
            "retries:\n  budget: {percent: lots}\n",
            "traffic.yaml:8: spec.retries.budget.percent: expected a number",
        ),
        (
            "retries:\n  budget: {window: 0.5s}\n",
            "traffic.yaml:8: spec.retries.budget.window: 0.5s is outside",
        ),
        (
            "retries:\n  retryOn: [404]\n",
            "traffic.yaml:8: spec.retries.retryOn[0]: 404 is not connection-failure",
        ),
        ("retries:\n  retryOn: [reset]\n", "traffic.yaml:8: spec.retries.retryOn[0]: 'reset' is not"),
        ("retries:\n  retryOn: []\n", "traffic.yaml:8: spec.retries.retryOn: must not be empty"),
        (
            "outlierDetection:\n  baseEjection: 2m\n  maxEjection: 1m\n",
            "traffic.yaml:8: spec.outlierDetection.baseEjection: longer than",
        ),
        (
            "outlierDetection: {maxEjectedPercent: 101}\n",
            "traffic.yaml:7: spec.outlierDetection.maxEjectedPercent: 101 is outside 0-100",
        ),
        (
            "loadBalancer: {policy: LEAST_REQUEST}\n",
            "traffic.yaml:7: spec.loadBalancer.policy: unknown policy",
        ),
        ("loadBalancer: {}\n", "traffic.yaml:7: spec.loadBalancer: missing field 'policy'"),
    ],
)
def test_each_problem_at_its_line(spec: str, expected: str) -> None:
    found = problems(spec)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_every_problem_of_a_file_in_one_run() -> None:
    found = problems("timeouts: {request: 2x}\nretries: {maxAttempts: 99}\nloadBalancer: {policy: x}\n")
    assert [p.split(":")[1] for p in found] == ["7", "8", "9"]


def test_two_policies_for_one_service_are_refused() -> None:
    second = HEAD.replace("name: t", "name: u")
    result = load("timeouts: {request: 2s}\n", {"more/other.yaml": second})
    assert isinstance(result, Problems)
    assert [str(p) for p in result] == [
        f"traffic.yaml:4: a TrafficPolicy for {API} is already defined at more/other.yaml:4"
    ]


def test_store_swaps_settings_per_revision() -> None:
    store = TrafficSettingsStore()
    assert store.settings(API) is DEFAULT_SETTINGS
    first = load("timeouts: {request: 2s}\n")
    assert isinstance(first, Revision)
    store.update(first)
    assert store.settings(API).request_timeout == 2.0 and store.revision == "r1"
    assert store.settings(API) is store.settings(API)  # one object per revision: cheap identity checks
    store.update(Revision(id="r2", files=(), authorization=()))
    assert store.settings(API) is DEFAULT_SETTINGS
