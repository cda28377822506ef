"""The agent node: one proposal from one agent for one layer."""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from langgraph_moa.graphs.spec import AgentSpec
from langgraph_moa.nodes import prompts
from langgraph_moa.nodes._context import NodeContext, usage_of
from langgraph_moa.state import AgentInput, Proposal

__all__ = ["agent_messages", "make_agent_node"]

log = logging.getLogger(__name__)


def agent_messages(agent: AgentSpec, payload: AgentInput) -> list[BaseMessage]:
    """The prompt an agent sees: its role, the task, and the previous layer's work."""
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
    return [SystemMessage(system), HumanMessage(text)]


def make_agent_node(ctx: NodeContext, agent_name: str, layer: int) -> Any:
    """An async node that writes ``agent_name``'s proposal for ``layer``."""
    agent = ctx.spec.agent(agent_name)
    model_spec = ctx.models.spec(agent.model)
    temperature = (
        agent.temperature if agent.temperature is not None else ctx.spec.defaults.temperature
    )
    max_tokens = agent.max_tokens or ctx.spec.defaults.max_tokens
    label = ctx.models.label(agent.model)

    async def agent_node(payload: AgentInput, config: RunnableConfig) -> dict[str, Any]:
        model = ctx.models.get(agent.model, temperature=temperature, max_tokens=max_tokens)
        proposal = Proposal(
            agent=agent_name,
            layer=layer,
            subtask=payload.get("subtask") or payload["task"],
            content="",
            status="ok",
            model=label,
        )
        try:
            reply = await model.ainvoke(agent_messages(agent, payload), config)
        except Exception as exc:  # a failed agent is reported to the synthesizer, not hidden
            log.warning("agent %s (layer %d) failed: %s", agent_name, layer, exc)
            proposal["status"] = "failed"
            proposal["error"] = f"{type(exc).__name__}: {exc}"
            return {"proposals": {str(layer): {agent_name: proposal}}}
        assert isinstance(reply, AIMessage)
        usage = usage_of(reply, model_spec)
        proposal["content"] = reply.text
        proposal["usage"] = usage
        return {"proposals": {str(layer): {agent_name: proposal}}, "usage": {agent_name: usage}}

    agent_node.__name__ = f"agent_{agent_name}"
    return agent_node
