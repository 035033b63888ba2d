"""Outlier detection: stop sending to an endpoint that keeps failing, then try it again.

An endpoint with `consecutive_failures` failures in a row (connection errors, 5xx) is
ejected: the balancer is not offered it for `base_ejection × n` (n = how many times it
has been ejected lately, capped at `max_ejection`), so an endpoint that keeps failing is
left alone longer each time. When the time is up it is readmitted on probation: one
failure ejects it again at once; one success ends the probation. An endpoint that stays
in service for `max_ejection` after a readmission has its count forgotten.

Never more than `max_ejected_percent` of the endpoints are out at once: if most of a
service fails, the cause is rarely the endpoints, and ejecting them all would only turn
errors into `no-healthy-endpoints`. (With the default 50%, a lone endpoint is never ejected.)

Pure: time comes in as `now` (monotonic seconds), so tests use a ManualClock. Healthy
endpoints have no state at all: a success on a never-failed endpoint is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog

if TYPE_CHECKING:  # a type only: this module stays pure
    from trustmesh.tracing.metrics import BreakerState

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    # Envoy's defaults for consecutive 5xx (5) and base ejection (30 s); its cap (300 s)
    # keeps a flapping endpoint out at most five minutes at a time. 50% rather than
    # Envoy's 10%: services here are small, and 10% of three endpoints would be none.
    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejected_percent: int = 50


class _Health:
    __slots__ = ("ejected_until", "ejections", "failures", "probation", "readmitted_at")

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.readmitted_at = 0.0
        self.probation = False


class OutlierDetector(Generic[K]):
    """Per-endpoint failure streaks and ejections for one service."""

    def __init__(
        self,
        settings: OutlierSettings = OutlierSettings(),
        *,
        service: str = "",
        on_state: Callable[[K, BreakerState], None] | None = None,
    ) -> None:
        self.settings = settings
        self._service = service
        # Told of every breaker transition (open on ejection, half_open on readmission, closed
        # when probation passes): the sidecar's `trustmesh_circuit_breaker_state` gauge.
        self._on_state = on_state
        self._health: dict[K, _Health] = {}
        self._ejected: set[K] = set()

    @property
    def any_ejected(self) -> bool:
        """False on the fast path: every endpoint may be offered without asking."""
        return bool(self._ejected)

    def ejected(self, now: float) -> frozenset[K]:
        """The endpoints out of service at `now` (readmitting those whose time is up)."""
        for key in list(self._ejected):
            self.available(key, now)
        return frozenset(self._ejected)

    def available(self, key: K, now: float) -> bool:
        """May `key` be offered to the balancer at `now`?"""
        if key not in self._ejected:
            return True
        health = self._health[key]
        if now < health.ejected_until:
            return False
        self._ejected.discard(key)
        health.probation = True
        health.failures = 0
        health.readmitted_at = now
        log.info("endpoint_readmitted", service=self._service, endpoint=str(key), ejections=health.ejections)
        if self._on_state is not None:
            self._on_state(key, "half_open")
        return True

    def success(self, key: K, now: float) -> None:
        health = self._health.get(key)
        if health is None:
            return
        health.failures = 0
        if health.probation:
            health.probation = False
            log.info("endpoint_probation_passed", service=self._service, endpoint=str(key))
            if self._on_state is not None:
                self._on_state(key, "closed")
        if health.ejections and now - health.readmitted_at >= self.settings.max_ejection:
            health.ejections = 0
        if not health.ejections and key not in self._ejected:
            del self._health[key]

    def failure(self, key: K, now: float, *, total: int) -> bool:
        """Record a failure of `key`, one of `total` endpoints; True if it is ejected now."""
        health = self._health.get(key)
        if health is None:
            health = self._health[key] = _Health()
        if key in self._ejected:
            return False  # an answer to a request sent before the ejection
        health.failures += 1
        threshold = 1 if health.probation else self.settings.consecutive_failures
        if health.failures < threshold:
            return False
        if (len(self._ejected) + 1) * 100 > total * self.settings.max_ejected_percent:
            if health.failures == threshold:  # once per streak, not once per failure
                log.warning(
                    "endpoint_ejection_skipped",
                    service=self._service,
                    endpoint=str(key),
                    reason="max-ejected-percent",
                    ejected=len(self._ejected),
                    endpoints=total,
                    max_ejected_percent=self.settings.max_ejected_percent,
                )
            return False
        if (
            health.ejections
            and not health.probation
            and now - health.readmitted_at >= self.settings.max_ejection
        ):
            health.ejections = 0  # in service long enough since the last readmission: a fresh start
        health.ejections += 1
        duration = min(self.settings.base_ejection * health.ejections, self.settings.max_ejection)
        health.ejected_until = now + duration
        health.failures = 0
        health.probation = False
        self._ejected.add(key)
        if self._on_state is not None:
            self._on_state(key, "open")
        log.warning(
            "endpoint_ejected",
            service=self._service,
            endpoint=str(key),
            ejections=health.ejections,
            seconds=duration,
            ejected=len(self._ejected),
            endpoints=total,
        )
        return True

    def retain(self, keys: Collection[K]) -> None:
        """Forget endpoints no longer in the service (bounded state under churn)."""
        for key in [k for k in self._health if k not in keys]:
            del self._health[key]
            self._ejected.discard(key)
