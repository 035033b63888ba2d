"""Expectation files (`*.test.yaml`): a policy repository's own test suite.

Each file holds one or more YAML documents, each a list of cases:

    - name: web reads items                      # optional, shown in failures
      source: spiffe://example.org/ns/default/sa/web
      destination: spiffe://example.org/ns/default/sa/api
      request: {method: GET, path: /items/1, port: 9001}    # an HTTP request ...
      expect: ALLOW
    - source: spiffe://example.org/ns/batch/sa/etl
      destination: spiffe://example.org/ns/db/sa/postgres
      tcp: {port: 5432}                          # ... or a TCP connection
      expect: DENY

`trustmesh policy test` runs them against the policy in the same tree, so a
change that breaks an expectation fails the pre-commit hook and CI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import yaml

from trustmesh.identity.spiffe_id import InvalidSpiffeId, SpiffeId
from trustmesh.policy.engine import Decision, PolicyEngine, Request
from trustmesh.policy.loader import is_expectation_file
from trustmesh.policy.model import Location, Problem, Problems
from trustmesh.policy.yamltree import NodeReader, compose_documents, line_of

__all__ = ["Case", "CaseResult", "load_cases", "run_cases"]

_CASE = frozenset({"name", "source", "destination", "request", "tcp", "expect"})
_REQUEST = frozenset({"method", "path", "port"})
_TCP = frozenset({"port"})


@dataclass(frozen=True, slots=True)
class Case:
    name: str | None
    location: Location
    request: Request
    expect: str

    def title(self) -> str:
        r = self.request
        what = f"tcp port {r.port}" if r.protocol == "tcp" else f"{r.method or '*'} {r.path or '*'}"
        return self.name or f"{r.source} -> {r.destination} {what}"


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    decision: Decision

    @property
    def passed(self) -> bool:
        return self.decision.decision == self.case.expect


def load_cases(files: Mapping[str, bytes]) -> list[Case] | Problems:
    """Every case of every expectation file in `files`, or every problem in them."""
    problems: list[Problem] = []
    cases: list[Case] = []
    for path in sorted(p for p in files if is_expectation_file(p)):
        try:
            text = files[path].decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(path, 1, f"not UTF-8 text: {exc.reason}"))
            continue
        reader = NodeReader(path, problems)
        for root in compose_documents(text, path, problems):
            for i, node in enumerate(reader.sequence(root, "cases") or []):
                case = _case(reader, node, f"case {i}")
                if case is not None:
                    cases.append(case)
    if problems:
        return Problems(tuple(sorted(problems, key=lambda p: (p.file, p.line))))
    return cases


def _spiffe_id(reader: NodeReader, node: yaml.Node, where: str) -> str | None:
    text = reader.string(node, where)
    if text is None:
        return None
    try:
        SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        reader.problem(line_of(node), f"{where}: bad SPIFFE ID {text!r}: {exc}")
        return None
    return text


def _case(reader: NodeReader, node: yaml.Node, where: str) -> Case | None:
    before = len(reader.problems)
    fields = reader.mapping(
        node, where, allowed=_CASE, required=frozenset({"source", "destination", "expect"})
    )
    if fields is None:
        return None
    name = reader.string(fields["name"].value, f"{where}.name") if "name" in fields else None
    source = _spiffe_id(reader, fields["source"].value, f"{where}.source") if "source" in fields else None
    destination = (
        _spiffe_id(reader, fields["destination"].value, f"{where}.destination")
        if "destination" in fields
        else None
    )
    expect = reader.string(fields["expect"].value, f"{where}.expect") if "expect" in fields else None
    if expect is not None and expect not in ("ALLOW", "DENY"):
        reader.problem(
            line_of(fields["expect"].value), f"{where}.expect: expected ALLOW or DENY, got {expect!r}"
        )
    method: str | None = None
    path: str | None = None
    port: int | None = None
    if ("request" in fields) == ("tcp" in fields):
        reader.problem(line_of(node), f"{where}: give exactly one of 'request' (HTTP) or 'tcp'")
    elif "request" in fields:
        request = reader.mapping(fields["request"].value, f"{where}.request", allowed=_REQUEST) or {}
        if "method" in request:
            method = reader.string(request["method"].value, f"{where}.request.method")
        if "path" in request:
            path = reader.string(request["path"].value, f"{where}.request.path")
        if "port" in request:
            port = reader.integer(request["port"].value, f"{where}.request.port")
        if not request.keys() & {"method", "path"}:
            reader.problem(line_of(fields["request"].value), f"{where}.request: name a method or a path")
    else:
        tcp = reader.mapping(fields["tcp"].value, f"{where}.tcp", allowed=_TCP) or {}
        if "port" in tcp:
            port = reader.integer(tcp["port"].value, f"{where}.tcp.port")
    if len(reader.problems) != before or source is None or destination is None or expect is None:
        return None
    return Case(
        name, Location(reader.file, line_of(node)), Request(source, destination, method, path, port), expect
    )


def run_cases(engine: PolicyEngine, cases: Iterable[Case]) -> list[CaseResult]:
    return [CaseResult(case, engine.decide_request(case.request)) for case in cases]
