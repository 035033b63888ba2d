"""HTTP/1.1 from the local app to a service: one request at a time, over pooled mTLS.

Per request, under the service's `TrafficSettings` (read per request, so a new policy
revision applies at once):

1. a deadline (`request_timeout`) over everything up to the response head, all attempts
   included: past it the app gets 504 `deadline-exceeded`;
2. a request that may be replayed (see `retry.py`) is held whole, its body read ahead up
   to `REPLAY_BUFFER_BYTES`; a longer body is streamed and the request never retried;
3. an endpoint is chosen by the balancer among those not ejected by outlier detection
   and, on a retry, not tried yet for this request (if any are left);
4. a kept-alive mTLS connection to it is taken (or made within `connect_timeout`,
   checked by secure naming) and the request relayed; a retryable status (502/503/504)
   is held back before a byte of it reaches the app, so it can be retried instead;
5. the outcome feeds the balancer's latency estimate and outlier detection; a failure is
   retried while the attempt limit and the retry budget allow.

Errors the sidecar makes are answered with `x-trustmesh-error` (docs/traffic.md lists
them): `no-endpoints` and `no-healthy-endpoints` (503), `connect-failed` (503),
`connect-timeout` (504), `tls-handshake`/`peer-refused`/`secure-naming` (502),
`upstream-reset` (502), `deadline-exceeded` (504). An upstream's own 503 after the last
attempt reaches the app as it was sent, without the header. Every error names the request's
`x-request-id` in a header and in its body.

Each request is reported through `Telemetry` (access log, metrics) and, when tracing, each
attempt is a CLIENT span whose `traceparent` the upstream sidecar continues from.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
import trio

from trustmesh.clock import Clock
from trustmesh.sidecar.config import HostPort, Limits, OutboundConfig, StaticEndpoint
from trustmesh.sidecar.conn import Conn, ConnectionClosed
from trustmesh.sidecar.counters import ProxyCounters
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.exchange import (
    DownstreamGone,
    Outcome,
    ResponseRefused,
    UpstreamFailed,
    relay,
    relay_whole,
    whole_request,
)
from trustmesh.sidecar.http.errors import HttpError
from trustmesh.sidecar.http.headers import forward_request_head
from trustmesh.sidecar.http.parser import EndOfMessage, RequestHead, RequestParser
from trustmesh.sidecar.http_connection import discard_request_body, send_raw, serve_http_connection
from trustmesh.sidecar.listener import IdleConnections
from trustmesh.sidecar.outbound.balance import Balancer, RoundRobin
from trustmesh.sidecar.outbound.endpoints import EndpointSource
from trustmesh.sidecar.outbound.outlier import OutlierDetector
from trustmesh.sidecar.outbound.p2c import PeakEwmaP2C
from trustmesh.sidecar.outbound.retry import (
    REPLAY_BUFFER_BYTES,
    Failure,
    Verdict,
    decide,
    method_allows_replay,
)
from trustmesh.sidecar.outbound.retry_budget import RetryBudget
from trustmesh.sidecar.outbound.secure_connect import SecureConnector, UpstreamError
from trustmesh.sidecar.outbound.traffic_settings import TrafficSettings, TrafficSettingsProvider
from trustmesh.sidecar.scope_deadlines import ScopeDeadlines
from trustmesh.sidecar.telemetry import Exchange, Telemetry
from trustmesh.tracing.metrics import SidecarMetrics

log = structlog.get_logger(__name__)

# Budget exhaustion happens in storms: one log event per second at most says it all.
_BUDGET_LOG_INTERVAL = 1.0


@dataclass
class TrafficCounters:
    """What traffic management did, for tests and `/metrics` (plain ints, like ProxyCounters)."""

    attempts: int = 0  # requests sent (or tried) to an endpoint, retries included
    retries: int = 0
    budget_exhausted: int = 0  # a retry was due but the budget said no
    deadlines: int = 0  # 504 deadline-exceeded (or a response cut by it)
    no_healthy: int = 0  # 503 no-healthy-endpoints


class _Request:
    """What one request's attempts share; `accept` is asked before a response head goes out."""

    __slots__ = ("attempt", "head_at", "owner", "replayable", "scope", "settings", "started")

    def __init__(self, owner: OutboundHttp, settings: TrafficSettings, scope: trio.CancelScope) -> None:
        self.owner = owner
        self.settings = settings
        self.scope = scope
        self.attempt = 0
        self.replayable = False
        self.started = False
        self.head_at = 0.0

    def accept(self, status: int) -> bool:
        if (
            self.replayable
            and status in self.settings.retry.retry_statuses
            and self.owner._may_retry(self, Failure.STATUS, status)
        ):
            return False
        # The head goes out now: no 504 can be answered after this, and a long download
        # is not a slow request, so the deadline ends here.
        self.started = True
        self.head_at = time.monotonic()
        self.owner.deadlines.disarm(self.scope)
        return True


