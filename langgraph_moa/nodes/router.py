"""The router node: a plan of ``{agent, subtask}`` for a layer, fanned out with ``Send``."""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphBubbleUp
from langgraph.types import Send, interrupt
from pydantic import BaseModel, Field

from langgraph_moa.nodes import prompts
from langgraph_moa.nodes._calls import Reply, call_model, spec_budget
from langgraph_moa.nodes._context import NodeContext
from langgraph_moa.nodes.agent import agent_messages, approved_budget
from langgraph_moa.nodes.budget import BudgetExceeded, Ledger, budget_of, total_usage
from langgraph_moa.nodes.conversation import fitted_history, with_history
from langgraph_moa.spec import LayerSpec
from langgraph_moa.state import AgentInput, MoAState, Proposal, Subtask, Usage, add_usage

__all__ = [
    "Plan",
    "PlanError",
    "agent_inputs",
    "make_fan_out",
    "make_router_node",
    "parse_plan",
]

log = logging.getLogger(__name__)

ROUTER_MAX_TOKENS = 512


class PlanStep(BaseModel):
    """One assignment in a plan."""

    agent: str = Field(description="Name of the agent")
    subtask: str = Field(description="What this agent must do")


class Plan(BaseModel):
    """A router's plan for one layer."""

    plan: list[PlanStep]


class PlanError(ValueError):
    """A plan that names unknown agents, is empty or is not valid JSON."""


def parse_plan(raw: Any, agents: list[str]) -> list[Subtask]:
    """Validate a plan (text with JSON, a dict, a list or a ``Plan``) against the layer's agents."""
    if isinstance(raw, str):
        raw = _json_in(raw)
    if isinstance(raw, Plan):
        raw = raw.model_dump()
    if isinstance(raw, dict):
        raw = raw.get("plan")
    if not isinstance(raw, list):
        raise PlanError('expected {"plan": [{"agent": ..., "subtask": ...}]}')
    steps: list[Subtask] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("agent"), str):
            raise PlanError(f"plan item {i} must be an object with string fields agent and subtask")
        name, subtask = item["agent"].strip(), str(item.get("subtask") or "").strip()
        if name not in agents:
            raise PlanError(f"plan item {i} names unknown agent {name!r}; use one of {agents}")
        if not subtask:
            raise PlanError(f"plan item {i} for {name!r} has an empty subtask")
        steps.append(Subtask(agent=name, subtask=subtask))
    if not steps:
        raise PlanError("the plan is empty")
    if len({s["agent"] for s in steps}) != len(steps):
        merged: dict[str, list[str]] = {}
        for s in steps:  # one Send per agent: join the subtasks of an agent named twice
            merged.setdefault(s["agent"], []).append(s["subtask"])
        steps = [Subtask(agent=a, subtask="\n".join(parts)) for a, parts in merged.items()]
    return steps


def _json_in(text: str) -> Any:
    text = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    end = max(text.rfind("}"), text.rfind("]"))
    if start >= 0 and end > start:
        try:
            return json.loads(text[start : end + 1])
        except json.JSONDecodeError as exc:
            raise PlanError(f"the reply is not valid JSON: {exc.msg}") from None
    raise PlanError("the reply contains no JSON")


def _load_function(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"routing function {path!r} is not callable")
    return obj


def make_router_node(ctx: NodeContext, layer_index: int) -> Any:
    """An async node that writes the plan of layer ``layer_index`` (1-based)."""
    layer: LayerSpec = ctx.spec.layers[layer_index - 1]
    agents = list(layer.agents)
    routing = layer.routing
    function = _load_function(routing.function) if routing.function else None

    async def router_node(state: MoAState, config: RunnableConfig) -> dict[str, Any]:
        task = state["task"]
        update: dict[str, Any] = {"layer": layer_index}
        if routing.mode == "broadcast":
            plan = [Subtask(agent=a, subtask=task) for a in agents]
        elif function is not None:
            result = function(task, agents)
            if hasattr(result, "__await__"):
                result = await result
            plan = parse_plan(result, agents)
        else:
            plan, notes, usage = await _ask_model(ctx, layer, layer_index, state, config)
            update["notes"] = notes
            if usage:
                update["usage"] = {f"router_L{layer_index}": usage}
        update["plans"] = {str(layer_index): plan}
        return update

    router_node.__name__ = f"router_L{layer_index}"
    return router_node


def _roster_line(ctx: NodeContext, name: str) -> str:
    """``- name: what it is good at (tools: a, b)`` for the router's prompt."""
    agent = ctx.spec.agent(name)
    line = f"- {name}: {agent.description or agent.role or name}"
    return line + (f" (tools: {', '.join(agent.tools)})" if agent.tools else "")


