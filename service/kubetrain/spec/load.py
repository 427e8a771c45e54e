"""Text -> TrainingJob, with every problem named by field path, given value, allowed values and YAML line."""

from __future__ import annotations

import copy
import difflib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .job import TrainingJob

_TYPE_LOC = re.compile(
    r"^(function-\w+|literal\[|list\[|dict\[|tuple\[|json-or-python|str$|int$|float$|bool$|none$)"
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (dotted path, YAML line) and why."""

    path: str
    message: str
    line: int | None = None

    def render(self, source: str = "") -> str:
        where = f"{source}:{self.line}: " if source and self.line else (f"{source}: " if source else "")
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class SpecError(ValueError):
    """A spec that cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[Problem], source: str = ""):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(p.render(source) for p in problems))


# Limits that keep hostile documents (alias bombs, deep nesting, huge scalars) a fast, clear 4xx.
MAX_BYTES = 1 << 20  # a whole document
MAX_SCALAR = 64 << 10  # one string or number
MAX_DEPTH = 64  # nested mappings/sequences
MAX_NODES = 100_000  # nodes after expanding every alias (a billion-laughs bomb has ~10^9)


class _Hostile(Exception):
    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message, self.line = message, line


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, deep nesting and huge scalars while composing."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Hostile(
                    f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark.line + 1
                )
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.ScalarNode) and len(node.value) > MAX_SCALAR:
            raise _Hostile(
                f"a value of {len(node.value)} characters (at most {MAX_SCALAR})", node.start_mark.line + 1
            )
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            line = key.start_mark.line + 1
            if key.value in seen:
                raise _Hostile(f"duplicate key {key.value!r} (first at line {seen[key.value]})", line)
            seen[key.value] = line
        return node


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Nodes the document has once every alias is expanded (shared nodes counted per use)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_NODES + 1  # a cycle (recursive alias) counts as too big
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = size = min(size, MAX_NODES + 1)
    return size


def _check_size(text: str, source: str) -> None:
    if len(text) > MAX_BYTES:
        raise SpecError(
            [Problem("", f"the document is {len(text)} bytes; at most {MAX_BYTES} are accepted")], source
        )


def parse_yaml(text: str, source: str = "") -> tuple[Any, dict[tuple, int]]:
    """Parse one YAML document; return the data and a map from key path to 1-based line number.

    Hostile input (over MAX_BYTES, aliases expanding past MAX_NODES, nesting past MAX_DEPTH, a scalar
    over MAX_SCALAR, duplicate keys) is a SpecError, raised before anything expands it.
    """
    _check_size(text, source)
    loader = _GuardedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise _Hostile(f"the document expands to more than {MAX_NODES} values (aliases)", 1)
        data = loader.construct_document(node) if node is not None else None
        _check_tree(data, 0)  # aliases can nest nodes deeper than the text does
        lines: dict[tuple, int] = {}
        _index_lines(node, (), lines)
    except _Hostile as e:
        raise SpecError([Problem("", e.message, e.line)], source) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError([Problem("", f"YAML syntax error: {e.problem or e}", line)], source) from None
    except yaml.YAMLError as e:
        raise SpecError([Problem("", f"YAML error: {e}")], source) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. an int of 5,000 digits
        raise SpecError([Problem("", f"YAML value error: {str(e)[:200]}")], source) from None
    finally:
        loader.dispose()
    return data, lines


