"""Load a spec from YAML, JSON, TOML or a dict, with errors that name the file, line and field."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from langgraph_moa.spec.model import GraphSpec, SpecReferenceError

__all__ = ["SpecError", "SpecProblem", "load_spec", "parse_spec"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SpecProblem:
    """One problem of a spec: where it is and what is wrong."""

    field: str
    message: str
    line: int | None = None

    def render(self, source: str | None) -> str:
        where = source or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class SpecError(ValueError):
    """A spec that cannot be used; ``problems`` lists every issue found."""

    def __init__(self, problems: list[SpecProblem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        lines = [p.render(source) for p in problems]
        super().__init__("invalid spec:\n  " + "\n  ".join(lines))


def load_spec(source: str | Path | Mapping[str, Any] | GraphSpec) -> GraphSpec:
    """Read and validate a spec from a file path, a mapping or an existing ``GraphSpec``."""
    if isinstance(source, GraphSpec):
        return source
    if isinstance(source, Mapping):
        return parse_spec(dict(source), lines={}, source=None)
    path = Path(source)
    if not path.is_file():
        raise SpecError([SpecProblem("", "no such file; check the path")], str(path))
    text = path.read_text(encoding="utf-8")
    data, lines = _read(text, path)
    return parse_spec(data, lines=lines, source=str(path))


def parse_spec(data: Any, *, lines: dict[Loc, int], source: str | None) -> GraphSpec:
    """Validate parsed data; ``lines`` maps field paths to 1-based line numbers."""
    if not isinstance(data, dict):
        raise SpecError(
            [SpecProblem("", f"the top level must be a mapping, not {type(data).__name__}", 1)],
            source,
        )
    try:
        return GraphSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_problems(exc, lines), source) from None


def _read(text: str, path: Path) -> tuple[Any, dict[Loc, int]]:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(text), {}
        except tomllib.TOMLDecodeError as exc:
            line = getattr(exc, "lineno", None)
            raise SpecError(
                [SpecProblem("", f"TOML syntax error: {exc}", line)], str(path)
            ) from None
    if suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"JSON syntax error: {exc.msg} (column {exc.colno})"
            raise SpecError([SpecProblem("", msg, exc.lineno)], str(path)) from None
    # YAML (JSON is YAML too, which gives us line numbers for it as well).
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        raise SpecError(
            [SpecProblem("", f"YAML syntax error: {problem}", line)], str(path)
        ) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _index(node, (), lines)
    return data, lines


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*loc, str(key.value))
            _index(value, sub, lines)
            lines[sub] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), lines)


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _problems(exc: ValidationError, lines: dict[Loc, int]) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SpecReferenceError):
            for text in cause.problems:
                field, _, message = text.partition(": ")
                loc = tuple(int(p) if p.isdigit() else p for p in field.split("."))
                problems.append(SpecProblem(field, message, _line_of(loc, lines)))
            continue
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field = ".".join(str(p) for p in loc)
        message = _message(err)
        problems.append(SpecProblem(field, message, _line_of(loc, lines)))
    return problems


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field; check its spelling against the spec reference"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")
