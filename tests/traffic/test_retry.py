"""The retry decision: which failures, which requests, how many attempts."""

from __future__ import annotations

import pytest

from trustmesh.sidecar.outbound.retry import (
    IDEMPOTENT_METHODS,
    Failure,
    RetrySettings,
    Verdict,
    decide,
    method_allows_replay,
)

DEFAULT = RetrySettings()


@pytest.mark.parametrize("method", sorted(IDEMPOTENT_METHODS))
def test_idempotent_methods_may_replay(method: bytes) -> None:
    assert method_allows_replay(method, [], has_body=False)
    assert method_allows_replay(method, [(b"Content-Length", b"3")], has_body=True)


@pytest.mark.parametrize("method", [b"POST", b"PATCH", b"CONNECT", b"get"])
def test_other_methods_do_not_unless_marked(method: bytes) -> None:
    assert not method_allows_replay(method, [], has_body=True)
    assert method_allows_replay(method, [(b"X-TrustMesh-Retryable", b" TRUE ")], has_body=True)
    assert not method_allows_replay(method, [(b"x-trustmesh-retryable", b"false")], has_body=True)
    assert not method_allows_replay(method, [(b"x-trustmesh-retryable", b"yes")], has_body=True)


def test_expect_continue_is_never_replayed() -> None:
    assert not method_allows_replay(b"PUT", [(b"Expect", b"100-continue")], has_body=True)
    assert not method_allows_replay(
        b"POST", [(b"x-trustmesh-retryable", b"true"), (b"expect", b"100-continue")], has_body=True
    )


@pytest.mark.parametrize(
    ("failure", "status", "replayable", "attempt", "expected"),
    [
        (Failure.CONNECT, 0, False, 1, Verdict.RETRY),  # nothing was sent: any request
        (Failure.CONNECT, 0, True, 2, Verdict.RETRY),
        (Failure.CONNECT, 0, True, 3, Verdict.EXHAUSTED),
        (Failure.LOST, 0, True, 1, Verdict.RETRY),
        (Failure.LOST, 0, False, 1, Verdict.NOT_REPLAYABLE),
        (Failure.STATUS, 502, True, 1, Verdict.RETRY),
        (Failure.STATUS, 503, True, 2, Verdict.RETRY),
        (Failure.STATUS, 504, True, 1, Verdict.RETRY),
        (Failure.STATUS, 503, False, 1, Verdict.NOT_REPLAYABLE),
        (Failure.STATUS, 500, True, 1, Verdict.NOT_RETRY_ON),
        (Failure.STATUS, 501, True, 1, Verdict.NOT_RETRY_ON),
        (Failure.STATUS, 503, True, 3, Verdict.EXHAUSTED),
    ],
)
def test_decide_defaults(
    failure: Failure, status: int, replayable: bool, attempt: int, expected: Verdict
) -> None:
    assert decide(DEFAULT, attempt=attempt, failure=failure, status=status, replayable=replayable) is expected


def test_retry_on_configures_statuses_and_connection_failures() -> None:
    only_500 = RetrySettings(on_connection_failure=False, retry_statuses=frozenset({500}))
    assert decide(only_500, attempt=1, failure=Failure.STATUS, status=500, replayable=True) is Verdict.RETRY
    assert (
        decide(only_500, attempt=1, failure=Failure.STATUS, status=503, replayable=True)
        is Verdict.NOT_RETRY_ON
    )
    assert decide(only_500, attempt=1, failure=Failure.CONNECT, replayable=True) is Verdict.NOT_RETRY_ON


def test_one_attempt_means_no_retry() -> None:
    one = RetrySettings(max_attempts=1)
    assert decide(one, attempt=1, failure=Failure.CONNECT, replayable=True) is Verdict.EXHAUSTED
