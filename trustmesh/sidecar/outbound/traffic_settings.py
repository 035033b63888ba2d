"""Per-service traffic settings: TrafficPolicy files with the defaults filled in.

Parsed once per policy revision (`TrafficSettingsStore.update`), read per request as one
dict lookup (`settings`), so a new revision applies to the next request without restart
and the hot path never looks at YAML or timedeltas. The outbound reads them through the
`TrafficSettingsProvider` protocol; tests pass a `FixedTrafficSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import structlog

from trustmesh.policy.model import Revision, TrafficSpec
from trustmesh.sidecar.outbound.outlier import OutlierSettings
from trustmesh.sidecar.outbound.retry import RetrySettings
from trustmesh.sidecar.outbound.retry_budget import BudgetSettings

log = structlog.get_logger(__name__)

LoadBalancer = Literal["P2C_EWMA", "ROUND_ROBIN"]


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    """Everything the outbound needs to call one service; seconds as floats."""

    # 10 s: longer than any healthy API call, short enough that a hung upstream does not
    # hold the app's connection (and its caller's) for minutes (the default).
    request_timeout: float = 10.0
    # 1 s: a loopback or LAN connect takes milliseconds; past a second the endpoint is
    # gone or overloaded, and another endpoint is the better bet.
    connect_timeout: float = 1.0
    retry: RetrySettings = field(default_factory=RetrySettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    outlier: OutlierSettings = field(default_factory=OutlierSettings)
    # Linkerd's default: latency- and load-aware, see `p2c.py`.
    load_balancer: LoadBalancer = "P2C_EWMA"


DEFAULT_SETTINGS = TrafficSettings()


def settings_from_spec(spec: TrafficSpec) -> TrafficSettings:
    """A validated spec over the defaults: each absent field keeps its default."""
    d = DEFAULT_SETTINGS

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    retry = RetrySettings(
        max_attempts=spec.max_attempts if spec.max_attempts is not None else d.retry.max_attempts,
        on_connection_failure=(
            spec.retry_on_connection_failure
            if spec.retry_on_connection_failure is not None
            else d.retry.on_connection_failure
        ),
        retry_statuses=spec.retry_statuses if spec.retry_statuses is not None else d.retry.retry_statuses,
    )
    budget = BudgetSettings(
        percent=pick(spec.budget_percent, d.budget.percent),
        min_per_second=pick(spec.budget_min_per_second, d.budget.min_per_second),
        window=pick(spec.budget_window, d.budget.window),
    )
    base = pick(spec.base_ejection, d.outlier.base_ejection)
    outlier = OutlierSettings(
        consecutive_failures=(
            spec.consecutive_failures
            if spec.consecutive_failures is not None
            else d.outlier.consecutive_failures
        ),
        base_ejection=base,
        # A base above the default cap (only the base given) raises the cap with it.
        max_ejection=pick(spec.max_ejection, max(d.outlier.max_ejection, base)),
        max_ejected_percent=(
            spec.max_ejected_percent
            if spec.max_ejected_percent is not None
            else d.outlier.max_ejected_percent
        ),
    )
    balancer: LoadBalancer = "ROUND_ROBIN" if spec.load_balancer == "ROUND_ROBIN" else d.load_balancer
    return TrafficSettings(
        request_timeout=pick(spec.request_timeout, d.request_timeout),
        connect_timeout=pick(spec.connect_timeout, d.connect_timeout),
        retry=retry,
        budget=budget,
        outlier=outlier,
        load_balancer=balancer,
    )


def settings_by_service(revision: Revision) -> dict[str, TrafficSettings]:
    """SPIFFE ID of a service -> its settings, for every TrafficPolicy in `revision`."""
    return {policy.service: settings_from_spec(policy.spec) for policy in revision.traffic}


def settings_for(revision: Revision | None, service: str) -> TrafficSettings:
    """The settings for calls to `service` (its SPIFFE ID) under `revision`; defaults if none."""
    if revision is not None:
        for policy in revision.traffic:
            if policy.service == service:
                return settings_from_spec(policy.spec)
    return DEFAULT_SETTINGS


class TrafficSettingsProvider(Protocol):
    def settings(self, service: str) -> TrafficSettings:
        """The settings in force now for calls to `service` (a SPIFFE ID, as text)."""
        ...


class FixedTrafficSettings:
    """The same settings for every service, or per service from a mapping (tests, static use)."""

    def __init__(
        self,
        default: TrafficSettings = DEFAULT_SETTINGS,
        per_service: Mapping[str, TrafficSettings] | None = None,
    ) -> None:
        self.default = default
        self.per_service = dict(per_service or {})

    def settings(self, service: str) -> TrafficSettings:
        return self.per_service.get(service, self.default)


class TrafficSettingsStore:
    """The settings of the active policy revision; `update` swaps them in one assignment."""

    def __init__(self) -> None:
        self.revision: str | None = None
        self._by_service: dict[str, TrafficSettings] = {}

    def update(self, revision: Revision) -> None:
        by_service = settings_by_service(revision)
        changed = sorted(
            service
            for service in by_service.keys() | self._by_service.keys()
            if by_service.get(service) != self._by_service.get(service)
        )
        self._by_service = by_service
        previous, self.revision = self.revision, revision.id
        log.info(
            "traffic_settings_applied",
            revision=revision.id,
            previous_revision=previous,
            services=len(by_service),
            changed=changed[:20],
        )

    def settings(self, service: str) -> TrafficSettings:
        return self._by_service.get(service, DEFAULT_SETTINGS)