def parse_json(text: str, source: str = "") -> Any:
    """Parse a JSON document with the same limits as parse_yaml (size, depth, scalar size, duplicate keys)."""
    _check_size(text, source)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise _Hostile(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        _json_depth(text)
        data = json.loads(text, object_pairs_hook=pairs, parse_int=_bounded_int)
        _check_tree(data, 0)
    except _Hostile as e:
        raise SpecError([Problem("", e.message)], source) from None
    except json.JSONDecodeError as e:
        raise SpecError(
            [Problem("", f"JSON syntax error: {e.msg} (line {e.lineno} column {e.colno})", e.lineno)], source
        ) from None
    except (ValueError, RecursionError) as e:
        raise SpecError([Problem("", f"JSON error: {str(e)[:200]}")], source) from None
    return data


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_depth(text: str) -> None:
    """Refuse deep nesting before json.loads recurses into it (strings skipped)."""
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _Hostile(f"nested deeper than {MAX_DEPTH} levels")
        elif c in "]}":
            depth -= 1


def _bounded_int(text: str) -> int:
    if len(text) > 64:
        raise _Hostile(f"a number of {len(text)} digits")
    return int(text)


def _check_tree(data: Any, depth: int) -> None:
    if isinstance(data, (dict, list)):
        if depth >= MAX_DEPTH:
            raise _Hostile(f"nested deeper than {MAX_DEPTH} levels")
        for value in data.values() if isinstance(data, dict) else data:
            _check_tree(value, depth + 1)
    elif isinstance(data, str) and len(data) > MAX_SCALAR:
        raise _Hostile(f"a value of {len(data)} characters (at most {MAX_SCALAR})")


def _index_lines(node: Any, path: tuple, out: dict[tuple, int]) -> None:
    if node is None:
        return
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[path + (key.value,)] = key.start_mark.line + 1
            _index_lines(value, path + (key.value,), out)
            out[path + (key.value,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), out)


def split_path(path: str) -> list[str | int]:
    """'spec.env.0.name' -> ['spec', 'env', 0, 'name']."""
    return [int(p) if p.isdigit() else p for p in path.split(".") if p != ""]


def set_path(data: dict, path: str, value: Any) -> None:
    """Set a dotted path in nested dicts/lists, creating mappings on the way."""
    keys = split_path(path)
    if not keys:
        raise SpecError([Problem(path, "empty field path")])
    cur: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(cur, list) and isinstance(key, int) and key < len(cur):
            cur = cur[key]
        elif isinstance(cur, dict):
            nxt = cur.get(key)
            if not isinstance(nxt, (dict, list)):
                nxt = cur[key] = {}
            cur = nxt
        else:
            raise SpecError(
                [Problem(".".join(map(str, keys[: i + 1])), "cannot set a field below this value")]
            )
    last = keys[-1]
    if isinstance(cur, list) and isinstance(last, int) and last < len(cur):
        cur[last] = value
    elif isinstance(cur, dict):
        cur[last] = value
    else:
        raise SpecError([Problem(path, "cannot set a field here")])


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply `path=value` strings (value parsed as YAML) to a copy of data."""
    out = copy.deepcopy(data)
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise SpecError([Problem("", f"--set expects path=value, got {item!r}")])
        try:
            value = parse_yaml(raw)[0] if raw.strip() else ""
        except SpecError:
            value = raw
        set_path(out, path.strip(), value)
    return out


def load_job(
    text: str, source: str = "", overrides: Iterable[str] = (), json_only: bool = False
) -> TrainingJob:
    """Parse (YAML, or JSON with json_only) and validate a TrainingJob; raise SpecError naming every problem."""
    if json_only:
        return validate_job(parse_json(text, source), source, overrides)
    data, lines = parse_yaml(text, source)
    return validate_job(data, source, overrides, lines)


def validate_job(
    data: Any, source: str = "", overrides: Iterable[str] = (), lines: Mapping[tuple, int] | None = None
) -> TrainingJob:
    """Validate already-parsed data (a dict) as a TrainingJob; raise SpecError naming every problem."""
    lines = lines or {}
    if data is None:
        raise SpecError([Problem("", "the document is empty: expected a TrainingJob mapping")], source)
    if not isinstance(data, dict):
        raise SpecError(
            [
                Problem(
                    "", f"expected a mapping with apiVersion, kind, metadata and spec, got a {_kind(data)}", 1
                )
            ],
            source,
        )
    data = apply_overrides(data, overrides) if overrides else data
    try:
        return TrainingJob.model_validate(data)
    except ValidationError as e:
        raise SpecError(problems_from(e, data, lines), source) from None


def problems_from(
    error: ValidationError, data: Any, lines: Mapping[tuple, int] | None = None
) -> list[Problem]:
    """Translate pydantic errors into Problems with clean dotted paths (union tags dropped)."""
    problems = []
    for err in error.errors(include_url=False):
        keys = _clean_loc(err["loc"], data)
        path = ".".join(str(k) for k in keys)
        problems.append(Problem(path, _message(err, keys, data), _line(keys, lines or {})))
    return problems


def _clean_loc(loc: tuple, data: Any) -> list[str | int]:
    keys: list[str | int] = []
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(part, str) and _TYPE_LOC.match(part) and not (isinstance(cur, dict) and part in cur):
            continue  # a union member's type, unless the document really has a key of that name
        if isinstance(cur, dict) and isinstance(part, str) and part not in cur and not last:
            continue  # a discriminated-union tag, not a key of the document
        keys.append(part)
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
        else:
            cur = None
    return keys


def _message(err: dict, keys: list, data: Any = None) -> str:
    kind, msg = err["type"], err["msg"]
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(keys[:-1], data)
        hint = ""
        if allowed and keys:
            close = difflib.get_close_matches(str(keys[-1]), allowed, n=1)
            hint = (f" (did you mean '{close[0]}'?)" if close else "") + f"; allowed: {', '.join(allowed)}"
        return f"unknown field{hint}"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"type {ctx.get('tag')!r} is not one of: {ctx.get('expected_tags')}"
    given = err.get("input")
    if isinstance(given, (str, int, float, bool)) or given is None:
        return f"got {_show(given)}: {msg}"
    return msg


def _allowed_fields(parent: list, data: Any = None) -> list[str]:
    model: Any = TrainingJob
    for key in parent:
        data = data[key] if isinstance(data, (dict, list)) and _has(data, key) else None
        if isinstance(key, int):
            model = _item_type(model)
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or key not in fields:
            return []
        model = _model_of(fields[key].annotation, data)
    return sorted(getattr(model, "model_fields", {}) or {})


def _has(container: Any, key: Any) -> bool:
    return key in container if isinstance(container, dict) else isinstance(key, int) and key < len(container)


def _model_of(tp: Any, value: Any = None) -> Any:
    """The model class for an annotation; for a `type`-tagged union, the member the value's type names."""
    members = [a for a in _flatten(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(members) > 1:
        tag = value.get("type") if isinstance(value, dict) else None
        for m in members:
            f = m.model_fields.get("type")
            if tag is not None and f is not None and f.default == tag:
                return m
    for arg in _flatten(tp):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        origin = typing.get_origin(arg)
        if origin in (list, tuple):
            return arg
    return None


def _item_type(tp: Any) -> Any:
    args = typing.get_args(tp)
    return _model_of(args[0]) if args else None


def _flatten(tp: Any) -> list:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(tp) for a in _flatten(arg)]
    return [tp]


def _line(keys: list, lines: Mapping[tuple, int]) -> int | None:
    for n in range(len(keys), -1, -1):
        if tuple(keys[:n]) in lines:
            return lines[tuple(keys[:n])]
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), "value"
    )
