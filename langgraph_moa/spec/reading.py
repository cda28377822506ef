"""Reading spec files defensively: size, encoding, nesting depth and YAML alias expansion.

A spec file is small UTF-8 text. Anything else (a binary, another encoding, a file of
megabytes, nesting hundreds of levels deep, a "billion laughs" of YAML anchors) is
refused with one line that names the file and, where there is one, the line, before
it can cost more than a few milliseconds or kilobytes.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent, CollectionStartEvent
from yaml.reader import ReaderError

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_SPEC_BYTES",
    "SpecFileError",
    "compose_yaml",
    "depth_of",
    "parse_json",
    "parse_toml",
    "read_text",
]

MAX_SPEC_BYTES = 1024 * 1024
"""Largest spec file read, in bytes."""
MAX_DEPTH = 48
"""Deepest nesting of mappings and lists in a spec."""
MAX_NODES = 20_000
"""Most values a YAML spec may hold once its aliases are expanded."""


class SpecFileError(ValueError):
    """A spec file that cannot be read as a spec: ``message`` and, if known, its ``line``."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def read_text(path: Path) -> str:
    """The text of ``path``: at most :data:`MAX_SPEC_BYTES` of UTF-8 without NUL bytes."""
    if path.is_dir():
        raise SpecFileError("is a directory, not a spec file")
    if not path.exists():
        raise SpecFileError("no such file; check the path")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecFileError(f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecFileError(
            f"the file is larger than {MAX_SPEC_BYTES} bytes; a spec is a small text file "
            "(YAML, JSON or TOML)"
        )
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecFileError(
            "this is a binary file (it contains NUL bytes), not a YAML, JSON or TOML spec",
            data.count(b"\n", 0, nul) + 1,
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecFileError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
            "save the spec as UTF-8",
            line,
        ) from None


def depth_of(data: Any) -> int:
    """The nesting depth of lists and mappings in ``data`` (iterative: any depth is safe)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen: set[tuple[int, int]] = set()
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > deepest:
                deepest = depth
            if depth > MAX_DEPTH or (id(item), depth) in seen:
                continue
            seen.add((id(item), depth))
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _short(exc: BaseException) -> str:
    """The first sentence of an exception's message, on one line."""
    return " ".join(str(exc).split(";")[0].split())


def _too_deep(line: int | None = None) -> SpecFileError:
    return SpecFileError(
        f"mappings and lists are nested more than {MAX_DEPTH} levels deep (a spec needs about 5)",
        line,
    )


def _check_depth(data: Any) -> Any:
    if depth_of(data) > MAX_DEPTH:
        raise _too_deep()
    return data


def parse_json(text: str) -> Any:
    """Parse JSON text; errors as :class:`SpecFileError`."""
    try:
        return _check_depth(json.loads(text))
    except json.JSONDecodeError as exc:
        message = f"JSON syntax error: {exc.msg} (column {exc.colno})"
        raise SpecFileError(message, exc.lineno) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise SpecFileError(f"cannot read a value: {_short(exc)}") from None


def parse_toml(text: str) -> Any:
    """Parse TOML text; errors as :class:`SpecFileError`."""
    try:
        return _check_depth(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(found.group(1)) if found else None
        raise SpecFileError(f"TOML syntax error: {exc}", line) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        raise SpecFileError(f"cannot read a value: {_short(exc)}") from None


class _LimitError(ConstructorError):
    """A YAML document past a limit (not a syntax error)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts every value an alias repeats and the nesting depth,
    and stops past :data:`MAX_NODES` values or :data:`MAX_DEPTH` levels."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.expanded = 0
        self.aliases = 0
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height)

    def _count(self, values: int, mark: Any) -> None:
        self.expanded += values
        if self.expanded > MAX_NODES:
            why = (
                " once its aliases are expanded (an alias repeats its anchor's value); write "
                "the values out or use fewer aliases"
                if self.aliases
                else "; a spec needs a few hundred"
            )
            raise _LimitError(None, None, f"the spec holds more than {MAX_NODES} values{why}", mark)

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # the scanner looks ahead over every open flow level, so it is quadratic in their
        # depth: stop it before the composer would
        if self.flow_level >= MAX_DEPTH:
            mark: Any = self.get_mark()
            raise _LimitError(None, None, _too_deep().message, mark)
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()
        mark: Any = event.start_mark
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self.sizes:
                raise _LimitError(
                    None,
                    None,
                    "an alias refers to a value that contains it (a cycle)",
                    mark,
                )
            values, height = self.sizes[id(node)]
            self.aliases += 1
            if self.depth + height > MAX_DEPTH:
                raise _LimitError(None, None, _too_deep().message, mark)
            self._count(values, mark)
            return node
        collection = isinstance(event, CollectionStartEvent)
        if collection:
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _LimitError(None, None, _too_deep().message, mark)
        before = self.expanded
        try:
            node = super().compose_node(parent, index)
        finally:
            if collection:
                self.depth -= 1
        self._count(1, mark)
        height = 1
        if isinstance(node, yaml.SequenceNode):
            height += max((self.sizes.get(id(n), (1, 1))[1] for n in node.value), default=0)
        elif isinstance(node, yaml.MappingNode):
            height += max(
                (self.sizes.get(id(n), (1, 1))[1] for pair in node.value for n in pair),
                default=0,
            )
        self.sizes[id(node)] = (self.expanded - before, height)
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:  # e.g. a date like 2024-13-45
            raise _LimitError(
                None, None, f"cannot read this value: {_short(exc)}", node.start_mark
            ) from None


def compose_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML text into Python data and its node tree (for line numbers), within the
    limits above; errors as :class:`SpecFileError`."""
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        if isinstance(exc, ConstructorError) and not isinstance(exc, _LimitError):
            problem = f"YAML error: {problem}"
        elif not isinstance(exc, _LimitError):
            problem = f"YAML syntax error: {problem}"
        raise SpecFileError(problem, line) from None
    except ReaderError as exc:  # a control character
        line = text.count("\n", 0, exc.position) + 1
        raise SpecFileError(
            f"YAML error: character U+{exc.character:04X} is not allowed ({exc.reason})", line
        ) from None
    except yaml.YAMLError as exc:
        raise SpecFileError(f"YAML error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise _too_deep() from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, node
