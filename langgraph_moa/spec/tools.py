"""Tools in a spec: the top-level ``tools:`` mapping (functions, built-ins, MCP servers)."""

from __future__ import annotations

import importlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BUILTINS", "McpServerSpec", "ToolSpec", "import_problems", "load_object"]

BUILTINS = ("python", "search_files")
"""The built-in tools: ``python`` runs code in a sandbox (bubblewrap), ``search_files``
searches the files under a directory (SQLite FTS5)."""

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class McpServerSpec(_Strict):
    """An MCP server: a command started over stdio, or a streamable-HTTP URL."""

    command: str | None = Field(default=None, description="Program to start (stdio transport).")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    env: dict[str, str] | None = Field(default=None, description="Its environment (stdio).")
    cwd: str | None = Field(default=None, description="Its working directory (stdio).")
    url: str | None = Field(default=None, description="Streamable-HTTP endpoint, e.g. .../mcp.")
    headers: dict[str, str] | None = Field(default=None, description="HTTP headers (url).")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server needs exactly one of `command` (stdio) or `url` (HTTP)")
        if self.url is not None and not re.match(r"^https?://[^\s/]+", self.url):
            raise ValueError(f"`url` must be an http(s) URL, got {self.url!r}")
        if self.url is None and (self.headers is not None):
            raise ValueError("`headers` only applies to an MCP server given by `url`")
        if self.command is None and (self.args or self.env is not None or self.cwd is not None):
            raise ValueError(
                "`args`, `env` and `cwd` only apply to an MCP server given by `command`"
            )
        return self


class ToolSpec(_Strict):
    """One entry of ``tools:``, offered to the model under its key.

    Exactly one of ``function`` (``"pkg.module:attr"``: a LangChain tool or a plain typed
    function), ``builtin`` (``python`` or ``search_files``) or ``mcp`` (every tool of an MCP
    server; agents may pick single ones as ``key.tool``).
    """

    function: str | None = Field(default=None, description="'package.module:attr' to import.")
    builtin: Literal["python", "search_files"] | None = Field(
        default=None, description="A built-in tool."
    )
    mcp: McpServerSpec | None = Field(default=None, description="An MCP server's tools.")
    description: str | None = Field(default=None, description="Replaces the tool's description.")
    idempotent: bool = Field(
        default=True,
        description="False: a call in flight at a crash is not run again on resume; the run "
        "stops and asks a person (interrupt) instead.",
    )
    timeout: float | None = Field(default=None, gt=0, description="Seconds per call.")
    memory_mb: int | None = Field(
        default=None, ge=16, le=65536, description="Address-space limit (python)."
    )
    sandbox: Literal["bwrap", "none"] = Field(
        default="bwrap",
        description="How the python tool is contained; 'none' runs it unconfined (trusted use).",
    )
    max_output: int | None = Field(
        default=None, ge=256, description="Characters of output kept per call (python)."
    )
    root: str | None = Field(default=None, description="Directory to search (search_files).")
    globs: list[str] | None = Field(
        default=None, description="Files to index under root (search_files)."
    )

    @field_validator("function")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not IMPORT_PATH.match(value):
            raise ValueError(f"`function` must look like 'package.module:attr', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ToolSpec:
        kinds = [k for k in ("function", "builtin", "mcp") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a tool needs exactly one of `function`, `builtin` or `mcp`"
                + (f" (got {' and '.join(kinds)})" if kinds else "")
            )
        if self.builtin == "search_files" and not self.root:
            raise ValueError("`builtin: search_files` needs `root`: the directory to search")
        if self.builtin != "search_files":
            misplaced = [k for k in ("root", "globs") if getattr(self, k) is not None]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)}: only for `builtin: search_files`")
        if self.globs is not None and any(".." in g.split("/") for g in self.globs):
            raise ValueError("`globs` may not climb out of root with '..'")
        if self.builtin != "python":
            python_only = [k for k in ("memory_mb", "max_output") if getattr(self, k) is not None]
            if self.sandbox != "bwrap":
                python_only.append("sandbox")
            if python_only:
                raise ValueError(f"{', '.join(python_only)}: only for `builtin: python`")
        return self

    @property
    def kind(self) -> str:
        return "function" if self.function else "builtin" if self.builtin else "mcp"


def load_object(path: str) -> object:
    """Import ``"package.module:attr"`` (attr may be dotted)."""
    module_name, _, attr = path.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def import_problems(tools: dict[str, ToolSpec]) -> list[str]:
    """``tools.NAME.function: ...`` for each function tool that cannot be imported or is
    not callable."""
    problems: list[str] = []
    for name, tool in tools.items():
        if tool.function is None:
            continue
        try:
            obj = load_object(tool.function)
        except ModuleNotFoundError as exc:
            problems.append(f"tools.{name}.function: no module named {exc.name!r}")
            continue
        except AttributeError as exc:
            problems.append(f"tools.{name}.function: {exc}")
            continue
        except Exception as exc:  # importing user code may raise anything
            problems.append(
                f"tools.{name}.function: importing {tool.function!r} failed: "
                f"{type(exc).__name__}: {exc}"
            )
            continue
        if not callable(obj) and not hasattr(obj, "ainvoke"):
            problems.append(
                f"tools.{name}.function: {tool.function!r} is a {type(obj).__name__}, not a "
                "function or a LangChain tool"
            )
    return problems
