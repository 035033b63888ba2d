"""`trustmesh policy`: check, explain, test and whatif for a policy repository.

Each command calls the same functions the control plane and sidecars use
(loader, engine, git source); nothing here interprets policy on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from trustmesh.cli.errors import CliError
from trustmesh.identity.spiffe_id import InvalidSpiffeId, SpiffeId
from trustmesh.policy.engine import Decision, PolicyEngine
from trustmesh.policy.expectations import load_cases, run_cases
from trustmesh.policy.model import Problems, Revision
from trustmesh.policy.source import PolicySourceError, Snapshot, read_dir, read_git
from trustmesh.policy.whatif import FlowChange, replay


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("policy", help="validate, explain and test authorization policy")
    commands = group.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check", help="validate policy files; print every problem as file:line: message"
    )
    _source_arguments(check)
    check.set_defaults(func=_check)

    explain = commands.add_parser("explain", help="the decision for one request, and the rule that made it")
    _source_arguments(explain)
    explain.add_argument("--source", required=True, help="caller's SPIFFE ID")
    explain.add_argument("--destination", required=True, help="called workload's SPIFFE ID")
    explain.add_argument("--method", help="HTTP method (omit --method and --path for a TCP connection)")
    explain.add_argument("--path", help="HTTP request path (query string ignored)")
    explain.add_argument("--port", type=int, help="inbound port")
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    explain.set_defaults(func=_explain)

    test = commands.add_parser("test", help="run the expectation files (*.test.yaml) against the policy")
    _source_arguments(test)
    test.add_argument("-v", "--verbose", action="store_true", help="also list passing cases")
    test.set_defaults(func=_test)

    whatif = commands.add_parser("whatif", help="replay recorded decisions against two commits; list changes")
    whatif.add_argument("--git", required=True, metavar="REPO", help="policy git repository")
    whatif.add_argument("--from", dest="from_ref", required=True, metavar="REF", help="current policy")
    whatif.add_argument("--to", dest="to_ref", required=True, metavar="REF", help="proposed policy")
    whatif.add_argument(
        "--decisions", required=True, metavar="FILE", help="decision log (JSON lines; '-' for stdin)"
    )
    whatif.add_argument("--json", action="store_true", help="print the report as JSON")
    whatif.set_defaults(func=_whatif)


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy_path", nargs="?", metavar="PATH", help="policy directory or file")
    parser.add_argument(
        "--git", metavar="REPO", help="read the committed tree of this git repository instead"
    )
    parser.add_argument("--ref", default="main", help="git ref to read with --git (default: main)")


def _snapshot(args: argparse.Namespace) -> tuple[Snapshot, str]:
    """The files to work on, and the prefix that makes their names usable from the current directory."""
    if (args.policy_path is None) == (args.git is None):
        raise CliError("give either PATH or --git REPO")
    try:
        if args.git is not None:
            return read_git(args.git, args.ref), ""
        path = Path(args.policy_path)
        snapshot = read_dir(path)
    except PolicySourceError as exc:
        raise CliError(str(exc)) from exc
    if path.is_file():
        return snapshot, f"{path.parent}/" if str(path.parent) != "." else ""
    root = str(args.policy_path)
    return snapshot, f"{root.rstrip('/')}/" if root not in (".", "./") else ""


def _print_problems(problems: Problems, prefix: str) -> None:
    for problem in problems:
        print(f"{prefix}{problem}")
    print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}", file=sys.stderr)


def _revision(args: argparse.Namespace) -> tuple[Revision | Problems, Snapshot, str]:
    snapshot, prefix = _snapshot(args)
    return snapshot.load(), snapshot, prefix


def _check(args: argparse.Namespace) -> int:
    loaded, _, prefix = _revision(args)
    if isinstance(loaded, Problems):
        _print_problems(loaded, prefix)
        return 1
    print(
        f"ok: {len(loaded.authorization)} authorization and {len(loaded.traffic)} traffic policies "
        f"in {len(loaded.files)} files (revision {loaded.id})"
    )
    return 0


def _spiffe_id(text: str, flag: str) -> str:
    try:
        return str(SpiffeId.parse(text))
    except InvalidSpiffeId as exc:
        raise CliError(f"{flag}: {exc}") from exc


def _explain(args: argparse.Namespace) -> int:
    source = _spiffe_id(args.source, "--source")
    destination = _spiffe_id(args.destination, "--destination")
    loaded, _, prefix = _revision(args)
    if isinstance(loaded, Problems):
        _print_problems(loaded, prefix)
        return 1
    engine = PolicyEngine(loaded)
    decision = engine.decide(source, destination, args.method, args.path, args.port)
    if args.json:
        print(json.dumps(decision.to_json()))
        return 0
    print(f"decision: {decision.decision}")
    print(f"reason:   {decision.reason}")
    if decision.policy is not None:
        print(f"policy:   {decision.policy}")
        print(f"rule:     {decision.rule} ({prefix}{decision.location})")
    elif decision.reason == "no-allow-policy":
        print(f"          no ALLOW policy selects {destination}: it accepts nothing (zero trust)")
    elif decision.reason == "default-deny":
        names = ", ".join(p.name for p in engine.selecting(destination))
        print(f"          no rule matched; policies selecting {destination}: {names}")
    elif decision.reason == "ambiguous-path":
        print("          the path has no single normal form; the sidecar answers 400")
    for match in decision.audit:
        print(f"audit:    {match.policy} rule {match.rule} ({prefix}{match.location})")
    print(f"revision: {decision.revision}")
    return 0


def _describe(decision: Decision, prefix: str) -> str:
    if decision.policy is None:
        return decision.reason
    return f"{decision.reason}: {decision.policy} rule {decision.rule} ({prefix}{decision.location})"


def _test(args: argparse.Namespace) -> int:
    loaded, snapshot, prefix = _revision(args)
    if isinstance(loaded, Problems):
        _print_problems(loaded, prefix)
        return 1
    cases = load_cases(snapshot.files)
    if isinstance(cases, Problems):
        _print_problems(cases, prefix)
        return 1
    if not cases:
        raise CliError("no expectation cases found (files named *.test.yaml)")
    results = run_cases(PolicyEngine(loaded), cases)
    failed = 0
    for result in results:
        case = result.case
        if result.passed:
            if args.verbose:
                print(f"PASS {prefix}{case.location}: {case.title()}")
            continue
        failed += 1
        print(f"FAIL {prefix}{case.location}: {case.title()}")
        got = f"{result.decision.decision} ({_describe(result.decision, prefix)})"
        print(f"     expected {case.expect}, got {got}")
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _read_lines(path: str) -> Iterable[str]:
    if path == "-":
        return sys.stdin.readlines()
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.readlines()
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from exc


def _engine_at(repo: str, ref: str) -> PolicyEngine:
    try:
        loaded = read_git(repo, ref).load()
    except PolicySourceError as exc:
        raise CliError(str(exc)) from exc
    if isinstance(loaded, Problems):
        _print_problems(loaded, "")
        raise CliError(f"the policy at {ref} is invalid; fix it before comparing")
    return PolicyEngine(loaded)


def _flow(change: FlowChange) -> str:
    r = change.request
    what = f"tcp port {r.port}" if r.protocol == "tcp" else f"{r.method} {r.path}"
    if r.protocol == "http" and r.port is not None:
        what += f" port {r.port}"
    return f"{r.source} -> {r.destination} {what}"


def _whatif(args: argparse.Namespace) -> int:
    before = _engine_at(args.git, args.from_ref)
    after = _engine_at(args.git, args.to_ref)
    report = replay(_read_lines(args.decisions), before, after)
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    print(
        f"replayed {report.events} decisions: {report.from_revision[:12]} ({args.from_ref}) -> "
        f"{report.to_revision[:12]} ({args.to_ref}); skipped {report.skipped_lines} other lines, "
        f"{report.malformed_events} malformed events"
    )
    if report.recorded_mismatches:
        print(
            f"note: {report.recorded_mismatches} recorded decisions differ from a replay at {args.from_ref}"
        )
    for title, changes in (("newly denied", report.newly_denied), ("newly allowed", report.newly_allowed)):
        total = sum(c.count for c in changes)
        print(f"{title}: {len(changes)} flows, {total} requests")
        for change in changes:
            responsible = change.responsible
            if responsible is change.before:
                why = f"{change.after.reason}; was allowed by {_describe(responsible, '')}"
            else:
                why = _describe(responsible, "")
            print(f"  {change.count:>6}  {_flow(change)}  [{why}]")
    return 0
