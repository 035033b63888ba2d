"""Authorization decisions (sans I/O): a revision compiled once, asked many times.

Semantics (docs/policy.md has the table): callers are always authenticated by mTLS,
so `source` is a verified SPIFFE ID. For the destination workload, take the
policies whose selector matches it; then

1. any matching DENY rule denies (reason `deny-rule`);
2. otherwise any matching ALLOW rule allows (reason `allow-rule`);
3. otherwise deny: `default-deny` when some ALLOW policy selects the workload,
   `no-allow-policy` when none does (zero trust: such a workload accepts nothing).

AUDIT rules match like ALLOW but never change the decision; their matches ride
along in `Decision.audit`. A path that `normalize_path` refuses is denied with
reason `ambiguous-path` before any rule is consulted (the sidecar answers 400).

Cost: selectors are indexed (exact IDs in a dict, `prefix/*` by prefix, `*`
apart), and the rules that apply to one destination are gathered once and cached,
so a decision touches only the rules of policies that select the workload. With
no audit match a decision allocates nothing: it returns a prebuilt `Decision`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trustmesh.policy.model import Action, AuthorizationPolicy, JsonValue, Revision, Rule
from trustmesh.policy.paths import AmbiguousPath, normalize_path

__all__ = ["AuditMatch", "Decision", "PolicyEngine", "Request"]

Verdict = Literal["ALLOW", "DENY"]
Reason = Literal["allow-rule", "deny-rule", "default-deny", "no-allow-policy", "ambiguous-path"]

# A sidecar asks for its own identity only; explain/whatif ask for a few. The bound
# keeps a misuse (one destination per request from untrusted input) from growing memory.
_VIEW_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Request:
    """What is being authorized. No method and no path means a TCP connection."""

    source: str
    destination: str
    method: str | None = None
    path: str | None = None
    port: int | None = None

    @property
    def protocol(self) -> Literal["http", "tcp"]:
        return "tcp" if self.method is None and self.path is None else "http"


@dataclass(frozen=True, slots=True)
class AuditMatch:
    """An AUDIT rule that matched: recorded, never enforced."""

    policy: str
    rule: int
    location: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request, and what produced it.

    `policy`/`rule` (0-based index into `spec.rules`) and `location` (`file:line` of the
    rule) name the deciding rule; they are None for `default-deny`, `no-allow-policy`
    and `ambiguous-path`.
    """

    decision: Verdict
    reason: Reason
    revision: str
    policy: str | None = None
    rule: int | None = None
    location: str | None = None
    audit: tuple[AuditMatch, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision == "ALLOW"

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decision": self.decision,
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
            "location": self.location,
            "revision": self.revision,
            "audit": [{"policy": a.policy, "rule": a.rule, "location": a.location} for a in self.audit],
        }


class _CompiledRule:
    """One rule as sets and prefix tuples, so matching is a few hash lookups and `startswith`."""

    __slots__ = (
        "any_path",
        "any_source",
        "audit",
        "http_only",
        "methods",
        "path_prefixes",
        "paths",
        "ports",
        "result",
        "source_prefixes",
        "sources",
    )

    def __init__(self, policy: AuthorizationPolicy, index: int, rule: Rule, revision: str) -> None:
        patterns = rule.from_spiffe_ids
        self.any_source = patterns is None or "*" in patterns
        self.sources = frozenset(p for p in patterns or () if not p.endswith("/*"))
        # `spiffe://td/ns/*` keeps its slash: it matches IDs below `ns`, never `spiffe://td/nsfoo`.
        self.source_prefixes = tuple(p[:-1] for p in patterns or () if p.endswith("/*"))
        self.methods = None if rule.methods is None else frozenset(rule.methods)
        self.any_path = rule.paths is None or "*" in rule.paths
        self.paths = frozenset(p for p in rule.paths or () if not p.endswith("/*"))
        self.path_prefixes = tuple(p[:-1] for p in rule.paths or () if p.endswith("/*"))
        self.ports = None if rule.ports is None else frozenset(rule.ports)
        self.http_only = rule.methods is not None or rule.paths is not None
        location = str(rule.location)
        self.audit = AuditMatch(policy.name, index, location)
        reason: Reason = "deny-rule" if policy.action is Action.DENY else "allow-rule"
        verdict: Verdict = "DENY" if policy.action is Action.DENY else "ALLOW"
        self.result = Decision(verdict, reason, revision, policy.name, index, location)

    def matches(self, source: str, method: str | None, path: str | None, port: int | None) -> bool:
        if not (self.any_source or source in self.sources or source.startswith(self.source_prefixes)):
            return False
        if self.ports is not None and port not in self.ports:
            return False
        if not self.http_only:
            return True
        if method is None and path is None:
            return False  # a TCP connection never matches a rule about methods or paths
        if self.methods is not None and method not in self.methods:
            return False
        if self.any_path:
            return True
        return path is not None and (path in self.paths or path.startswith(self.path_prefixes))


