"""An agent with tools: a small LangGraph subgraph of the agent's node.

``model -> tool (one task per call, in parallel) -> model ...`` for up to ``max_steps``
model calls; the last allowed call (or the first after ``max_tool_calls``) gets no tools, so
the loop ends with an answer. The subgraph inherits the run's checkpointer: every step is
checkpointed and each tool call is its own task, so a resume never runs a call again whose
result was saved. A tool marked ``idempotent: false`` records that it started (a pending
write of its own) before it runs; a resume that finds the record without a result stops the
run with an interrupt and asks a person whether to run it again.
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict, cast

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send, interrupt

from langgraph_moa.nodes._calls import call_model
from langgraph_moa.nodes._context import NodeContext
from langgraph_moa.nodes.budget import Budget, Ledger
from langgraph_moa.nodes.tools import AgentTools, ToolResolver
from langgraph_moa.spec import AgentSpec
from langgraph_moa.state import Usage, add_usage

__all__ = ["TOOL_EVENT", "LoopResult", "ToolLoop"]

TOOL_EVENT = "tool_call"
"""``kind`` of the ``custom`` stream events of tool calls: ``{"kind", "agent", "node",
"tool", "call_id", "status"}`` with ``status`` ``running`` (and ``args``), then ``success``,
``error`` or ``refused`` (and ``seconds``)."""

STARTED = "__moa_tool_started__"
"""Channel name of the 'this non-idempotent call started' record (never applied to state)."""


class LoopState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    steps: int
    usage: Annotated[Usage, add_usage]
    used: Annotated[list[str], lambda a, b: [*(a or []), *(b or [])]]
    tool_seconds: Annotated[float, lambda a, b: (a or 0.0) + (b or 0.0)]


class ToolTask(TypedDict):
    call: ToolCall
    allowed: bool


@dataclass
class LoopResult:
    """The agent's final message, the usage of its model calls and the tools it called."""

    text: str
    usage: Usage
    tools: dict[str, int]
    tool_seconds: float = 0.0


@dataclass
class _Call:
    ledger: Ledger
    budget: Budget | None
    tools: AgentTools
    write: Callable[[Any], None]
    """The agent node's stream writer: tool events reach the run's ``custom`` stream."""


_current: contextvars.ContextVar[_Call] = contextvars.ContextVar("moa_tool_loop")


