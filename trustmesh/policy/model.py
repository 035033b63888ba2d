"""The policy model: what a validated revision of the policy repository contains.

These are plain frozen values produced by the loader (`trustmesh.policy.loader`)
and consumed by the engine (`trustmesh.policy.engine`). Nothing here parses or
evaluates; every value in a `Revision` has already been validated, and keeps the
file and line it came from so that answers can point back at the source.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "API_VERSION",
    "Action",
    "AuthorizationPolicy",
    "JsonValue",
    "Location",
    "Problem",
    "Problems",
    "Revision",
    "Rule",
    "TrafficPolicy",
    "TrafficSpec",
]

API_VERSION = "trustmesh.dev/v1"

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"


class Action(enum.StrEnum):
    """What a matching policy does. AUDIT matches like ALLOW but only records the match."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"


@dataclass(frozen=True, slots=True)
class Location:
    """A place in the policy repository: file path relative to its root, 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a revision is invalid, shown to operators as `file:line: message`."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"

    def to_json(self) -> dict[str, JsonValue]:
        return {"file": self.file, "line": self.line, "message": self.message}


@dataclass(frozen=True, slots=True)
class Problems:
    """Every problem found in a revision, sorted by file and line.

    A value, not an exception: loaders return `Revision | Problems` so that callers
    must look at both outcomes (the control plane keeps the last good revision).
    """

    items: tuple[Problem, ...]

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def format(self) -> str:
        return "\n".join(str(problem) for problem in self.items)

    def to_json(self) -> list[JsonValue]:
        return [problem.to_json() for problem in self.items]


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of an authorization policy. Absent fields match anything.

    Patterns are kept as written (`spiffe://td/ns/batch/*`, `/items/*`, `*`); the
    engine compiles them. `methods`/`paths` make the rule HTTP-only: a rule naming
    either never matches a TCP connection.
    """

    location: Location
    from_spiffe_ids: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    ports: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """`kind: AuthorizationPolicy`: who may call the inbound of the selected workloads.

    `selector` is None when omitted, meaning every workload.
    """

    name: str
    action: Action
    selector: tuple[str, ...] | None
    rules: tuple[Rule, ...]
    location: Location
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, JsonValue]:
        rules: list[JsonValue] = []
        for rule in self.rules:
            entry: dict[str, JsonValue] = {"line": rule.location.line}
            if rule.from_spiffe_ids is not None:
                entry["from"] = {"spiffeIds": list(rule.from_spiffe_ids)}
            to: dict[str, JsonValue] = {}
            if rule.methods is not None:
                to["methods"] = list(rule.methods)
            if rule.paths is not None:
                to["paths"] = list(rule.paths)
            if rule.ports is not None:
                to["ports"] = list(rule.ports)
            if to:
                entry["to"] = to
            rules.append(entry)
        return {
            "kind": "AuthorizationPolicy",
            "name": self.name,
            "file": self.location.file,
            "line": self.location.line,
            "action": str(self.action),
            "selector": None if self.selector is None else {"spiffeIds": list(self.selector)},
            "rules": rules,
        }


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    """The validated settings of a TrafficPolicy (`trustmesh.policy.traffic` reads them).

    None means "absent from the file": the sidecar's default applies
    (`trustmesh.sidecar.traffic_settings`). Durations are in seconds.
    """

    request_timeout: float | None = None
    connect_timeout: float | None = None
    max_attempts: int | None = None
    budget_percent: float | None = None
    budget_min_per_second: float | None = None
    budget_window: float | None = None
    retry_on_connection_failure: bool | None = None
    retry_statuses: frozenset[int] | None = None
    consecutive_failures: int | None = None
    base_ejection: float | None = None
    max_ejection: float | None = None
    max_ejected_percent: int | None = None
    load_balancer: str | None = None  # "P2C_EWMA" or "ROUND_ROBIN"


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """`kind: TrafficPolicy`: timeouts, retries, outlier detection and balancing for the
    calls to one service (`spec.service`, the SPIFFE ID of its workloads).

    `spec` is the validated form; `settings` keeps the file's `spec` (less `service`)
    verbatim, for `GET /v1/policy`.
    """

    name: str
    service: str
    settings: Mapping[str, JsonValue]
    location: Location
    spec: TrafficSpec = TrafficSpec()

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "kind": "TrafficPolicy",
            "name": self.name,
            "file": self.location.file,
            "line": self.location.line,
            "service": self.service,
            "settings": dict(self.settings),
        }


@dataclass(frozen=True, slots=True)
class Revision:
    """One validated state of the policy repository.

    `id` is the commit SHA for git sources (`dir:<sha256>` of the contents for a plain
    directory); `message` is the commit message, when there is one.
    """

    id: str
    files: tuple[str, ...]
    authorization: tuple[AuthorizationPolicy, ...]
    traffic: tuple[TrafficPolicy, ...] = ()
    message: str | None = None

    def policies_json(self) -> list[JsonValue]:
        out: list[JsonValue] = [policy.to_json() for policy in self.authorization]
        out.extend(policy.to_json() for policy in self.traffic)
        return out