async def _ask_model(
    ctx: NodeContext, layer: LayerSpec, layer_index: int, state: MoAState, config: RunnableConfig
) -> tuple[list[Subtask], list[str], Usage | None]:
    """Ask the router model for a plan; repair once with the error; else broadcast."""
    task = state["task"]
    agents = list(layer.agents)
    roster = "\n".join(_roster_line(ctx, name) for name in agents)
    system = (layer.routing.prompt or prompts.ROUTER_SYSTEM).format(agents=roster)
    base: list[BaseMessage] = [SystemMessage(system), HumanMessage(task)]
    window = ctx.models.context_window(layer.routing.model)
    history, dropped = fitted_history(state, base, window, ROUTER_MAX_TOKENS)
    messages = with_history(base, history, dropped)
    history_notes = (
        [
            f"layer {layer_index}: the router saw {len(history)} of {len(history) + dropped} "
            "earlier turns (context window)"
        ]
        if dropped
        else []
    )
    ledger = Ledger(budget_of(config, spec_budget(ctx)), total_usage(state.get("usage")))
    schema = Plan if layer.routing.structured_output else None
    node = f"L{layer_index}_router"
    usage: Usage | None = None
    errors: list[str] = []
    for attempt in range(1, 3):  # ask, then repair once with the error
        try:
            reply = await _call_router(ctx, layer, messages, config, ledger, node, schema)
        except GraphBubbleUp:  # the budget's interrupt pauses the run (not a failed call)
            raise
        except Exception as exc:  # the endpoint failed after its retries: no repair
            errors.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
            break
        usage = add_usage(usage, reply.usage)
        text = reply.message.text
        try:
            if reply.parsing_error is not None:
                raise PlanError(f"the reply does not match the plan schema: {reply.parsing_error}")
            return (
                parse_plan(text if schema is None else reply.parsed, agents),
                history_notes + _notes(errors),
                usage,
            )
        except PlanError as exc:
            errors.append(f"attempt {attempt}: {exc}")
            messages += [AIMessage(text), HumanMessage(prompts.ROUTER_REPAIR.format(error=exc))]
    log.warning("router of layer %d fell back to broadcast: %s", layer_index, "; ".join(errors))
    fallback = [Subtask(agent=a, subtask=task) for a in agents]
    notes = [
        *history_notes,
        *_notes(errors),
        f"layer {layer_index}: router fell back to broadcast: every agent got the whole task",
    ]
    return fallback, notes, usage


async def _call_router(
    ctx: NodeContext,
    layer: LayerSpec,
    messages: list[BaseMessage],
    config: RunnableConfig,
    ledger: Ledger,
    node: str,
    schema: type[Plan] | None,
) -> Reply:
    kwargs: dict[str, Any] = {
        "temperature": 0.0,
        "max_tokens": ROUTER_MAX_TOKENS,
        "ledger": ledger,
        "node": node,
    }
    try:
        return await call_model(ctx, layer.routing.model, messages, config, schema=schema, **kwargs)
    except BudgetExceeded as exc:  # pause the run; a resume value may raise the budget
        decision = interrupt(exc.info)
        budget = approved_budget(decision, ledger)
        return await call_model(
            ctx, layer.routing.model, messages, config, schema=schema, budget=budget, **kwargs
        )


def _notes(errors: list[str]) -> list[str]:
    return [f"router plan rejected ({e})" for e in errors]


def agent_inputs(ctx: NodeContext, state: MoAState, layer_index: int) -> dict[str, AgentInput]:
    """The payload of each planned agent of layer ``layer_index``, by agent name."""
    plan = state["plans"][str(layer_index)]
    previous_synthesis: str | None = None
    previous: list[Proposal] = []
    if layer_index > 1:
        previous = list((state.get("proposals") or {}).get(str(layer_index - 1), {}).values())
        synth_mode = ctx.spec.layers[layer_index - 2].synthesizer.mode
        if synth_mode == "synthesize" and state.get("syntheses"):
            previous_synthesis = state["syntheses"][-1]
    peers = [step["agent"] for step in plan]
    spent = total_usage(state.get("usage"))
    inputs: dict[str, AgentInput] = {}
    for step in plan:
        payload = AgentInput(
            task=state["task"],
            subtask=step["subtask"],
            layer=layer_index,
            previous_synthesis=previous_synthesis,
            previous_proposals=previous,
            peers=peers,
            spent=spent,
        )
        agent = ctx.spec.agent(step["agent"])
        window = ctx.models.context_window(agent.model)
        reply = agent.max_tokens or ctx.spec.defaults.max_tokens
        history, dropped = fitted_history(state, agent_messages(agent, payload), window, reply)
        if history or dropped:
            payload["history"], payload["history_dropped"] = history, dropped
        inputs[step["agent"]] = payload
    return inputs


def make_fan_out(ctx: NodeContext, layer_index: int) -> Callable[[MoAState], list[Send]]:
    """The conditional edge after a router: one ``Send`` per planned agent."""
    prefix = f"L{layer_index}_"

    def fan_out(state: MoAState) -> list[Send]:
        inputs = agent_inputs(ctx, state, layer_index)
        return [Send(prefix + agent, payload) for agent, payload in inputs.items()]

    return fan_out
