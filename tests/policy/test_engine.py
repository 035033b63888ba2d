"""Decision semantics: the table in docs/policy.md, row by row, on real loaded policy."""

from __future__ import annotations

import textwrap

import pytest

from trustmesh.policy.engine import PolicyEngine
from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Problems

API = "spiffe://example.org/ns/default/sa/api"
WEB = "spiffe://example.org/ns/default/sa/web"
ETL = "spiffe://example.org/ns/batch/sa/etl"
DB = "spiffe://example.org/ns/db/sa/postgres"
OTHER = "spiffe://other.org/ns/default/sa/web"


def policy(name: str, action: str, rules: str, selector: str | None = API) -> str:
    select = f"\n  selector:\n    spiffeIds: [{selector!r}]" if selector else ""
    body = textwrap.indent(textwrap.dedent(rules).strip(), "    ")
    return (
        f"apiVersion: trustmesh.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n"
        f"spec:{select}\n  action: {action}\n  rules:\n{body}\n"
    )


def engine(*documents: str) -> PolicyEngine:
    loaded = load_revision({"p.yaml": "---\n".join(documents).encode()}, revision_id="rev1")
    assert not isinstance(loaded, Problems), loaded.format()
    return PolicyEngine(loaded)


WEB_READS = policy(
    "web-reads-api",
    "ALLOW",
    f"""
    - from:
        spiffeIds: ["{WEB}", "spiffe://example.org/ns/batch/*"]
      to:
        methods: ["GET", "HEAD"]
        paths: ["/items", "/items/*"]
        ports: [9001]
    """,
)


def test_matching_allow_rule_allows_and_names_itself() -> None:
    decision = engine(WEB_READS).decide(WEB, API, "GET", "/items/42", 9001)
    assert (decision.decision, decision.policy, decision.rule, decision.reason) == (
        "ALLOW",
        "web-reads-api",
        0,
        "allow-rule",
    )
    assert decision.location == "p.yaml:10"
    assert decision.revision == "rev1"


@pytest.mark.parametrize(
    ("source", "method", "path", "port"),
    [
        (OTHER, "GET", "/items", 9001),  # caller not listed
        (WEB, "POST", "/items", 9001),  # method not listed
        (WEB, "GET", "/admin", 9001),  # path not listed
        (WEB, "GET", "/itemsX", 9001),  # '/items/*' is below /items/, not a string prefix
        (WEB, "GET", "/items", 9002),  # port not listed
        (WEB, "GET", "/items", None),  # rule names ports, request has none
    ],
)
def test_every_field_of_a_rule_must_match_else_default_deny(
    source: str, method: str, path: str, port: int | None
) -> None:
    decision = engine(WEB_READS).decide(source, API, method, path, port)
    assert (decision.decision, decision.reason, decision.policy) == ("DENY", "default-deny", None)


def test_list_elements_match_any_and_prefix_patterns_match_below_the_prefix() -> None:
    e = engine(WEB_READS)
    assert e.decide(ETL, API, "HEAD", "/items", 9001).allowed
    assert e.decide(WEB, API, "GET", "/items/a/b", 9001).allowed
    # 'ns/batch/*' does not match a sibling namespace that merely shares the prefix text.
    assert not e.decide("spiffe://example.org/ns/batchx/sa/etl", API, "GET", "/items", 9001).allowed


def test_deny_wins_over_allow_whatever_the_order() -> None:
    deny = policy(
        "no-web-admin", "DENY", f"- from: {{spiffeIds: ['{WEB}']}}\n  to: {{paths: ['/items/secret']}}"
    )
    for documents in ((WEB_READS, deny), (deny, WEB_READS)):
        e = engine(*documents)
        denied = e.decide(WEB, API, "GET", "/items/secret", 9001)
        assert (denied.decision, denied.policy, denied.reason) == ("DENY", "no-web-admin", "deny-rule")
        assert e.decide(WEB, API, "GET", "/items/other", 9001).allowed


def test_workload_selected_by_no_allow_accepts_nothing() -> None:
    e = engine(WEB_READS, policy("audit-db", "AUDIT", "- {}", selector=DB))
    decision = e.decide(WEB, DB, "GET", "/items", 9001)
    assert (decision.decision, decision.reason) == ("DENY", "no-allow-policy")
    assert e.decide(WEB, DB).reason == "no-allow-policy"


def test_empty_revision_denies_everything() -> None:
    e = engine()
    assert e.decide(WEB, API, "GET", "/").reason == "no-allow-policy"


