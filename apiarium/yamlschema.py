"""Typed YAML with line numbers: check a document against a schema of fields, collecting
every problem as ``FILE:LINE: message``; fill in ``${VAR}`` / ``${VAR:-default}``.

A schema is a tree of ``Field``s: ``Section`` (fixed keys; unknown ones are problems),
``MapOf`` (free-form names), ``ListOf``, and the scalars ``Str``, ``Num``, ``Bool``, ``Enum``.
``Ctx.lines`` maps each checked path to its line, for checks that span fields;
``Ctx.variables`` maps each path whose value used ``${VAR}`` to the variables' names (what
to set, an error text can say).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


# --------------------------------------------------------------------------- field checkers

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_constructor = yaml.constructor.SafeConstructor()
_KIND = {MappingNode: "a mapping", SequenceNode: "a list", ScalarNode: "a value"}


class Ctx:
    def __init__(self, file: Path, env: Mapping[str, str]):
        self.file, self.env = file, env
        self.problems: list[Problem] = []
        self.lines: dict[tuple, int] = {}
        self.variables: dict[tuple, tuple[str, ...]] = {}

    def err(self, node: Node, message: str) -> None:
        self.problems.append(Problem(str(self.file), node.start_mark.line + 1, message))

    def interpolate(self, node: Node, text: str) -> str:
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            value = self.env.get(name)
            if value or (value is not None and default is None):
                return value                 # as in the shell: empty means the default
            if default is None:
                self.err(node, f"environment variable {name} is not set "
                               f"(write ${{{name}:-}} to allow it to be empty)")
                return ""
            return default
        return _VAR.sub(sub, text)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


class Field:
    want = "a value"

    def __init__(self, default: Any = None):
        self.default = default

    def check(self, node: Node, ctx: Ctx, path: tuple) -> Any:
        ctx.lines[path] = node.start_mark.line + 1
        if not isinstance(node, ScalarNode):
            ctx.err(node, f"{_dotted(path)}: expected {self.want}, got {_KIND[type(node)]}")
            return self.default
        value = _constructor.construct_object(node)
        if isinstance(value, str) and "${" in value:
            ctx.variables[path] = tuple(m.group(1) for m in _VAR.finditer(value))
            value = ctx.interpolate(node, value)
            if not isinstance(self, Str):  # `port: ${PORT:-8080}` is a number once filled in
                value = yaml.safe_load(value) if value.strip() else None
        return self.convert(value, node, ctx, path)

    def convert(self, value: Any, node: Node, ctx: Ctx, path: tuple) -> Any:
        return value


class Str(Field):
    want = "a string"

    def convert(self, value: Any, node: Node, ctx: Ctx, path: tuple) -> Any:
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            ctx.err(node, f"{_dotted(path)}: expected a string, got {value!r}")
            return self.default
        return str(value)


class Num(Field):
    want = "a number"

    def __init__(self, default: Any = None, lo: float = 0, hi: float = float("inf"),
                 integer: bool = False):
        super().__init__(default)
        self.lo, self.hi, self.integer = lo, hi, integer

    def convert(self, value: Any, node: Node, ctx: Ctx, path: tuple) -> Any:
        kind = "a whole number" if self.integer else "a number"
        ok_type = int if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            ctx.err(node, f"{_dotted(path)}: expected {kind}, got {value!r}")
            return self.default
        if not self.lo <= value <= self.hi:
            ctx.err(node, f"{_dotted(path)}: {value} is out of range ({self.lo} to {self.hi})")
            return self.default
        return value


class Bool(Field):
    want = "true or false"

    def convert(self, value: Any, node: Node, ctx: Ctx, path: tuple) -> Any:
        if not isinstance(value, bool):
            ctx.err(node, f"{_dotted(path)}: expected true or false, got {value!r}")
            return self.default
        return value


class Enum(Str):
    def __init__(self, values: tuple[str, ...], default: Any = None):
        super().__init__(default)
        self.values = values

    def convert(self, value: Any, node: Node, ctx: Ctx, path: tuple) -> Any:
        value = super().convert(value, node, ctx, path)
        if value not in self.values:
            ctx.err(node, f"{_dotted(path)}: {value!r} is not one of {', '.join(self.values)}")
            return self.default
        return value


class ListOf(Field):
    def __init__(self, item: Field, default: Any = ()):
        super().__init__(default)
        self.item = item

    def check(self, node: Node, ctx: Ctx, path: tuple) -> tuple:
        ctx.lines[path] = node.start_mark.line + 1
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return tuple(self.default)
        if not isinstance(node, SequenceNode):
            ctx.err(node, f"{_dotted(path)}: expected a list, got {_KIND[type(node)]}")
            return tuple(self.default)
        return tuple(self.item.check(n, ctx, (*path, i)) for i, n in enumerate(node.value))


class Section(Field):
    """A mapping with a fixed set of keys; unknown keys are errors."""

    def __init__(self, fields: dict[str, Field], required: tuple[str, ...] = ()):
        super().__init__(None)
        self.fields, self.required = fields, required

    def defaults(self) -> dict:
        return {k: (f.defaults() if isinstance(f, Section) else f.default)
                for k, f in self.fields.items()}

    def check(self, node: Node, ctx: Ctx, path: tuple) -> dict:
        ctx.lines[path] = node.start_mark.line + 1
        out = self.defaults()
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            node = MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, MappingNode):
            ctx.err(node, f"{_dotted(path)}: expected a mapping, got {_KIND[type(node)]}")
            return out
        seen: set[str] = set()
        for knode, vnode in node.value:
            key = knode.value
            field = self.fields.get(key)
            if field is None:
                ctx.err(knode, f"unknown key {_dotted((*path, key))!r} "
                               f"(known keys: {', '.join(self.fields)})")
                continue
            seen.add(key)
            out[key] = field.check(vnode, ctx, (*path, key))
        for key in self.required:
            if key not in seen:
                ctx.err(node, f"{_dotted(path)}: missing required key {key!r}")
        return out


class MapOf(Field):
    """A mapping from free-form names (providers, model aliases) to one kind of value."""

    def __init__(self, item: Field):
        super().__init__({})
        self.item = item

    def check(self, node: Node, ctx: Ctx, path: tuple) -> dict:
        ctx.lines[path] = node.start_mark.line + 1
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return {}
        if not isinstance(node, MappingNode):
            ctx.err(node, f"{_dotted(path)}: expected a mapping, got {_KIND[type(node)]}")
            return {}
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            name = str(knode.value)
            if name in out:
                ctx.err(knode, f"{_dotted((*path, name))}: defined twice")
            ctx.lines[(*path, name, "")] = knode.start_mark.line + 1
            out[name] = self.item.check(vnode, ctx, (*path, name))
        return out


def parse(path: Path, schema: Section, env: Mapping[str, str],
          problems: list[Problem]) -> tuple[dict | None, Ctx]:
    ctx = Ctx(path, env)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(Problem(str(path), 0, f"cannot read the file: {exc.strerror or exc}"))
        return None, ctx
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        problems.append(Problem(str(path), line, f"invalid YAML: {exc.problem or exc}"))
        return None, ctx
    if node is None:  # an empty file: every default
        node = MappingNode("tag:yaml.org,2002:map", [], yaml.Mark(str(path), 0, 0, 0, None, 0),
                           None)
    data = schema.check(node, ctx, ())
    problems.extend(ctx.problems)
    return data, ctx