class OutboundHttp:
    def __init__(
        self,
        cfg: OutboundConfig,
        endpoints: EndpointSource,
        connector: SecureConnector,
        limits: Limits,
        *,
        settings: TrafficSettingsProvider,
        clock: Clock,
        drain: Drain,
        idle: IdleConnections,
        counters: ProxyCounters,
        listener: str,
        balancer: Balancer | None = None,
        traffic_counters: TrafficCounters | None = None,
        telemetry: Telemetry | None = None,
        deadlines: ScopeDeadlines | None = None,
    ) -> None:
        self._cfg = cfg
        # Request deadlines; whoever serves connections runs `deadlines.run()` beside them.
        self.deadlines = deadlines if deadlines is not None else ScopeDeadlines()
        self._telemetry = telemetry if telemetry is not None else Telemetry(SidecarMetrics(), service="")
        self._metrics = self._telemetry.metrics
        self._endpoints = endpoints
        self._connector = connector
        self._limits = limits
        self._settings = settings
        self._clock = clock
        self._drain = drain
        self._idle = idle
        self._counters = counters
        self._listener = listener
        self.traffic = traffic_counters if traffic_counters is not None else TrafficCounters()
        self._fixed_balancer = balancer
        self._p2c = PeakEwmaP2C()
        self._round_robin = RoundRobin()
        self._balancer: Balancer = self._p2c
        self._applied: TrafficSettings | None = None
        self._budget = RetryBudget()
        self.outlier: OutlierDetector[HostPort] = OutlierDetector(
            service=cfg.service,
            on_state=lambda endpoint, state: self._metrics.set_breaker_state(
                cfg.service, str(endpoint), state
            ),
        )
        self._known: Sequence[StaticEndpoint] = ()
        self._budget_logged = -math.inf

    async def serve_connection(self, conn: Conn, peer: str) -> None:
        # One cancel scope per app connection carries each request's deadline (entering a
        # new scope per request measured ~20 µs), cancelled by `deadlines` when one passes.
        # When it fires the connection ends, as it must: the request is half-relayed.
        deadline = trio.CancelScope()

        async def handle(c: Conn, parser: RequestParser, head: RequestHead) -> bool:
            return await self._serve_request(c, parser, head, deadline)

        self._metrics.connection_opened("outbound")
        try:
            with deadline:
                await serve_http_connection(
                    conn,
                    handle,
                    self._limits,
                    drain=self._drain,
                    idle=self._idle,
                    listener=self._listener,
                    peer=peer,
                )
        finally:
            self._metrics.connection_closed("outbound")

    def _is_draining(self) -> bool:
        return self._drain.draining

    def _apply(self, settings: TrafficSettings) -> None:
        """Take new settings (a new policy revision); state is kept where it still applies."""
        previous = self._applied
        if previous is None or previous.budget != settings.budget:
            self._budget = RetryBudget(settings.budget)
        self.outlier.settings = settings.outlier
        if self._fixed_balancer is not None:
            self._balancer = self._fixed_balancer
        else:
            self._balancer = self._round_robin if settings.load_balancer == "ROUND_ROBIN" else self._p2c
        self._applied = settings
        if previous is not None:
            log.info("traffic_settings_changed", listener=self._listener, service=self._cfg.service)

    async def _serve_request(
        self, conn: Conn, parser: RequestParser, head: RequestHead, deadline: trio.CancelScope
    ) -> bool:
        """Relay one request; True if the app's connection may send another."""
        self._counters.requests += 1
        service = self._cfg.service
        ex, strip, add = self._telemetry.begin_outbound(head, service)
        try:
            return await self._serve_traced(conn, parser, head, deadline, ex, strip, add)
        finally:
            self._telemetry.end(ex, service=service)

    async def _serve_traced(
        self,
        conn: Conn,
        parser: RequestParser,
        head: RequestHead,
        deadline: trio.CancelScope,
        ex: Exchange,
        strip: frozenset[bytes],
        add: bytes,
    ) -> bool:
        endpoints = self._endpoints.endpoints(self._cfg.service)
        if not endpoints:
            log.warning(
                "request_failed", listener=self._listener, service=self._cfg.service, reason="no-endpoints"
            )
            return await _answer(conn, parser, head, ex, 503, "no-endpoints")
        if endpoints is not self._known:
            self._known = endpoints
            self.outlier.retain({ep.address for ep in endpoints})
        settings = self._settings.settings(endpoints[0].spiffe_id_text)
        if settings is not self._applied:
            self._apply(settings)
        request = _Request(self, settings, deadline)
        drain = self._drain
        drain.enter()
        self.deadlines.arm(deadline, settings.request_timeout)
        try:
            return await self._attempts(conn, parser, head, endpoints, request, ex, strip, add)
        except HttpError as exc:
            log.warning(
                "request_refused",
                listener=self._listener,
                reason=exc.code,
                status=exc.status,
                detail=exc.detail,
            )
            await send_raw(conn, ex.error_response(exc.status, exc.code))
            return False
        except DownstreamGone:
            ex.error_code = "downstream-gone"
            return False
        except trio.Cancelled:
            if deadline.cancel_called:
                await self._deadline_exceeded(conn, request, ex)
            raise
        finally:
            ex.attempts = request.attempt
            if not request.started:
                self.deadlines.disarm(deadline)
            drain.exit()

    async def _deadline_exceeded(self, conn: Conn, request: _Request, ex: Exchange) -> None:
        self.traffic.deadlines += 1
        log.warning(
            "deadline_exceeded",
            listener=self._listener,
            service=self._cfg.service,
            timeout=request.settings.request_timeout,
            attempts=request.attempt,
            response_started=request.started,
        )
        if not request.started:
            with trio.CancelScope(shield=True):  # the connection's scope is cancelled: answer anyway
                await send_raw(conn, ex.error_response(504, "deadline-exceeded"))
        else:
            ex.error_code = "deadline-exceeded"

    async def _attempts(
        self,
        conn: Conn,
        parser: RequestParser,
        head: RequestHead,
        endpoints: Sequence[StaticEndpoint],
        request: _Request,
        ex: Exchange,
        strip: frozenset[bytes],
        add: bytes,
    ) -> bool:
        settings = request.settings
        head_bytes = forward_request_head(head, strip=strip, add=add)
        telemetry = self._telemetry
        tracing = telemetry.tracer is not None
        replay_allowed = settings.retry.max_attempts > 1 and method_allows_replay(
            head.method, head.headers, has_body=head.has_body
        )
        if replay_allowed and head.has_body:
            await _read_ahead(conn, parser)
        # The whole request, when it is all parsed (the common case): sent in one write,
        # and replayable. None: its body is still arriving and is streamed, once.
        whole = whole_request(head_bytes, parser, head.chunked)
        request.replayable = replay_allowed and whole is not None
        stale_retry_ok = whole is not None and (request.replayable or not head.has_body)
        clock = self._clock
        now = clock.monotonic()
        self._budget.deposit(now)
        tried: list[HostPort] | None = None
        outlier = self.outlier
        connector = self._connector
        balancer = self._balancer
        max_attempts = settings.retry.max_attempts
        stale_used = False
        while request.attempt < max_attempts:
            request.attempt += 1
            self.traffic.attempts += 1
            if request.attempt > 1 or stale_used:  # a retry: time has passed since `now`
                now = clock.monotonic()
            candidates = self._candidates(endpoints, tried, now)
            if not candidates:
                self.traffic.no_healthy += 1
                log.warning(
                    "request_failed",
                    listener=self._listener,
                    service=self._cfg.service,
                    reason="no-healthy-endpoints",
                    endpoints=len(endpoints),
                    ejected=len(outlier.ejected(now)),
                )
                return await _answer(
                    conn, parser, head, ex, 503, "no-healthy-endpoints", consumed=whole is not None
                )
            started = time.monotonic()
            ep = balancer.pick(candidates, started)
            balancer.start(ep)
            ex.upstream = ep.address_text
            ex.peer = ep.spiffe_id_text
            up: Conn | None = None
            done = False
            # The CLIENT span of this attempt (tracing only) and what it ended with.
            span = None
            attempt_status, attempt_error = 0, None
            attempt_head, attempt_whole = head_bytes, whole
            if tracing:
                span, fields = telemetry.attempt(
                    ex,
                    host=ep.address.host,
                    port=ep.address.port,
                    peer_spiffe_id=ex.peer,
                    attempt=request.attempt - 1,
                )
                # The head ends with its blank line: this attempt's trace fields go before it.
                attempt_head = head_bytes[:-2] + fields + b"\r\n"
                if whole is not None:
                    attempt_whole = attempt_head + whole[len(head_bytes) :]
            try:
                try:
                    up, reused = await connector.get(ep, settings.connect_timeout)
                except UpstreamError as exc:
                    done = True
                    attempt_status, attempt_error = exc.status, exc.code
                    self._finish(ep, started, len(endpoints), failed=True)
                    if self._may_retry(request, Failure.CONNECT, 0, ep, exc.code):
                        tried = _add(tried, ep)
                        continue
                    return await _answer(
                        conn, parser, head, ex, exc.status, exc.code, consumed=whole is not None
                    )
                try:
                    if attempt_whole is not None:
                        outcome = await relay_whole(
                            conn,
                            head,
                            attempt_whole,
                            up,
                            max_head_bytes=self._limits.max_head_bytes,
                            closing=self._is_draining,
                            accept=request.accept,
                        )
                    else:
                        outcome = await relay(
                            conn,
                            parser,
                            head,
                            attempt_head,
                            up,
                            max_head_bytes=self._limits.max_head_bytes,
                            closing=self._is_draining,
                            accept=request.accept,
                            body_timeout=self._limits.body_timeout.total_seconds(),
                        )
                except ResponseRefused as refused:
                    # `accept` already granted the retry (attempts and budget).
                    done = True
                    attempt_status = refused.status
                    self._finish(ep, started, len(endpoints), failed=True)
                    self._log_retry(request, ep, f"status-{refused.status}")
                    tried = _add(tried, ep)
                    continue
                except UpstreamFailed as exc:
                    done = True
                    attempt_status, attempt_error = 502, "upstream-reset"
                    if reused and not exc.response_started and stale_retry_ok:
                        # A pooled connection the server sidecar had closed: the request never
                        # reached it. Try again on a fresh connection; no attempt is spent.
                        balancer.finish(ep, time.monotonic(), time.monotonic() - started, failed=True)
                        stale_retry_ok = False
                        stale_used = True
                        request.attempt -= 1
                        continue
                    self._finish(ep, started, len(endpoints), failed=True)
                    if not exc.response_started and self._may_retry(
                        request, Failure.LOST, 0, ep, "upstream-reset"
                    ):
                        tried = _add(tried, ep)
                        continue
                    log.warning(
                        "request_failed",
                        listener=self._listener,
                        service=ep.service,
                        endpoint=str(ep.address),
                        reason="upstream-reset",
                        detail=exc.reason,
                        attempts=request.attempt,
                    )
                    if not exc.response_started:
                        await send_raw(conn, ex.error_response(502, "upstream-reset"))
                    else:
                        ex.fail(ex.status or 502, "upstream-reset")
                    return False
                except DownstreamGone:
                    done = True
                    attempt_error = "downstream-gone"
                    balancer.finish(ep, time.monotonic(), time.monotonic() - started, failed=False)
                    raise
                done = True
                attempt_status = ex.status = outcome.status
                self._finished(ep, started, len(endpoints), outcome, request.head_at)
                if outcome.upstream_reusable:
                    connector.put(ep, up)
                    up = None
                return outcome.downstream_keep_alive and not self._drain.draining
            except trio.Cancelled:
                attempt_error = attempt_error or "cancelled"
                if not done:
                    done = True  # the deadline (or shutdown) caught it in flight: an endpoint too slow
                    self._finish(ep, started, len(endpoints), failed=True)
                raise
            finally:
                if span is not None:
                    telemetry.end_attempt(span, attempt_status, attempt_error)
                if not done:
                    self._balancer_abandon(ep, started)
                if up is not None:
                    up.close()
        raise AssertionError("unreachable: the last attempt answers or returns")  # pragma: no cover

    def _candidates(
        self, endpoints: Sequence[StaticEndpoint], tried: list[HostPort] | None, now: float
    ) -> Sequence[StaticEndpoint]:
        """Endpoints the balancer may choose: not ejected and, if any are left, not tried."""
        outlier = self.outlier
        if tried is None and not outlier.any_ejected:
            return endpoints  # the fast path: no list is built
        available = [ep for ep in endpoints if outlier.available(ep.address, now)]
        if tried:
            untried = [ep for ep in available if ep.address not in tried]
            if untried:
                return untried
        return available

    def _may_retry(
        self,
        request: _Request,
        failure: Failure,
        status: int,
        ep: StaticEndpoint | None = None,
        reason: str = "",
    ) -> bool:
        """Attempts left, a failure worth retrying, and (asked last) the budget."""
        verdict = decide(
            request.settings.retry,
            attempt=request.attempt,
            failure=failure,
            status=status,
            replayable=request.replayable,
        )
        if verdict is not Verdict.RETRY:
            return False
        now = self._clock.monotonic()
        if not self._budget.try_withdraw(now):
            self.traffic.budget_exhausted += 1
            self._metrics.observe_retry_budget_exhausted(self._cfg.service)
            if now - self._budget_logged >= _BUDGET_LOG_INTERVAL:
                self._budget_logged = now
                log.warning(
                    "retry_budget_exhausted",
                    listener=self._listener,
                    service=self._cfg.service,
                    percent=request.settings.budget.percent,
                    min_per_second=request.settings.budget.min_per_second,
                    window=request.settings.budget.window,
                    exhausted_total=self.traffic.budget_exhausted,
                )
            return False
        if ep is not None:
            self._log_retry(request, ep, reason)
        return True

    def _log_retry(self, request: _Request, ep: StaticEndpoint, reason: str) -> None:
        self.traffic.retries += 1
        self._metrics.observe_retry(self._cfg.service)
        log.info(
            "request_retried",
            listener=self._listener,
            service=ep.service,
            endpoint=str(ep.address),
            attempt=request.attempt,
            reason=reason,
        )

    def _finish(self, ep: StaticEndpoint, started: float, total: int, *, failed: bool) -> None:
        now = time.monotonic()
        self._balancer.finish(ep, now, now - started, failed=failed)
        if failed:
            self.outlier.failure(ep.address, self._clock.monotonic(), total=total)
        else:
            self.outlier.success(ep.address, self._clock.monotonic())

    def _finished(
        self, ep: StaticEndpoint, started: float, total: int, outcome: Outcome, head_at: float
    ) -> None:
        """A complete exchange: latency to the response head feeds the balancer."""
        now = time.monotonic()
        failed = outcome.status >= 500
        self._balancer.finish(ep, now, (head_at or now) - started, failed=failed)
        if failed:
            self.outlier.failure(ep.address, self._clock.monotonic(), total=total)
        else:
            self.outlier.success(ep.address, self._clock.monotonic())

    def _balancer_abandon(self, ep: StaticEndpoint, started: float) -> None:
        """An attempt ended by an exception we do not judge the endpoint by (a bug, a reset app)."""
        self._balancer.finish(ep, time.monotonic(), time.monotonic() - started, failed=False)


