"""When a failed attempt may be tried again (the budget is asked separately, and last).

Three kinds of failure, from safest to retry to least:
- `CONNECT`: no connection was made (refused, timed out, TLS or secure naming refused),
  so not a byte of the request left the sidecar: any request may go to another endpoint.
- `LOST`: the request was sent and the connection broke before any response byte; the
  server may have acted on it, so only a replayable request is sent again.
- a status in `retry_statuses` (502/503/504 by default: the gateway-ish answers that
  mean "not processed here"); again only a replayable request.

Replayable: an idempotent method (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, PUT, DELETE) or a
request the app marks `x-trustmesh-retryable: true`, whose body the sidecar still holds
whole (at most `REPLAY_BUFFER_BYTES`; a longer body streamed past the buffer is gone),
and which does not wait for `100-continue` (its body is sent only once asked for).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from trustmesh.sidecar.http.parser import Headers

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
RETRYABLE_HEADER = b"x-trustmesh-retryable"
# Like Linkerd's 64 KiB: enough for the bodies of API calls, small enough that holding
# one per in-flight request is no memory risk.
REPLAY_BUFFER_BYTES = 64 * 1024
# Accepted in TrafficPolicy `retryOn` beside 5xx status codes.
CONNECTION_FAILURE = "connection-failure"


class Failure(enum.Enum):
    CONNECT = "connect"
    LOST = "lost"
    STATUS = "status"


class Verdict(enum.StrEnum):
    """Why an attempt is, or is not, retried (the value is the log field)."""

    RETRY = "retry"
    EXHAUSTED = "max-attempts"
    NOT_REPLAYABLE = "not-replayable"
    NOT_RETRY_ON = "not-in-retry-on"


@dataclass(frozen=True, slots=True)
class RetrySettings:
    # 3 attempts (Envoy's and gRPC's usual): one retry rarely suffices when an endpoint
    # dies with requests in flight, more than two mostly adds load (the budget bounds it anyway).
    max_attempts: int = 3
    on_connection_failure: bool = True
    retry_statuses: frozenset[int] = frozenset({502, 503, 504})


def method_allows_replay(method: bytes, headers: Headers, *, has_body: bool) -> bool:
    """An idempotent method, or an app's explicit `x-trustmesh-retryable: true`; no `Expect`.

    The common case (a GET without a body) is answered without reading the headers.
    """
    replay = method in IDEMPOTENT_METHODS
    if replay and not has_body:
        return True
    for name, value in headers:
        if len(name) == 6 and name.lower() == b"expect":
            return False  # 100-continue: the client sends the body only when we ask for it
        if not replay and len(name) == len(RETRYABLE_HEADER) and name.lower() == RETRYABLE_HEADER:
            replay = value.strip().lower() == b"true"
    return replay


def decide(
    settings: RetrySettings, *, attempt: int, failure: Failure, status: int = 0, replayable: bool
) -> Verdict:
    """Whether attempt number `attempt` (1-based) that failed this way may be retried."""
    if attempt >= settings.max_attempts:
        return Verdict.EXHAUSTED
    if failure is Failure.STATUS:
        if status not in settings.retry_statuses:
            return Verdict.NOT_RETRY_ON
    elif not settings.on_connection_failure:
        return Verdict.NOT_RETRY_ON
    if failure is not Failure.CONNECT and not replayable:
        return Verdict.NOT_REPLAYABLE
    return Verdict.RETRY
