"""Reading YAML while keeping line numbers, for `file:line: message` problems.

PyYAML's `safe_load` throws positions away. We `compose` the node tree instead and
read it with `NodeReader`, which records every problem against the line where it
is (a missing field points at the mapping that lacks it) and keeps reading, so an
operator sees every problem of a file in one run rather than one per commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import yaml

from trustmesh.policy.model import JsonValue, Problem

__all__ = ["Field", "NodeReader", "compose_documents"]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"

# Open structures (TrafficPolicy settings) are copied only this deep; YAML aliases can
# build cycles and a policy document never needs more.
_MAX_DEPTH = 32
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def compose_documents(text: str, file: str, problems: list[Problem]) -> Iterator[yaml.Node]:
    """Yield each non-empty document's root node; a syntax error becomes a problem and ends the file."""
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
                continue
            yield node
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        detail = exc.problem or exc.context or "invalid YAML"
        problems.append(Problem(file, line, f"YAML syntax error: {detail}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(file, 1, f"YAML syntax error: {exc}"))


@dataclass(frozen=True, slots=True)
class Field:
    """A mapping entry: the key's line (for 'unknown field') and the value node."""

    name: str
    key_line: int
    value: yaml.Node


class NodeReader:
    """Typed accessors over a composed YAML tree that report problems instead of raising.

    Every accessor returns None when the node is not what was asked for, after adding a
    problem naming `where` (a dotted path such as `spec.rules[0].to.ports`).
    """

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def mapping(
        self,
        node: yaml.Node,
        where: str,
        *,
        allowed: frozenset[str] | None,
        required: frozenset[str] = frozenset(),
        owner_line: int | None = None,
    ) -> dict[str, Field] | None:
        """The entries of a mapping; unknown (if `allowed` given), duplicate, missing fields are problems.

        A missing field is reported at `owner_line` (the line of the key that owns this mapping,
        `spec:`), else at the mapping's first line.
        """
        if not isinstance(node, yaml.MappingNode):
            self.problem(line_of(node), f"{where}: expected a mapping, got {_describe(node)}")
            return None
        fields: dict[str, Field] = {}
        for key_node, value_node in node.value:
            key_line = line_of(key_node)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                self.problem(key_line, f"{where}: field names must be strings, got {_describe(key_node)}")
                continue
            name = str(key_node.value)
            if name in fields:
                self.problem(key_line, f"{where}: duplicate field {name!r}")
                continue
            if allowed is not None and name not in allowed:
                known = ", ".join(sorted(allowed))
                self.problem(key_line, f"{where}: unknown field {name!r} (known fields: {known})")
                continue
            fields[name] = Field(name, key_line, value_node)
        for name in sorted(required - fields.keys()):
            self.problem(owner_line or line_of(node), f"{where}: missing field {name!r}")
        return fields

    def string(self, node: yaml.Node, where: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return str(node.value)
        self.problem(line_of(node), f"{where}: expected a string, got {_describe(node)}")
        return None

    def integer(self, node: yaml.Node, where: str) -> int | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _INT:
            value = _CONSTRUCTOR.construct_yaml_int(node)
            if isinstance(value, int):
                return value
        self.problem(line_of(node), f"{where}: expected an integer, got {_describe(node)}")
        return None

    def sequence(self, node: yaml.Node, where: str, *, non_empty: bool = True) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(line_of(node), f"{where}: expected a list, got {_describe(node)}")
            return None
        items = list(node.value)
        if non_empty and not items:
            self.problem(line_of(node), f"{where}: must not be empty (omit the field instead)")
            return None
        return items

    def plain(self, node: yaml.Node, where: str, depth: int = 0) -> JsonValue:
        """Copy an open structure as JSON-like data (used for reserved TrafficPolicy settings)."""
        if depth > _MAX_DEPTH:
            self.problem(line_of(node), f"{where}: nested deeper than {_MAX_DEPTH} levels")
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[str, JsonValue] = {}
            fields = self.mapping(node, where, allowed=None) or {}
            for name, entry in fields.items():
                out[name] = self.plain(entry.value, f"{where}.{name}", depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node)
        return None


def _scalar(node: yaml.ScalarNode) -> JsonValue:
    try:
        if node.tag == _INT:
            return int(_CONSTRUCTOR.construct_yaml_int(node))
        if node.tag == _FLOAT:
            return float(_CONSTRUCTOR.construct_yaml_float(node))
        if node.tag == _BOOL:
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
    except ValueError:  # an odd literal such as '0b' that resolves as a number but does not convert
        return str(node.value)
    if node.tag == _NULL:
        return None
    return str(node.value)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode):
        kind = {
            _STR: "string",
            _INT: "integer",
            _FLOAT: "number",
            _BOOL: "boolean",
            _NULL: "null",
        }.get(str(node.tag), "value")
        return f"{kind} {node.value!r}" if node.tag != _NULL else "null"
    return "an unknown node"