class ToolLoop:
    """The tool-calling loop of one agent in one layer."""

    def __init__(
        self,
        ctx: NodeContext,
        agent: AgentSpec,
        resolver: ToolResolver,
        *,
        node: str,
        temperature: float,
        max_tokens: int,
    ) -> None:
        self.ctx, self.agent, self.resolver, self.node = ctx, agent, resolver, node
        self.temperature, self.max_tokens = temperature, max_tokens
        self.unconfined = {  # python tools the spec lets run without bubblewrap
            ref
            for ref in agent.tools
            if (tool := ctx.spec.tools[ref.partition(".")[0]]).builtin == "python"
            and tool.sandbox == "none"
        }
        graph = StateGraph(LoopState)
        graph.add_node("model", self._model)
        graph.add_node("tool", self._tool, input_schema=ToolTask)  # type: ignore[arg-type]
        graph.add_edge(START, "model")
        graph.add_conditional_edges("model", self._route, ["tool", END])
        graph.add_edge("tool", "model")
        self.graph = graph.compile(name=f"{node}_tools")  # checkpointer: the parent's

    async def ainvoke(
        self,
        messages: list[BaseMessage],
        config: RunnableConfig,
        ledger: Ledger,
        budget: Budget | None = None,
    ) -> LoopResult:
        tools = await self.resolver.for_agent(self.agent)
        try:
            write = get_stream_writer()
        except RuntimeError:  # outside a graph
            write = _ignore
        token = _current.set(_Call(ledger, budget, tools, write))
        try:
            start = LoopState(messages=cast(list[AnyMessage], messages), steps=0)
            state = await self.graph.ainvoke(start, config)
        finally:
            _current.reset(token)
        final = state["messages"][-1]
        return LoopResult(
            text=final.text if isinstance(final, AIMessage) else "",
            usage={**state.get("usage", {}), "tool_calls": len(state.get("used", []))},
            tools=dict(Counter(state.get("used", []))),
            tool_seconds=round(state.get("tool_seconds", 0.0), 3),
        )

    def _last_call(self, state: LoopState) -> bool:
        """Whether the next model call must answer without tools."""
        used = len(state.get("used") or [])
        limit, run_limit = self.agent.max_tool_calls, self.ctx.spec.max_tool_calls
        return (
            state.get("steps", 0) + 1 >= self.agent.max_steps
            or (limit is not None and used >= limit)
            or (run_limit is not None and _current.get().ledger.tool_calls >= run_limit)
        )

    async def _model(self, state: LoopState, config: RunnableConfig) -> dict[str, Any]:
        call = _current.get()
        final = self._last_call(state)
        reply = await call_model(
            self.ctx,
            self.agent.model,
            list(state["messages"]),
            config,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            ledger=call.ledger,
            node=self.node,
            budget=call.budget,
            tools=call.tools.tools,
            tool_choice="none" if final else None,
        )
        message = reply.message
        if final and message.tool_calls:  # a model that calls tools anyway gets no more
            message = AIMessage(message.text, id=message.id)
        return {"messages": [message], "steps": state.get("steps", 0) + 1, "usage": reply.usage}

    def _route(self, state: LoopState) -> list[Send] | str:
        last = state["messages"][-1]
        if not isinstance(last, AIMessage) or not last.tool_calls:
            return END
        left = None
        if self.agent.max_tool_calls is not None:
            left = self.agent.max_tool_calls - len(state.get("used") or [])
        return [
            Send("tool", ToolTask(call=c, allowed=left is None or i < left))
            for i, c in enumerate(last.tool_calls)
        ]

    async def _tool(self, task: ToolTask, config: RunnableConfig) -> dict[str, Any]:
        current = _current.get()
        call, tools = task["call"], current.tools
        name, call_id = call["name"], call.get("id") or ""
        tool = next((t for t in tools.tools if t.name == name), None)
        event = {"kind": TOOL_EVENT, "agent": self.agent.name, "node": self.node,
                 "tool": name, "call_id": call_id}  # fmt: skip

        def reply(
            text: str, status: str = "success", ran: bool = True, **extra: Any
        ) -> dict[str, Any]:
            message = ToolMessage(text, tool_call_id=call_id, name=name, status=status)
            message.additional_kwargs.update(extra)
            done = status if ran else "refused"
            current.write({**event, "status": done, "seconds": extra.get("seconds", 0.0)})
            return {
                "messages": [message],
                "used": [name] if ran else [],
                "tool_seconds": extra.get("seconds", 0.0),
            }

        if tool is None:
            return reply(
                f"error: there is no tool {name!r}; use one of {tools.names()}", "error", False
            )
        if not task["allowed"]:
            return reply("not run: the tool-call limit of this answer is reached", "error", False)
        if not _current.get().ledger.take_tool_call(self.ctx.spec.max_tool_calls):
            return reply(
                f"not run: the run's tool-call budget (max_tool_calls "
                f"{self.ctx.spec.max_tool_calls}) is spent",
                "error",
                False,
            )
        if not tools.idempotent.get(name, True):
            if await _started(config):
                decision = interrupt(
                    {
                        "kind": "tool_call_in_flight",
                        "agent": self.agent.name,
                        "tool": name,
                        "args": call.get("args"),
                        "question": f"{name} may have run before the run stopped and is "
                        "not idempotent: run it again? (`moa resume THREAD --approve` runs it; "
                        "a resume value of false skips it)",
                    }
                )
                if not decision:
                    return reply(
                        "not run: a person declined to run it again after a crash", ran=False
                    )
            else:
                await _mark_started(config)
        current.write({**event, "status": "running", "args": call.get("args")})
        started = time.monotonic()
        try:
            result = await tool.ainvoke(call, config)
        except Exception as exc:  # errors go back to the model, never crash the run
            seconds = round(time.monotonic() - started, 3)
            return reply(f"error: {type(exc).__name__}: {exc}", "error", seconds=seconds)
        seconds = round(time.monotonic() - started, 3)
        text = result.content if isinstance(result, ToolMessage) else result
        if isinstance(result, ToolMessage) and result.status == "error":
            return reply(_text(text), "error", seconds=seconds)
        return reply(_text(text), seconds=seconds)


def _ignore(_: Any) -> None:
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _task_config(config: RunnableConfig) -> tuple[Any, RunnableConfig, str] | None:
    """The checkpointer, the config of the checkpoint this task runs on, and the task id."""
    from langgraph._internal._constants import CONFIG_KEY_CHECKPOINTER
    from langgraph.runtime import get_runtime

    conf = config.get("configurable") or {}
    saver = conf.get(CONFIG_KEY_CHECKPOINTER)
    info = get_runtime().execution_info
    if saver is None or info is None:
        return None
    keep = {k: v for k, v in conf.items() if not k.startswith("__pregel_")}
    graph_ns = conf.get("checkpoint_ns", "").rpartition("|")[0]  # drop this task's own part
    target: RunnableConfig = {
        "configurable": {**keep, "checkpoint_ns": graph_ns, "checkpoint_id": info.checkpoint_id}
    }
    return saver, target, f"{info.task_id}:started"


async def _started(config: RunnableConfig) -> bool:
    found = _task_config(config)
    if found is None:
        return False
    saver, target, marker = found
    saved = await saver.aget_tuple(target)
    return saved is not None and any(tid == marker for tid, _, _ in (saved.pending_writes or []))


async def _mark_started(config: RunnableConfig) -> None:
    found = _task_config(config)
    if found is not None:
        saver, target, marker = found
        await saver.aput_writes(target, [(STARTED, True)], marker)