@dataclass(frozen=True, slots=True)
class _View:
    """The rules that apply to one destination, split by action."""

    deny: tuple[_CompiledRule, ...]
    allow: tuple[_CompiledRule, ...]
    audit: tuple[_CompiledRule, ...]
    fallback: Decision


class PolicyEngine:
    """A compiled revision. Immutable after construction; safe to share between tasks."""

    def __init__(self, revision: Revision) -> None:
        self.revision = revision
        self._exact: dict[str, list[tuple[AuthorizationPolicy, list[_CompiledRule]]]] = {}
        self._prefix: dict[str, list[tuple[AuthorizationPolicy, list[_CompiledRule]]]] = {}
        self._everyone: list[tuple[AuthorizationPolicy, list[_CompiledRule]]] = []
        # Order of first appearance in the revision, so the deciding rule is deterministic.
        self._order: dict[str, int] = {}
        for order, policy in enumerate(revision.authorization):
            self._order[policy.name] = order
            compiled = (
                policy,
                [_CompiledRule(policy, i, r, revision.id) for i, r in enumerate(policy.rules)],
            )
            if policy.selector is None or "*" in policy.selector:
                self._everyone.append(compiled)
                continue
            for pattern in policy.selector:
                if pattern.endswith("/*"):
                    self._prefix.setdefault(pattern[:-1], []).append(compiled)
                else:
                    self._exact.setdefault(pattern, []).append(compiled)
        self._views: dict[str, _View] = {}
        self._ambiguous = Decision("DENY", "ambiguous-path", revision.id)

    def selecting(self, destination: str) -> list[AuthorizationPolicy]:
        """The policies whose selector matches `destination`, in revision order."""
        return [policy for policy, _ in self._select(destination)]

    def decide(
        self,
        source: str,
        destination: str,
        method: str | None = None,
        path: str | None = None,
        port: int | None = None,
    ) -> Decision:
        """Authorize one request (HTTP when `method` or `path` is given, else a TCP connection).

        `path` is the raw request target; its query string is ignored and it is normalised
        here, so callers never match on an un-normalised path.
        """
        if path is not None:
            try:
                path = normalize_path(path)
            except AmbiguousPath:
                return self._ambiguous
        view = self._views.get(destination)
        if view is None:
            view = self._build_view(destination)
        decision: Decision | None = None
        for rule in view.deny:
            if rule.matches(source, method, path, port):
                decision = rule.result
                break
        if decision is None:
            for rule in view.allow:
                if rule.matches(source, method, path, port):
                    decision = rule.result
                    break
            else:
                decision = view.fallback
        if view.audit:
            audits = tuple(r.audit for r in view.audit if r.matches(source, method, path, port))
            if audits:
                decision = Decision(
                    decision.decision,
                    decision.reason,
                    decision.revision,
                    decision.policy,
                    decision.rule,
                    decision.location,
                    audits,
                )
        return decision

    def decide_request(self, request: Request) -> Decision:
        return self.decide(request.source, request.destination, request.method, request.path, request.port)

    def _select(self, destination: str) -> list[tuple[AuthorizationPolicy, list[_CompiledRule]]]:
        found = list(self._exact.get(destination, ()))
        # Walk the destination's own '/'-boundaries: cost grows with its depth, not with policies.
        end = destination.find("/", len("spiffe://"))
        while end != -1:
            found.extend(self._prefix.get(destination[: end + 1], ()))
            end = destination.find("/", end + 1)
        found.extend(self._everyone)
        unique = {id(entry[0]): entry for entry in found}  # a policy may list several matching patterns
        return sorted(unique.values(), key=lambda entry: self._order[entry[0].name])

    def _build_view(self, destination: str) -> _View:
        deny: list[_CompiledRule] = []
        allow: list[_CompiledRule] = []
        audit: list[_CompiledRule] = []
        for policy, rules in self._select(destination):
            {Action.DENY: deny, Action.ALLOW: allow, Action.AUDIT: audit}[policy.action].extend(rules)
        reason: Reason = "default-deny" if allow else "no-allow-policy"
        view = _View(tuple(deny), tuple(allow), tuple(audit), Decision("DENY", reason, self.revision.id))
        if len(self._views) >= _VIEW_CACHE_LIMIT:
            self._views.clear()
        self._views[destination] = view
        return view
