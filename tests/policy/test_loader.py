"""Validation: every problem is reported, each at the line where it is."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Action, Problems, Revision


def load(files: dict[str, str]) -> Revision | Problems:
    return load_revision({k: textwrap.dedent(v).encode() for k, v in files.items()}, revision_id="r")


def problems(text: str, file: str = "p.yaml") -> list[tuple[int, str]]:
    result = load({file: text})
    assert isinstance(result, Problems), "expected problems"
    return [(p.line, p.message) for p in result]


HEADER = "apiVersion: trustmesh.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n"


def authz(spec: str) -> str:
    return HEADER + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def test_valid_multi_document_file_in_nested_dirs_with_traffic_policy() -> None:
    result = load(
        {
            "teams/api/policy.yaml": authz(
                """\
                action: ALLOW
                rules:
                  - from: {spiffeIds: ["spiffe://example.org/ns/default/sa/web"]}
                """
            )
            + """---
apiVersion: trustmesh.dev/v1
kind: TrafficPolicy
metadata: {name: api-timeouts}
spec:
  service: spiffe://example.org/ns/default/sa/api
  timeouts: {request: 2s}
  retries: {maxAttempts: 3, budget: {percent: 20}}
""",
            "deny.yml": authz("action: DENY\nrules:\n  - to: {paths: ['/admin']}\n").replace(
                "name: p", "name: d"
            ),
            "expect.test.yaml": "this: is not a policy",
            "README.md": "not yaml at all: [",
        }
    )
    assert isinstance(result, Revision), result
    assert result.files == ("deny.yml", "teams/api/policy.yaml")
    assert [(p.name, p.action) for p in result.authorization] == [("d", Action.DENY), ("p", Action.ALLOW)]
    (traffic,) = result.traffic
    assert traffic.service == "spiffe://example.org/ns/default/sa/api"
    assert traffic.settings == {
        "timeouts": {"request": "2s"},
        "retries": {"maxAttempts": 3, "budget": {"percent": 20}},
    }
    assert (traffic.spec.request_timeout, traffic.spec.max_attempts, traffic.spec.budget_percent) == (
        2.0,
        3,
        20.0,
    )
    assert traffic.location.line == 12  # the metadata.name line of the second document


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1, 2\nb: 3\n", [(2, "YAML syntax error")]),
        (
            authz(
                "action: ALLOW\nrules:\n  - from: {spiffeIds: ['spiffe://example.org/a']}\n    color: red\n"
            ),
            [(9, "spec.rules[0]: unknown field 'color'")],
        ),
        (
            HEADER + "spex: {}\n",
            [(1, "document: missing field 'spec'"), (5, "document: unknown field 'spex'")],
        ),
        (authz("rules: [{}]\n"), [(5, "spec: missing field 'action'")]),  # at the `spec:` key
        (authz("action: ALLOW\n"), [(5, "spec: missing field 'rules'")]),
        (authz("action: PERMIT\nrules: [{}]\n"), [(6, "spec.action: unknown action 'PERMIT'")]),
        (
            authz("action: ALLOW\nrules:\n  - from:\n      spiffeIds: ['spiffe://Example.org/web']\n"),
            [(9, "spec.rules[0].from.spiffeIds[0]: bad SPIFFE ID 'spiffe://Example.org/web': ID-07")],
        ),
        (
            authz(
                "action: ALLOW\nrules:\n  - from:\n      spiffeIds:\n        - spiffe://example.org/*/web\n"
            ),
            [(10, "spec.rules[0].from.spiffeIds[0]: bad SPIFFE ID pattern")],
        ),
        (
            authz("selector: {spiffeIds: ['http://example.org/api']}\naction: ALLOW\nrules: [{}]\n"),
            [(6, "spec.selector.spiffeIds[0]: bad SPIFFE ID 'http://example.org/api'")],
        ),
        (
            authz("action: ALLOW\nrules:\n  - to:\n      ports: [80, '443', 70000]\n      methods: [get]\n"),
            [
                (9, "spec.rules[0].to.ports[1]: expected an integer, got string '443'"),
                (9, "spec.rules[0].to.ports[2]: port 70000 is outside 1-65535"),
                (10, "spec.rules[0].to.methods[0]: bad method 'get'"),
            ],
        ),
        (
            authz("action: ALLOW\nrules:\n  - to:\n      paths: ['/a/../b', 'items']\n"),
            [
                (9, "spec.rules[0].to.paths[0]: path '/a/../b' is not in normal form; write '/b'"),
                (9, "spec.rules[0].to.paths[1]: bad path 'items'"),
            ],
        ),
        (authz("action: ALLOW\nrules:\n  - to: {}\n"), [(8, "spec.rules[0].to: name at least one of")]),
        (authz("action: ALLOW\nrules: []\n"), [(7, "spec.rules: must not be empty")]),
        (
            "apiVersion: trustmesh.dev/v2\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {}\n",
            [
                (1, "unknown apiVersion 'trustmesh.dev/v2'"),
                (4, "spec: missing field 'action'"),
                (4, "spec: missing"),
            ],
        ),
        (
            "apiVersion: trustmesh.dev/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n",
            [(2, "unknown kind 'NetworkPolicy'")],
        ),
        (
            HEADER.replace("name: p", "name: Web_Policy") + "spec: {action: ALLOW, rules: [{}]}\n",
            [(4, "metadata.name")],
        ),
        (
            HEADER.replace("  name: p\n", "  labels: {team: x}\n") + "spec: {action: ALLOW, rules: [{}]}\n",
            [(3, "metadata: missing field 'name'")],
        ),
        (authz("action: ALLOW\naction: DENY\nrules: [{}]\n"), [(7, "spec: duplicate field 'action'")]),
        ("- just\n- a list\n", [(1, "document: expected a mapping, got a list")]),
        (
            "apiVersion: trustmesh.dev/v1\nkind: TrafficPolicy\nmetadata: {name: t}\n"
            "spec: {timeouts: {request: 2s}}\n",
            [(4, "spec: missing field 'service'")],
        ),
    ],
)
def test_each_problem_at_its_line(text: str, expected: list[tuple[int, str]]) -> None:
    found = problems(text)
    assert len(found) == len(expected), found
    for (line, message), (want_line, want_prefix) in zip(found, expected, strict=True):
        assert line == want_line, found
        assert message.startswith(want_prefix), found


def test_duplicate_names_across_files_point_at_both() -> None:
    allow = authz("action: ALLOW\nrules: [{}]\n")
    result = load({"a.yaml": allow, "b/c.yaml": "# comment\n" + allow})
    assert isinstance(result, Problems)
    assert [str(p) for p in result] == [
        "b/c.yaml:5: duplicate AuthorizationPolicy name 'p' (first defined at a.yaml:4)"
    ]


def test_problems_in_several_documents_and_files_are_all_reported() -> None:
    bad = authz("action: NOPE\nrules: [{}]\n")
    result = load({"a.yaml": bad + "---\n" + bad.replace("name: p", "name: q"), "z.yaml": "x: [\n"})
    assert isinstance(result, Problems)
    assert [(p.file, p.line) for p in result] == [("a.yaml", 6), ("a.yaml", 14), ("z.yaml", 2)]


def test_non_utf8_file_is_a_problem() -> None:
    result = load_revision({"a.yaml": b"\xff\xfe"}, revision_id="r")
    assert isinstance(result, Problems)
    assert str(result.items[0]).startswith("a.yaml:1: not UTF-8 text")


def test_empty_documents_and_comment_only_files_are_fine() -> None:
    result = load({"a.yaml": "# nothing yet\n", "b.yaml": "---\n---\n"})
    assert isinstance(result, Revision) and result.authorization == ()


_YAMLISH = st.text(alphabet=st.sampled_from(list("ab:-[]{}'\"\n #&*!|>%@`,?.0123456789\t")), max_size=120)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_YAMLISH, st.text(max_size=120)))
def test_loader_never_crashes_on_arbitrary_text(text: str) -> None:
    result = load_revision({"f.yaml": text.encode("utf-8", errors="surrogatepass")}, revision_id="r")
    assert isinstance(result, Revision | Problems)
    if isinstance(result, Problems):
        assert all(p.file == "f.yaml" and p.line >= 1 and p.message for p in result)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    action=st.sampled_from(["ALLOW", "DENY", "AUDIT", "allow", "1", "[]", "{}", "null"]),
    ids=st.lists(
        st.sampled_from(["'*'", "spiffe://e.org/a", "spiffe://e.org/*", "x", "1", "[]", "''"]), max_size=3
    ),
    ports=st.lists(st.sampled_from(["1", "0", "65536", "'80'", "true", "1.5", "0x50", "null"]), max_size=3),
    extra=st.sampled_from(["", "  selector: {}\n", "  selector: {spiffeIds: []}\n", "  rules: x\n"]),
)
def test_loader_never_crashes_on_policy_shaped_documents(
    action: str, ids: list[str], ports: list[str], extra: str
) -> None:
    text = (
        HEADER
        + f"spec:\n  action: {action}\n{extra}  rules:\n"
        + f"    - from: {{spiffeIds: [{', '.join(ids)}]}}\n      to: {{ports: [{', '.join(ports)}]}}\n"
    )
    result = load({"f.yaml": text})
    assert isinstance(result, Revision | Problems)
