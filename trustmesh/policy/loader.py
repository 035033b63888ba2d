"""Policy files -> validated `Revision`, or every `Problem` found (sans I/O).

The caller gathers file contents (from a git tree or a directory, see
`trustmesh.policy.source`) and hands them here as a mapping of relative path to
bytes. Which files count: `*.yaml` and `*.yml` anywhere, except expectation files
(`*.test.yaml`, `*.test.yml`), which `trustmesh policy test` reads instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from trustmesh.identity.spiffe_id import InvalidSpiffeId, SpiffeId
from trustmesh.policy.model import (
    API_VERSION,
    Action,
    AuthorizationPolicy,
    JsonValue,
    Location,
    Problem,
    Problems,
    Revision,
    Rule,
    TrafficPolicy,
)
from trustmesh.policy.paths import AmbiguousPath, normalize_path
from trustmesh.policy.traffic import SPEC_FIELDS as _TRAFFIC_SPEC
from trustmesh.policy.traffic import read_traffic_spec
from trustmesh.policy.yamltree import Field, NodeReader, compose_documents, line_of

__all__ = [
    "check_path_pattern",
    "check_spiffe_pattern",
    "is_expectation_file",
    "is_policy_file",
    "load_revision",
]

KINDS = ("AuthorizationPolicy", "TrafficPolicy")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")
_TOP = frozenset({"apiVersion", "kind", "metadata", "spec"})
_METADATA = frozenset({"name", "labels"})
_AUTHZ_SPEC = frozenset({"selector", "action", "rules"})
_SELECTOR = frozenset({"spiffeIds"})
_RULE = frozenset({"from", "to"})
_FROM = frozenset({"spiffeIds"})
_TO = frozenset({"methods", "paths", "ports"})


def is_expectation_file(path: str) -> bool:
    return path.endswith((".test.yaml", ".test.yml"))


def is_policy_file(path: str) -> bool:
    return path.endswith((".yaml", ".yml")) and not is_expectation_file(path)


def check_spiffe_pattern(text: str) -> str | None:
    """Why `text` is not a valid SPIFFE ID pattern (exact ID, `spiffe://td/prefix/*`, `*`), or None."""
    if text == "*":
        return None
    exact = text[:-2] if text.endswith("/*") else text
    if "*" in exact:
        return f"bad SPIFFE ID pattern {text!r}: '*' is allowed only alone or as a final '/*'"
    try:
        SpiffeId.parse(exact)
    except InvalidSpiffeId as exc:
        return f"bad SPIFFE ID {text!r}: {exc}"
    return None


def check_path_pattern(text: str) -> str | None:
    """Why `text` is not a valid path pattern (exact normalised path, `/prefix/*`, `*`), or None.

    Paths in policies must already be in the form `normalize_path` produces, since that
    is the only form requests are matched in; anything else would silently never match.
    """
    if text == "*":
        return None
    exact = text[:-1] if text.endswith("/*") else text
    if "*" in exact:
        return f"bad path pattern {text!r}: '*' is allowed only alone or as a final '/*'"
    if "?" in exact:
        return f"bad path {text!r}: query strings are not part of path matching"
    try:
        normal = normalize_path(exact)
    except AmbiguousPath as exc:
        return f"bad path {text!r}: {exc}"
    if normal != exact:
        return f"path {text!r} is not in normal form; write {normal + text[len(exact) :]!r}"
    return None


def load_revision(
    files: Mapping[str, bytes], *, revision_id: str, message: str | None = None
) -> Revision | Problems:
    """Validate every policy file in `files` (relative path -> content) into one revision.

    Files that are not policy files (see `is_policy_file`) are ignored, so callers may
    pass a whole tree.
    """
    problems: list[Problem] = []
    authorization: list[AuthorizationPolicy] = []
    traffic: list[TrafficPolicy] = []
    first_seen: dict[tuple[str, str], Location] = {}
    traffic_for: dict[str, Location] = {}
    policy_files = sorted(path for path in files if is_policy_file(path))
    for path in policy_files:
        try:
            text = files[path].decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(path, 1, f"not UTF-8 text: {exc.reason}"))
            continue
        reader = NodeReader(path, problems)
        for root in compose_documents(text, path, problems):
            loaded = _document(reader, root)
            if loaded is None:
                continue
            kind = "AuthorizationPolicy" if isinstance(loaded, AuthorizationPolicy) else "TrafficPolicy"
            earlier = first_seen.get((kind, loaded.name))
            if earlier is not None:
                reader.problem(
                    loaded.location.line,
                    f"duplicate {kind} name {loaded.name!r} (first defined at {earlier})",
                )
                continue
            if isinstance(loaded, TrafficPolicy):
                # Two sets of settings for one service would make the outcome depend on file order.
                other = traffic_for.get(loaded.service)
                if other is not None:
                    reader.problem(
                        loaded.location.line,
                        f"a TrafficPolicy for {loaded.service} is already defined at {other}",
                    )
                    continue
                traffic_for[loaded.service] = loaded.location
            first_seen[(kind, loaded.name)] = loaded.location
            if isinstance(loaded, AuthorizationPolicy):
                authorization.append(loaded)
            else:
                traffic.append(loaded)
    if problems:
        return Problems(tuple(sorted(problems, key=lambda p: (p.file, p.line))))
    return Revision(
        id=revision_id,
        files=tuple(policy_files),
        authorization=tuple(authorization),
        traffic=tuple(traffic),
        message=message,
    )


def _document(reader: NodeReader, root: yaml.Node) -> AuthorizationPolicy | TrafficPolicy | None:
    """One document, or None after recording its problems."""
    before = len(reader.problems)
    top = reader.mapping(root, "document", allowed=_TOP, required=_TOP)
    if top is None:
        return None
    api_version = reader.string(top["apiVersion"].value, "apiVersion") if "apiVersion" in top else None
    if api_version is not None and api_version != API_VERSION:
        reader.problem(
            line_of(top["apiVersion"].value), f"unknown apiVersion {api_version!r} (expected {API_VERSION!r})"
        )
    kind = reader.string(top["kind"].value, "kind") if "kind" in top else None
    if kind is not None and kind not in KINDS:
        reader.problem(
            line_of(top["kind"].value),
            f"unknown kind {kind!r} (expected {' or '.join(repr(k) for k in KINDS)})",
        )
        kind = None
    name, labels, name_line = _metadata(reader, top["metadata"]) if "metadata" in top else (None, {}, 0)
    if kind is None or "spec" not in top:
        return None
    location = Location(reader.file, name_line or line_of(root))
    spec = top["spec"]
    loaded: AuthorizationPolicy | TrafficPolicy | None
    if kind == "AuthorizationPolicy":
        loaded = _authorization(reader, spec, name, labels, location)
    else:
        loaded = _traffic(reader, spec, name, location)
    if len(reader.problems) != before:
        return None
    return loaded


def _metadata(reader: NodeReader, entry: Field) -> tuple[str | None, dict[str, str], int]:
    fields = reader.mapping(
        entry.value, "metadata", allowed=_METADATA, required=frozenset({"name"}), owner_line=entry.key_line
    )
    if fields is None:
        return None, {}, 0
    name: str | None = None
    line = 0
    if "name" in fields:
        line = line_of(fields["name"].value)
        name = reader.string(fields["name"].value, "metadata.name")
        if name is not None and (len(name) > 253 or not _NAME.fullmatch(name)):
            reader.problem(
                line, f"metadata.name: {name!r} must be lower-case letters, digits, '-' and '.' (at most 253)"
            )
            name = None
    labels: dict[str, str] = {}
    if "labels" in fields:
        entries = reader.mapping(fields["labels"].value, "metadata.labels", allowed=None) or {}
        for key, entry in entries.items():
            value = reader.string(entry.value, f"metadata.labels.{key}")
            if value is not None:
                labels[key] = value
    return name, labels, line


def _spiffe_patterns(reader: NodeReader, node: yaml.Node, where: str) -> tuple[str, ...] | None:
    items = reader.sequence(node, where)
    if items is None:
        return None
    out: list[str] = []
    for i, item in enumerate(items):
        text = reader.string(item, f"{where}[{i}]")
        if text is None:
            continue
        error = check_spiffe_pattern(text)
        if error is not None:
            reader.problem(line_of(item), f"{where}[{i}]: {error}")
            continue
        out.append(text)
    return tuple(out)


def _authorization(
    reader: NodeReader, entry: Field, name: str | None, labels: dict[str, str], location: Location
) -> AuthorizationPolicy | None:
    required = frozenset({"action", "rules"})
    spec = reader.mapping(
        entry.value, "spec", allowed=_AUTHZ_SPEC, required=required, owner_line=entry.key_line
    )
    if spec is None:
        return None
    selector: tuple[str, ...] | None = None
    if "selector" in spec:
        fields = reader.mapping(
            spec["selector"].value, "spec.selector", allowed=_SELECTOR, required=_SELECTOR
        )
        if fields and "spiffeIds" in fields:
            selector = _spiffe_patterns(reader, fields["spiffeIds"].value, "spec.selector.spiffeIds")
    action: Action | None = None
    if "action" in spec:
        text = reader.string(spec["action"].value, "spec.action")
        if text is not None:
            try:
                action = Action(text)
            except ValueError:
                reader.problem(
                    line_of(spec["action"].value),
                    f"spec.action: unknown action {text!r} (expected ALLOW, DENY or AUDIT)",
                )
    rules: list[Rule] = []
    if "rules" in spec:
        for i, item in enumerate(reader.sequence(spec["rules"].value, "spec.rules") or []):
            rule = _rule(reader, item, f"spec.rules[{i}]")
            if rule is not None:
                rules.append(rule)
    if name is None or action is None:
        return None
    return AuthorizationPolicy(name, action, selector, tuple(rules), location, labels)


def _rule(reader: NodeReader, node: yaml.Node, where: str) -> Rule | None:
    fields = reader.mapping(node, where, allowed=_RULE)
    if fields is None:
        return None
    sources: tuple[str, ...] | None = None
    if "from" in fields:
        source = reader.mapping(
            fields["from"].value,
            f"{where}.from",
            allowed=_FROM,
            required=_FROM,
            owner_line=fields["from"].key_line,
        )
        if source and "spiffeIds" in source:
            sources = _spiffe_patterns(reader, source["spiffeIds"].value, f"{where}.from.spiffeIds")
    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    ports: tuple[int, ...] | None = None
    if "to" in fields:
        to_node = fields["to"].value
        to = reader.mapping(to_node, f"{where}.to", allowed=_TO)
        if to is not None and not to:
            reader.problem(line_of(to_node), f"{where}.to: name at least one of methods, paths, ports")
        to = to or {}
        if "methods" in to:
            methods = _methods(reader, to["methods"].value, f"{where}.to.methods")
        if "paths" in to:
            paths = _paths(reader, to["paths"].value, f"{where}.to.paths")
        if "ports" in to:
            ports = _ports(reader, to["ports"].value, f"{where}.to.ports")
    return Rule(_location(reader, node), sources, methods, paths, ports)


def _location(reader: NodeReader, node: yaml.Node) -> Location:
    return Location(reader.file, line_of(node))


def _methods(reader: NodeReader, node: yaml.Node, where: str) -> tuple[str, ...] | None:
    out: list[str] = []
    for i, item in enumerate(reader.sequence(node, where) or []):
        text = reader.string(item, f"{where}[{i}]")
        if text is None:
            continue
        if not _METHOD.fullmatch(text):
            reader.problem(
                line_of(item),
                f"{where}[{i}]: bad method {text!r} (HTTP methods are case-sensitive: write 'GET')",
            )
            continue
        out.append(text)
    return tuple(out)


def _paths(reader: NodeReader, node: yaml.Node, where: str) -> tuple[str, ...] | None:
    out: list[str] = []
    for i, item in enumerate(reader.sequence(node, where) or []):
        text = reader.string(item, f"{where}[{i}]")
        if text is None:
            continue
        error = check_path_pattern(text)
        if error is not None:
            reader.problem(line_of(item), f"{where}[{i}]: {error}")
            continue
        out.append(text)
    return tuple(out)


def _ports(reader: NodeReader, node: yaml.Node, where: str) -> tuple[int, ...] | None:
    out: list[int] = []
    for i, item in enumerate(reader.sequence(node, where) or []):
        port = reader.integer(item, f"{where}[{i}]")
        if port is None:
            continue
        if not 1 <= port <= 65535:
            reader.problem(line_of(item), f"{where}[{i}]: port {port} is outside 1-65535")
            continue
        out.append(port)
    return tuple(out)


def _traffic(reader: NodeReader, entry: Field, name: str | None, location: Location) -> TrafficPolicy | None:
    """Timeouts, retries, outlier detection and balancing for calls to `spec.service`."""
    spec = reader.mapping(
        entry.value, "spec", allowed=_TRAFFIC_SPEC, required=frozenset({"service"}), owner_line=entry.key_line
    )
    if spec is None:
        return None
    service: str | None = None
    if "service" in spec:
        service = reader.string(spec["service"].value, "spec.service")
        if service is not None:
            try:
                SpiffeId.parse(service)
            except InvalidSpiffeId as exc:
                reader.problem(
                    line_of(spec["service"].value), f"spec.service: bad SPIFFE ID {service!r}: {exc}"
                )
                service = None
    typed = read_traffic_spec(reader, spec)
    settings: dict[str, JsonValue] = {
        key: reader.plain(entry.value, f"spec.{key}") for key, entry in spec.items() if key != "service"
    }
    if name is None or service is None:
        return None
    return TrafficPolicy(name, service, settings, location, typed)
