"""`trustmesh policy ...` as a separate process: output, exit codes, files and lines."""

from __future__ import annotations

import json
from pathlib import Path

API = "spiffe://example.org/ns/default/sa/api"
WEB = "spiffe://example.org/ns/default/sa/web"
ETL = "spiffe://example.org/ns/batch/sa/etl"

POLICY = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: web-reads-api
spec:
  selector:
    spiffeIds: ["{API}"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["{WEB}"]
      to:
        methods: ["GET"]
        paths: ["/items", "/items/*"]
"""

DENY_ADMIN = """\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
spec:
  action: DENY
  rules:
    - to:
        paths: ["/items/admin"]
"""


def test_check_valid_directory(tmp_path: Path, tree, run_cli) -> None:
    tree(tmp_path / "repo", {"policies/api.yaml": POLICY})
    done = run_cli("check", "repo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ok: 1 authorization and 0 traffic policies in 1 files" in done.stdout


def test_check_reports_every_problem_as_file_line(tmp_path: Path, tree, run_cli) -> None:
    tree(
        tmp_path / "repo",
        {
            "policies/api.yaml": POLICY.replace("ALLOW", "PERMIT").replace('["GET"]', '["get"]'),
            "policies/dup.yaml": POLICY,
            "broken.yml": "a: [\n",
        },
    )
    done = run_cli("check", "repo", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines == [
        "repo/broken.yml:2: YAML syntax error: expected the node content, but found '<stream end>'",
        "repo/policies/api.yaml:8: spec.action: unknown action 'PERMIT' (expected ALLOW, DENY or AUDIT)",
        "repo/policies/api.yaml:13: spec.rules[0].to.methods[0]: bad method 'get' "
        "(HTTP methods are case-sensitive: write 'GET')",
    ]
    assert "3 problems" in done.stderr


def test_check_git_reads_committed_tree_only(git_repo, run_cli) -> None:
    git_repo.commit({"api.yaml": POLICY}, "good")
    git_repo.write({"api.yaml": "broken: ["})
    done = run_cli("check", "--git", str(git_repo.path), "--ref", "main", cwd=git_repo.path)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = git_repo.commit({"api.yaml": POLICY.replace("metadata:\n  name", "metadata:\n  nam")}, "bad")
    done = run_cli("check", "--git", str(git_repo.path), "--ref", bad, cwd=git_repo.path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "api.yaml:3: metadata: missing field 'name'",
        "api.yaml:4: metadata: unknown field 'nam' (known fields: labels, name)",
    ]


def test_check_missing_repository_is_one_line_error(tmp_path: Path, run_cli) -> None:
    done = run_cli("check", "--git", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"trustmesh: error: {tmp_path}: not a git repository"


def test_explain_allow_deny_and_default_deny(tmp_path: Path, tree, run_cli) -> None:
    tree(tmp_path, {"api.yaml": POLICY, "deny.yaml": DENY_ADMIN})
    base = ["explain", ".", "--source", WEB, "--destination", API, "--method", "GET"]
    allowed = run_cli(*base, "--path", "/items/7", "--json", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    body = json.loads(allowed.stdout)
    assert (body["decision"], body["policy"], body["rule"], body["reason"]) == (
        "ALLOW",
        "web-reads-api",
        0,
        "allow-rule",
    )
    assert body["location"] == "api.yaml:10"

    denied = json.loads(run_cli(*base, "--path", "/items/x/../admin", "--json", cwd=tmp_path).stdout)
    assert (denied["decision"], denied["policy"], denied["reason"]) == ("DENY", "deny-admin", "deny-rule")

    text = run_cli(*base, "--path", "/other", cwd=tmp_path)
    assert "decision: DENY" in text.stdout
    assert "reason:   default-deny" in text.stdout
    assert (
        "policies selecting spiffe://example.org/ns/default/sa/api: web-reads-api, deny-admin" in text.stdout
    )

    nobody = run_cli("explain", ".", "--source", WEB, "--destination", ETL, "--port", "5432", cwd=tmp_path)
    assert "reason:   no-allow-policy" in nobody.stdout
    assert "accepts nothing" in nobody.stdout


def test_explain_rejects_bad_spiffe_id(tmp_path: Path, tree, run_cli) -> None:
    tree(tmp_path, {"api.yaml": POLICY})
    done = run_cli("explain", ".", "--source", "web", "--destination", API, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("trustmesh: error: --source:")


EXPECTATIONS = f"""\
- name: web reads items
  source: {WEB}
  destination: {API}
  request: {{method: GET, path: /items/1}}
  expect: ALLOW
- name: web cannot write
  source: {WEB}
  destination: {API}
  request: {{method: POST, path: /items/1}}
  expect: DENY
- source: {ETL}
  destination: {API}
  tcp: {{port: 9001}}
  expect: DENY
"""


def test_test_command_passes_and_reports_failures(tmp_path: Path, tree, run_cli) -> None:
    tree(tmp_path, {"policies/api.yaml": POLICY, "tests/api.test.yaml": EXPECTATIONS})
    done = run_cli("test", ".", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "3 passed, 0 failed"

    # Someone widens the policy: the expectation that POST is denied now fails.
    tree(tmp_path, {"policies/api.yaml": POLICY.replace('["GET"]', '["GET", "POST"]')})
    done = run_cli("test", ".", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "FAIL tests/api.test.yaml:6: web cannot write",
        "     expected DENY, got ALLOW (allow-rule: web-reads-api rule 0 (policies/api.yaml:10))",
        "2 passed, 1 failed",
    ]


def test_test_command_reports_bad_expectation_files(tmp_path: Path, tree, run_cli) -> None:
    tree(
        tmp_path,
        {"api.yaml": POLICY, "a.test.yaml": f"- source: {WEB}\n  destination: {API}\n  expect: MAYBE\n"},
    )
    done = run_cli("test", ".", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "a.test.yaml:1: case 0: give exactly one of 'request' (HTTP) or 'tcp'",
        "a.test.yaml:3: case 0.expect: expected ALLOW or DENY, got 'MAYBE'",
    ]


def _event(source: str, method: str, path: str, decision: str) -> str:
    return json.dumps(
        {
            "event": "policy_decision",
            "decision": decision,
            "reason": "x",
            "policy": None,
            "rule": None,
            "revision": "r",
            "source": source,
            "destination": API,
            "method": method,
            "path": path,
            "port": 9001,
            "protocol": "http",
            "level": "info",
        }
    )


def test_whatif_lists_newly_denied_and_allowed_flows(git_repo, tmp_path: Path, run_cli) -> None:
    before = git_repo.commit({"api.yaml": POLICY}, "current")
    after = git_repo.commit(
        {"api.yaml": POLICY.replace(f'"{WEB}"', f'"{WEB}", "{ETL}"'), "deny.yaml": DENY_ADMIN}, "proposed"
    )
    log = [
        *[_event(WEB, "GET", "/items/admin", "ALLOW")] * 3,
        *[_event(WEB, "GET", "/items/1?token=x", "ALLOW")] * 5,
        *[_event(ETL, "GET", "/items", "DENY")] * 2,
        "not json at all",
        json.dumps({"event": "http_request", "path": "/"}),
        json.dumps({"event": "policy_decision", "destination": API}),
    ]
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("\n".join(log) + "\n")
    args = [
        "whatif",
        "--git",
        str(git_repo.path),
        "--from",
        before,
        "--to",
        "main",
        "--decisions",
        str(decisions),
    ]
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"replayed 10 decisions: {before[:12]} ")
    assert "skipped 2 other lines, 1 malformed events" in lines[0]
    assert lines[1] == "newly denied: 1 flows, 3 requests"
    assert lines[2].split() == [
        "3",
        WEB,
        "->",
        API,
        "GET",
        "/items/admin",
        "port",
        "9001",
        "[deny-rule:",
        "deny-admin",
        "rule",
        "0",
        "(deny.yaml:8)]",
    ]
    assert lines[3] == "newly allowed: 1 flows, 2 requests"
    assert "[allow-rule: web-reads-api rule 0 (api.yaml:10)]" in lines[4] and ETL in lines[4]

    report = json.loads(run_cli(*args, "--json", cwd=tmp_path).stdout)
    assert report["to"] == after
    assert [(c["path"], c["count"]) for c in report["newly_denied"]] == [("/items/admin", 3)]
    assert report["newly_denied"][0]["after"]["policy"] == "deny-admin"


def test_whatif_names_the_allow_rule_that_stopped_matching(git_repo, tmp_path: Path, run_cli) -> None:
    before = git_repo.commit({"api.yaml": POLICY}, "current")
    git_repo.commit({"api.yaml": POLICY.replace('"/items", "/items/*"', '"/items"')}, "narrow paths")
    decisions = tmp_path / "d.jsonl"
    decisions.write_text(_event(WEB, "GET", "/items/1", "ALLOW") + "\n")
    repo = str(git_repo.path)
    done = run_cli(
        "whatif", "--git", repo, "--from", before, "--to", "main", "--decisions", str(decisions), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "[default-deny; was allowed by allow-rule: web-reads-api rule 0 (api.yaml:10)]" in done.stdout