def _add(tried: list[HostPort] | None, ep: StaticEndpoint) -> list[HostPort]:
    if tried is None:
        return [ep.address]
    tried.append(ep.address)
    return tried


async def _read_ahead(conn: Conn, parser: RequestParser) -> None:
    """Read the request body into the parser until it is whole or past the replay buffer.

    Bounded: stops after `REPLAY_BUFFER_BYTES` of body; a client that stalls meets the
    request deadline. Raises DownstreamGone, or HttpError for a broken body.
    """
    events = parser.events
    size = 0
    seen = 0
    while True:
        for ev in itertools.islice(events, seen, None):
            if isinstance(ev, bytes):
                size += len(ev)
            elif isinstance(ev, EndOfMessage):
                return
        seen = len(events)
        if size > REPLAY_BUFFER_BYTES:
            return
        try:
            data = await conn.recv()
        except ConnectionClosed as exc:
            raise DownstreamGone(str(exc)) from exc
        if not data:
            raise DownstreamGone("downstream closed in the middle of a request body")
        parser.feed(data)


async def _answer(
    conn: Conn,
    parser: RequestParser,
    head: RequestHead,
    ex: Exchange,
    status: int,
    code: str,
    *,
    consumed: bool = False,
) -> bool:
    """Answer the app ourselves; keep its connection if the request's body was all read.

    `consumed`: the request was already taken whole from the parser.
    """
    keep = (consumed or discard_request_body(parser)) and head.keep_alive
    await send_raw(conn, ex.error_response(status, code, close=not keep))
    return keep
