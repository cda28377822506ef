"""The agent node: one proposal from one agent for one layer."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphBubbleUp
from langgraph.types import interrupt

from langgraph_moa.nodes import prompts
from langgraph_moa.nodes._calls import call_model, checkpoint_id, invocation_id, spec_budget
from langgraph_moa.nodes._context import NodeContext
from langgraph_moa.nodes._quorum import Cut, LayerGate, layer_gate
from langgraph_moa.nodes.budget import Budget, BudgetExceeded, Ledger, budget_of
from langgraph_moa.nodes.conversation import with_history
from langgraph_moa.nodes.toolloop import ToolLoop
from langgraph_moa.spec import AgentSpec
from langgraph_moa.state import AgentInput, Proposal

__all__ = ["agent_messages", "approved_budget", "make_agent_node", "make_agent_runner"]

log = logging.getLogger(__name__)


def agent_messages(agent: AgentSpec, payload: AgentInput) -> list[BaseMessage]:
    """The prompt an agent sees: its role, the previous layer's work, the earlier turns of
    the conversation, and the task."""
    description = f"{agent.description.strip()} " if agent.description else ""
    system = agent.role or prompts.AGENT_SYSTEM.format(name=agent.name, description=description)
    previous = payload.get("previous_synthesis")
    references: list[str] = []
    if previous:
        references.append(prompts.format_proposal(1, "synthesis", None, previous))
    else:
        for i, prop in enumerate(payload.get("previous_proposals") or [], start=1):
            if prop["status"] == "ok":
                references.append(
                    prompts.format_proposal(i, prop["agent"], prop["subtask"], prop["content"])
                )
    if references:
        system += "\n\n" + prompts.AGENT_REFERENCES.format(references="\n\n".join(references))
    task = payload["task"]
    subtask = payload.get("subtask")
    text = task if not subtask or subtask == task else f"Task: {task}\n\nYour part: {subtask}"
    return with_history(
        [SystemMessage(system), HumanMessage(text)],
        payload.get("history") or [],
        payload.get("history_dropped") or 0,
    )


AgentRunner = Callable[..., Awaitable[dict[str, Any]]]


def make_agent_runner(ctx: NodeContext, agent_name: str, layer: int) -> AgentRunner:
    """``run(payload, config, gate, budget=None)``: one attempt of ``agent_name`` in ``layer``,
    as the state update it makes. A failed call gives a ``failed`` proposal, a call the
    gate cut a ``missing`` one; a call over budget raises ``BudgetExceeded``."""
    agent = ctx.spec.agent(agent_name)
    temperature = (
        agent.temperature if agent.temperature is not None else ctx.spec.defaults.temperature
    )
    max_tokens = agent.max_tokens or ctx.spec.defaults.max_tokens
    label = ctx.models.label(agent.model)
    node = f"L{layer}_{agent_name}"
    loop = (
        ToolLoop(ctx, agent, ctx.tools, node=node, temperature=temperature, max_tokens=max_tokens)
        if agent.tools
        else None
    )

    async def run(
        payload: AgentInput, config: RunnableConfig, gate: LayerGate, budget: Budget | None = None
    ) -> dict[str, Any]:
        proposal = Proposal(
            agent=agent_name,
            layer=layer,
            subtask=payload.get("subtask") or payload["task"],
            content="",
            status="ok",
            model=label,
            run_id=gate.run_id,
        )
        update: dict[str, Any] = {"proposals": {str(layer): {agent_name: proposal}}}
        if loop is not None:
            return await _run_loop(loop, payload, config, gate, budget, proposal, update)
        call = call_model(
            ctx,
            agent.model,
            agent_messages(agent, payload),
            config,
            temperature=temperature,
            max_tokens=max_tokens,
            ledger=gate.ledger,
            node=node,
            budget=budget,
        )
        started = time.monotonic()
        try:
            reply = await gate.guard(call)
        except Cut as cut:
            log.warning("agent %s (layer %d) cut: %s", agent_name, layer, cut)
            proposal["status"], proposal["error"] = "missing", str(cut)
            return update
        except BudgetExceeded:
            raise
        except Exception as exc:  # a failed agent is reported to the synthesizer, not hidden
            log.warning("agent %s (layer %d) failed: %s", agent_name, layer, exc)
            proposal["status"], proposal["error"] = "failed", f"{type(exc).__name__}: {exc}"
            proposal["seconds"] = round(time.monotonic() - started, 3)
            gate.report(False)
            return update
        gate.report(True)
        proposal["content"], proposal["usage"] = reply.message.text, reply.usage
        proposal["seconds"] = round(time.monotonic() - started, 3)
        update["usage"] = {agent_name: reply.usage}
        if dropped := payload.get("history_dropped"):
            update["notes"] = [
                f"layer {layer}: {agent_name} saw {len(payload.get('history') or [])} of "
                f"{dropped + len(payload.get('history') or [])} earlier turns (context window)"
            ]
        return update

    return run


async def _run_loop(
    loop: ToolLoop,
    payload: AgentInput,
    config: RunnableConfig,
    gate: LayerGate,
    budget: Budget | None,
    proposal: Proposal,
    update: dict[str, Any],
) -> dict[str, Any]:
    """One attempt of an agent with tools: its tool loop, as :func:`make_agent_runner`'s
    ``run`` reports a plain call."""
    name, layer = proposal["agent"], proposal["layer"]
    started = time.monotonic()
    try:
        result = await gate.guard(
            loop.ainvoke(agent_messages(loop.agent, payload), config, gate.ledger, budget)
        )
    except Cut as cut:
        log.warning("agent %s (layer %d) cut: %s", name, layer, cut)
        proposal["status"], proposal["error"] = "missing", str(cut)
        return update
    except (BudgetExceeded, GraphBubbleUp):
        raise
    except Exception as exc:
        log.warning("agent %s (layer %d) failed: %s", name, layer, exc)
        proposal["status"], proposal["error"] = "failed", f"{type(exc).__name__}: {exc}"
        proposal["seconds"] = round(time.monotonic() - started, 3)
        gate.report(False)
        return update
    gate.report(True)
    proposal["content"], proposal["usage"] = result.text, result.usage
    proposal["tools"] = result.tools
    proposal["tool_seconds"] = result.tool_seconds
    proposal["seconds"] = round(time.monotonic() - started, 3)
    update["usage"] = {name: result.usage}
    unconfined = [t for t in result.tools if t in loop.unconfined]
    if unconfined:
        update["notes"] = [
            f"layer {layer}: {name} ran Python without a sandbox ({', '.join(unconfined)}: "
            "sandbox: none)"
        ]
    return update


def make_agent_node(ctx: NodeContext, agent_name: str, layer: int) -> Any:
    """An async node that writes ``agent_name``'s proposal for ``layer``.

    The agents of a layer share a gate (quorum, grace period, layer timeout, budget);
    a call that would pass the run's budget pauses the run with an interrupt.
    """
    spec = ctx.spec.layers[layer - 1]
    run = make_agent_runner(ctx, agent_name, layer)

    async def agent_node(payload: AgentInput, config: RunnableConfig) -> dict[str, Any]:
        peers = payload.get("peers") or list(spec.agents)
        run_id = invocation_id(config)
        gate_args = {
            "layer": layer,
            "needed": min(spec.min_proposals or 1, len(peers)),
            "grace": spec.grace_period,
            "timeout": spec.timeout,
            "ledger": Ledger(budget_of(config, spec_budget(ctx)), payload.get("spent")),
            "run_id": run_id,
        }
        with layer_gate(("agents", run_id, checkpoint_id(), layer), **gate_args) as gate:
            try:
                return await run(payload, config, gate)
            except BudgetExceeded as exc:
                decision = interrupt(exc.info)
                return await run(payload, config, gate, approved_budget(decision, gate.ledger))

    agent_node.__name__ = f"agent_{agent_name}"
    return agent_node


def approved_budget(decision: Any, ledger: Ledger) -> Budget:
    """The budget a resume value gives a paused call: a mapping of limits replaces them,
    any other value lets this one call go ahead."""
    if isinstance(decision, Mapping):
        return ledger.budget.replaced(decision.get("budget", decision))
    return Budget()