def test_omitted_selector_and_star_select_every_workload() -> None:
    open_health = policy("health", "ALLOW", "- to: {paths: ['/healthz']}", selector=None)
    star = policy("star-deny-other", "DENY", "- from: {spiffeIds: ['spiffe://other.org/*']}", selector="*")
    e = engine(open_health, star)
    assert e.decide(WEB, API, "GET", "/healthz").allowed
    assert e.decide(WEB, DB, "GET", "/healthz").allowed
    assert e.decide(OTHER, DB, "GET", "/healthz").decision == "DENY"
    assert e.decide(OTHER, DB, "GET", "/healthz").policy == "star-deny-other"


def test_prefix_selector_selects_workloads_below_it() -> None:
    e = engine(
        policy(
            "ns-default", "ALLOW", f"- from: {{spiffeIds: ['{WEB}']}}", "spiffe://example.org/ns/default/*"
        )
    )
    assert e.decide(WEB, API).allowed
    assert not e.decide(WEB, DB).allowed
    assert [p.name for p in e.selecting(API)] == ["ns-default"]
    assert e.selecting(DB) == []


def test_tcp_evaluates_from_and_ports_and_never_matches_http_rules() -> None:
    tcp_rule = policy("etl-to-db", "ALLOW", f"- from: {{spiffeIds: ['{ETL}']}}\n  to: {{ports: [5432]}}", DB)
    http_rule = policy(
        "web-to-db-http", "ALLOW", f"- from: {{spiffeIds: ['{WEB}']}}\n  to: {{methods: [GET]}}", DB
    )
    e = engine(tcp_rule, http_rule)
    assert e.decide(ETL, DB, port=5432).allowed
    assert e.decide(ETL, DB, port=5433).reason == "default-deny"
    assert e.decide(WEB, DB, port=5432).reason == "default-deny"  # a methods rule never matches TCP
    assert e.decide(WEB, DB, "GET", "/", 80).allowed
    # A deny rule naming paths does not deny a TCP connection either.
    deny_paths = policy("deny-admin", "DENY", "- to: {paths: ['/admin']}", DB)
    assert engine(tcp_rule, deny_paths).decide(ETL, DB, port=5432).allowed


def test_audit_records_matches_without_changing_the_decision() -> None:
    audit = policy("watch-web", "AUDIT", f"- from: {{spiffeIds: ['{WEB}']}}")
    e = engine(WEB_READS, audit)
    allowed = e.decide(WEB, API, "GET", "/items", 9001)
    assert allowed.allowed and allowed.policy == "web-reads-api"
    assert [(a.policy, a.rule) for a in allowed.audit] == [("watch-web", 0)]
    denied = e.decide(WEB, API, "DELETE", "/items", 9001)
    assert denied.decision == "DENY" and [a.policy for a in denied.audit] == ["watch-web"]
    assert e.decide(ETL, API, "GET", "/items", 9001).audit == ()
    # AUDIT alone allows nothing.
    assert engine(audit).decide(WEB, API, "GET", "/items").reason == "no-allow-policy"


def test_second_rule_is_reported_with_its_index() -> None:
    two = policy("two-rules", "ALLOW", f"- from: {{spiffeIds: ['{ETL}']}}\n- from: {{spiffeIds: ['{WEB}']}}")
    decision = engine(two).decide(WEB, API, "GET", "/")
    assert (decision.policy, decision.rule, decision.location) == ("two-rules", 1, "p.yaml:11")


@pytest.mark.parametrize(
    "attack",
    [
        "/items/../admin",
        "//admin",
        "/%61dmin",
        "/./admin",
        "/items/%2e%2e/admin",
        "/admin/",
        "/admin?x=/items/1",
    ],
)
def test_paths_are_normalised_before_matching(attack: str) -> None:
    deny = policy("no-admin", "DENY", "- to: {paths: ['/admin', '/admin/*']}")
    allow_all = policy("allow-web", "ALLOW", f"- from: {{spiffeIds: ['{WEB}']}}")
    decision = engine(deny, allow_all).decide(WEB, API, "GET", attack)
    assert (decision.decision, decision.policy) == ("DENY", "no-admin")


@pytest.mark.parametrize(
    "attack", ["/items/..%2Fadmin", "/items%2F..%2Fadmin", "/items\\..\\admin", "/../admin"]
)
def test_ambiguous_paths_are_denied_before_rules(attack: str) -> None:
    allow_all = policy("allow-web", "ALLOW", f"- from: {{spiffeIds: ['{WEB}']}}")
    decision = engine(allow_all).decide(WEB, API, "GET", attack)
    assert (decision.decision, decision.reason, decision.policy) == ("DENY", "ambiguous-path", None)


def test_unselected_policies_are_not_consulted() -> None:
    many = [
        policy(f"svc-{i}", "DENY", "- {}", selector=f"spiffe://example.org/ns/other/sa/svc-{i}")
        for i in range(200)
    ]
    e = engine(WEB_READS, *many)
    assert [p.name for p in e.selecting(API)] == ["web-reads-api"]
    assert e.decide(WEB, API, "GET", "/items", 9001).allowed
