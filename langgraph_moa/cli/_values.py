"""Option values without pydantic, for a quick start.

typer (0.29+) converts every parameter value through a pydantic ``TypeAdapter``, so any
command with a string option imports pydantic and builds adapters (about 0.1 s of CPU on
this project's machines) before it starts. :func:`install` gives the parameters of a
built command a converter that handles the plain cases itself, exactly as typer's
adapters would (a ``str`` stays itself, a number in range, a path checked by typer's own
path code, a ``parser=`` called), and hands anything else to typer's own conversion, so
values and error messages are typer's. ``tests/test_cli_startup.py`` checks both give the
same values. With a typer that converts differently (no ``_TyperParameter``), nothing is
installed and typer converts as it always does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["install", "quick_converter"]

_NO = object()
"""A converter's answer for a value it leaves to typer."""

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")


def _str(value: Any, param: Any, ctx: Any) -> Any:
    return value if type(value) is str else _NO


def _bool(value: Any, param: Any, ctx: Any) -> Any:
    return value if type(value) is bool else _NO


def _str_list(value: Any, param: Any, ctx: Any) -> Any:
    if isinstance(value, list | tuple) and all(type(v) is str for v in value):
        return list(value)
    return _NO


def _int(low: float | None, high: float | None) -> Any:
    def convert(value: Any, param: Any, ctx: Any) -> Any:
        if type(value) is str and _INT.fullmatch(value):
            value = int(value)
        if type(value) is not int:
            return _NO
        if (low is not None and value < low) or (high is not None and value > high):
            return _NO  # typer says what is wrong
        return value

    return convert


def _parser(parse: Any) -> Any:
    def convert(value: Any, param: Any, ctx: Any) -> Any:
        try:
            return parse(value)
        except Exception:
            return _NO  # typer calls it again and reports the error its way

    return convert


def _path(check: Any, info: Any) -> Any:
    def convert(value: Any, param: Any, ctx: Any) -> Any:
        if type(value) is str and value and "\x00" not in value:
            value = Path(value)  # what pydantic makes of a str for a Path
        if not isinstance(value, Path):
            return _NO
        return check(value, info, path_type=Path, param=param, ctx=ctx)

    return convert


def quick_converter(param: Any) -> Any | None:
    """The converter for a typer parameter, or None if typer should convert it."""
    try:
        from typer._param_types import coerce_cli_path
    except ImportError:  # pragma: no cover - another typer
        return None
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or descriptor.is_file or descriptor.is_choice:
        return None
    annotation, info = descriptor.annotation, descriptor.parameter_info
    if info.parser is not None:
        return None if descriptor.is_list or descriptor.is_tuple else _parser(info.parser)
    if annotation is str:
        return _str
    if annotation is bool:
        return _bool
    if annotation is int and not info.clamp:
        return _int(info.min, info.max)
    if annotation is Path and descriptor.is_path and info.path_type is None:
        return _path(coerce_cli_path, info)
    if descriptor.is_list and getattr(annotation, "__args__", None) == (str,):
        return _str_list
    return None


class _Quick:
    """A typer runtime parameter: the quick converter first, typer's own otherwise."""

    __slots__ = ("convert", "full")

    def __init__(self, convert: Any) -> None:
        self.convert = convert
        self.full: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multiple = param.multiple or param.nargs == -1
        if value is None:
            return () if multiple else None  # as typer's RuntimeParam.coerce
        if not (multiple and isinstance(value, str)):
            got = self.convert(value, param, ctx)
            if got is not _NO:
                return got
        if self.full is None:
            from typer._coercion import build_runtime_param

            self.full = build_runtime_param(param.type_descriptor)
        return self.full.coerce(value, param=param, ctx=ctx)


def install(command: Any) -> None:
    """Give every parameter of ``command`` and its subcommands the quick converter."""
    try:
        from typer._coercion import build_runtime_param  # noqa: F401
        from typer.core import _TyperParameter
    except ImportError:  # pragma: no cover - a typer that does not use pydantic
        return
    if not hasattr(_TyperParameter, "get_runtime_param"):  # pragma: no cover
        return

    def give(param: Any) -> None:
        if isinstance(param, _TyperParameter) and getattr(param, "_runtime_param", 0) is None:
            convert = quick_converter(param)
            if convert is not None:
                param._runtime_param = _Quick(convert)  # type: ignore[assignment]

    def walk(command: Any) -> None:
        for param in command.params:
            give(param)
        made = command.get_help_option  # --help is made when a command parses its args

        def get_help_option(ctx: Any) -> Any:
            option = made(ctx)
            give(option)
            return option

        command.get_help_option = get_help_option
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(command)
