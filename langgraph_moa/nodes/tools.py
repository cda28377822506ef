"""The tools of a spec as LangChain tools: functions, the sandboxed python tool, MCP servers."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool

from langgraph_moa.nodes.filesearch import DEFAULT_GLOBS, FileIndex
from langgraph_moa.nodes.sandbox import SandboxLimits, run_python
from langgraph_moa.spec import AgentSpec, GraphSpec, McpServerSpec, ToolSpec
from langgraph_moa.spec.tools import load_object

__all__ = ["AgentTools", "ToolResolver", "mcp_problems"]

PYTHON_DESCRIPTION = (
    "Run a Python 3 program and get its stdout, stderr and exit status. No network; the "
    "working directory is the only writable place and is empty at each call; print what "
    "you need to see."
)


@dataclass
class AgentTools:
    """The tools one agent may call, by the name the model sees, and which are idempotent."""

    tools: list[BaseTool]
    idempotent: dict[str, bool] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [t.name for t in self.tools]


def _function_tool(key: str, spec: ToolSpec) -> BaseTool:
    assert spec.function is not None
    obj = load_object(spec.function)
    if isinstance(obj, BaseTool):
        update: dict[str, Any] = {"name": key}
        if spec.description:
            update["description"] = spec.description
        return obj.model_copy(update=update)
    if not callable(obj):
        raise TypeError(f"tools.{key}.function: {spec.function!r} is not callable")
    coroutine = obj if inspect.iscoroutinefunction(obj) else None
    return StructuredTool.from_function(
        func=None if coroutine else obj,
        coroutine=coroutine,
        name=key,
        description=spec.description or inspect.getdoc(obj) or key,
        handle_tool_error=False,
    )


def _python_tool(key: str, spec: ToolSpec) -> BaseTool:
    limits = SandboxLimits(
        timeout=spec.timeout or 20.0,
        memory_mb=spec.memory_mb or 512,
        max_output=spec.max_output or 8000,
        sandbox=spec.sandbox,
    )

    async def python(code: str) -> str:
        """Run a Python program (argument `code`)."""
        return (await run_python(code, limits)).render()

    return StructuredTool.from_function(
        coroutine=python, name=key, description=spec.description or PYTHON_DESCRIPTION
    )


def _search_tool(key: str, spec: ToolSpec) -> BaseTool:
    assert spec.root is not None
    index = FileIndex(spec.root, spec.globs or DEFAULT_GLOBS)

    async def search_files(query: str) -> str:
        """Search the files (argument `query`: words to look for)."""
        return await index.asearch(query)

    description = spec.description or (
        f"Search the files under {index.root.name}/ for passages matching a query of "
        "keywords; returns the best passages with their file and line."
    )
    return StructuredTool.from_function(coroutine=search_files, name=key, description=description)


def _connection(server: McpServerSpec) -> dict[str, Any]:
    if server.url is not None:
        conn: dict[str, Any] = {"transport": "streamable_http", "url": server.url}
        if server.headers:
            conn["headers"] = dict(server.headers)
        return conn
    conn = {"transport": "stdio", "command": server.command, "args": list(server.args)}
    if server.env is not None:
        conn["env"] = dict(server.env)
    if server.cwd is not None:
        conn["cwd"] = server.cwd
    return conn


async def _mcp_tools(key: str, server: McpServerSpec) -> dict[str, BaseTool]:
    """The server's tools by their MCP name; each call opens its own session."""
    try:
        from langchain_mcp_adapters.client import MultiServerMCPClient
    except ImportError as exc:
        raise ImportError(
            "MCP tools need the `tools` extra: pip install 'langgraph-moa[tools]'"
        ) from exc
    client = MultiServerMCPClient({key: _connection(server)})  # type: ignore[dict-item]
    return {t.name: t for t in await client.get_tools(server_name=key)}


class ToolResolver:
    """Builds each agent's tools once per graph (MCP servers are asked for their tools at
    an agent's first call, not when the graph is built)."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self._local: dict[str, BaseTool] = {}
        self._mcp: dict[str, dict[str, BaseTool]] = {}
        self._lock = asyncio.Lock()

    def listing(self, agent: AgentSpec) -> str:
        """The agent's tools for the router's prompt, e.g. ``py, files.read_file``."""
        return ", ".join(agent.tools)

    async def for_agent(self, agent: AgentSpec) -> AgentTools:
        out = AgentTools([])
        for ref in agent.tools:
            key, _, member = ref.partition(".")
            spec = self.spec.tools[key]
            for tool in await self._resolve(key, spec, member or None):
                if tool.name not in out.idempotent:
                    out.tools.append(tool)
                    out.idempotent[tool.name] = spec.idempotent
        return out

    async def _resolve(self, key: str, spec: ToolSpec, member: str | None) -> list[BaseTool]:
        if spec.mcp is None:
            if key not in self._local:
                built = (
                    _python_tool(key, spec)
                    if spec.builtin == "python"
                    else _search_tool(key, spec)
                    if spec.builtin == "search_files"
                    else _function_tool(key, spec)
                )
                self._local[key] = built
            return [self._local[key]]
        async with self._lock:
            if key not in self._mcp:
                self._mcp[key] = {
                    f"{key}_{name}": tool.model_copy(update={"name": f"{key}_{name}"})
                    for name, tool in (await _mcp_tools(key, spec.mcp)).items()
                }
        tools = self._mcp[key]
        if member is None:
            return list(tools.values())
        picked = tools.get(f"{key}_{member}")
        if picked is None:
            raise LookupError(
                f"MCP server {key!r} has no tool {member!r} (it has: "
                f"{sorted(n.removeprefix(key + '_') for n in tools)})"
            )
        return [picked]


async def mcp_problems(spec: GraphSpec, timeout: float = 30.0) -> list[str]:
    """``tools.NAME.mcp: ...`` for MCP servers that cannot be reached and
    ``agents.I.tools.J: ...`` for tools they do not have (``moa spec validate --check-tools``)."""
    problems: list[str] = []
    found: dict[str, set[str]] = {}
    for key, tool in spec.tools.items():
        if tool.mcp is None:
            continue
        try:
            found[key] = set(await asyncio.wait_for(_mcp_tools(key, tool.mcp), timeout))
        except Exception as exc:
            problems.append(f"tools.{key}.mcp: cannot list the server's tools: {_reason(exc)}")
    for i, agent in enumerate(spec.agents):
        for j, ref in enumerate(agent.tools):
            key, _, member = ref.partition(".")
            if member and key in found and member not in found[key]:
                problems.append(
                    f"agents.{i}.tools.{j}: MCP server {key!r} has no tool {member!r} "
                    f"(it has: {sorted(found[key])})"
                )
    return problems


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)  # TaskGroup errors wrap the real one
    if inner:
        return _reason(inner[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
