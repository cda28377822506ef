"""Load a spec from YAML, JSON, TOML or a dict, with errors that name the file, line and field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from langgraph_moa.spec.model import GraphSpec, SpecReferenceError
from langgraph_moa.spec.reading import (
    SpecFileError,
    compose_yaml,
    parse_json,
    parse_toml,
    read_text,
)
from langgraph_moa.spec.tools import import_problems

__all__ = ["SpecError", "SpecProblem", "load_spec", "locate_problems", "parse_spec"]

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
        if len(lines) == 1:
            super().__init__(f"invalid spec: {lines[0]}")
        else:
            super().__init__("invalid spec:\n  " + "\n  ".join(lines))


def load_spec(source: str | Path | Mapping[str, Any] | GraphSpec) -> GraphSpec:
    """Read and validate a spec from a file path, a mapping or an existing ``GraphSpec``.

    Files are read within limits (:mod:`langgraph_moa.spec.reading`): at most 1 MiB of
    UTF-8 text, nested at most 48 levels, YAML aliases expanding to at most 20,000 values.
    """
    if isinstance(source, GraphSpec):
        return source
    if isinstance(source, Mapping):
        return parse_spec(dict(source), lines={}, source=None)
    path = Path(source)
    try:
        text = read_text(path)
        data, lines = _read(text, path)
    except SpecFileError as exc:
        raise SpecError([SpecProblem("", exc.message, exc.line)], str(path)) from None
    return parse_spec(data, lines=lines, source=str(path))


def locate_problems(path: str | Path, problems: list[str]) -> list[SpecProblem]:
    """``field.path: message`` problems found outside the loader, with their lines in
    ``path`` (a spec file that :func:`load_spec` accepted)."""
    path = Path(path)
    try:
        _, lines = _read(read_text(path), path)
    except SpecFileError:
        lines = {}
    return [_located(text, lines) for text in problems]


def parse_spec(data: Any, *, lines: dict[Loc, int], source: str | None) -> GraphSpec:
    """Validate parsed data; ``lines`` maps field paths to 1-based line numbers."""
    if not isinstance(data, dict):
        raise SpecError(
            [SpecProblem("", f"the top level must be a mapping, not {type(data).__name__}", 1)],
            source,
        )
    try:
        spec = GraphSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_problems(exc, lines), source) from None
    problems = import_problems(spec.tools)  # function tools are imported once, here
    if problems:
        raise SpecError([_located(text, lines) for text in problems], source)
    return spec


def _read(text: str, path: Path) -> tuple[Any, dict[Loc, int]]:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return parse_toml(text), {}
    if suffix == ".json":
        data = parse_json(text)
        try:  # JSON is (nearly always) YAML too, which gives us line numbers for it
            _, node = compose_yaml(text)
        except SpecFileError:
            node = None
    else:
        data, node = compose_yaml(text)
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


def _located(text: str, lines: dict[Loc, int]) -> SpecProblem:
    """A ``field.path: message`` problem with the line of its field."""
    field, _, message = text.partition(": ")
    loc = tuple(int(p) if p.isdigit() else p for p in field.split("."))
    return SpecProblem(field, message, _line_of(loc, lines))


def _problems(exc: ValidationError, lines: dict[Loc, int]) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SpecReferenceError):
            problems.extend(_located(text, lines) for text in cause.problems)
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
    value = err.get("input")
    if kind in ("literal_error", "enum"):
        expected = (err.get("ctx") or {}).get("expected", "")
        return f"{_shown(value)} is not allowed; use one of {expected}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind != "value_error" and isinstance(value, str | int | float | bool):
        msg += f", got {_shown(value)}"
    return msg


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
