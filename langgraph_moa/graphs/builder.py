"""Compile a :class:`GraphSpec` into a LangGraph ``StateGraph``.

Each layer ``n`` becomes a router node ``L{n}_router``, one node per agent
``L{n}_{agent}`` reached through ``Send``, and a synthesizer node ``L{n}_synthesizer``.
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer, Overwrite

from langgraph_moa.models import ModelResolver
from langgraph_moa.nodes import (
    NodeContext,
    make_agent_node,
    make_fan_out,
    make_router_node,
    make_synthesizer_node,
)
from langgraph_moa.spec import GraphSpec
from langgraph_moa.state import AgentInput, MoAInput, MoAOutput, MoAState

__all__ = ["TaskError", "add_moa_layers", "build_graph", "compile_graph", "node_names", "prepare"]


class TaskError(ValueError):
    """The input carries no task."""


def prepare(state: MoAState) -> dict[str, Any]:
    """Start a turn: find its question and clear the previous turn's work.

    A thread is a conversation. The question of this turn is a ``task`` given with this
    input (appended to ``messages`` as a human message), else the last human message that
    arrived since the previous turn's question; asking the same ``task`` again asks again.
    Plans, proposals, syntheses, usage, notes, aggregation and attribution of earlier turns
    are dropped; their questions and answers stay in ``messages``.
    """
    messages = list(state.get("messages") or [])
    task = (state.get("task") or "").strip()
    previous = _previous_question(messages, state.get("asked"))
    start = messages.index(previous) + 1 if previous is not None else 0
    new = [m for m in messages[start:] if isinstance(m, HumanMessage) and m.text.strip()]
    update: dict[str, Any] = {}
    given = bool(task) and (previous is None or task != previous.text.strip())
    if given and not (new and new[-1].text.strip() == task):
        question: HumanMessage = HumanMessage(task, id=str(uuid.uuid4()))
        update["messages"] = [question]
    elif new:
        question = new[-1]
    elif task:  # the same question as the previous turn, asked again
        question = HumanMessage(task, id=str(uuid.uuid4()))
        update["messages"] = [question]
    else:
        raise TaskError(
            "no task given: pass {'task': '...'} or {'messages': [...]} with a user message"
        )
    update.update(
        task=question.text,
        asked=question.id,
        layer=0,
        plans=Overwrite({}),
        proposals=Overwrite({}),
        usage=Overwrite({}),
        notes=Overwrite([]),
        syntheses=[],
        answer="",
        aggregation=Overwrite({}),
        attribution=[],
    )
    return update


def _previous_question(messages: list[AnyMessage], asked: str | None) -> AnyMessage | None:
    """The human message the previous turn answered: ``asked``, or (threads from before
    ``asked`` existed) the last human message followed by an answer."""
    if asked:
        found = next((m for m in messages if m.id == asked), None)
        if found is not None:
            return found
    last_ai = max((i for i, m in enumerate(messages) if isinstance(m, AIMessage)), default=0)
    humans = [m for m in messages[:last_ai] if isinstance(m, HumanMessage)]
    return humans[-1] if humans else None


def node_names(spec: GraphSpec, layer_index: int) -> tuple[str, list[str], str]:
    """Router, agent and synthesizer node names of layer ``layer_index`` (1-based)."""
    prefix = f"L{layer_index}_"
    agents = [prefix + a for a in spec.layers[layer_index - 1].agents]
    return prefix + "router", agents, prefix + "synthesizer"


def add_moa_layers(
    graph: StateGraph, spec: GraphSpec, *, after: str, models: ModelResolver | None = None
) -> str:
    """Add every layer of ``spec`` to ``graph`` after node ``after``; return the last node.

    The graph's state must include :class:`MoAState`'s keys (``task``, ``plans``,
    ``proposals``, ``syntheses``, ``usage``...), so users can embed a mixture in a
    ``StateGraph`` of their own.
    """
    ctx = NodeContext(spec=spec, models=models or ModelResolver(spec.models, spec.defaults.model))
    previous = after
    for n in range(1, len(spec.layers) + 1):
        router, agents, synthesizer = node_names(spec, n)
        graph.add_node(router, make_router_node(ctx, n))
        graph.add_edge(previous, router)
        for agent_name, node in zip(spec.layers[n - 1].agents, agents, strict=True):
            graph.add_node(node, make_agent_node(ctx, agent_name, n), input_schema=AgentInput)
            graph.add_edge(node, synthesizer)
        graph.add_conditional_edges(router, make_fan_out(ctx, n), agents)
        graph.add_node(synthesizer, make_synthesizer_node(ctx, n))
        previous = synthesizer
    return previous


def build_graph(spec: GraphSpec, *, models: ModelResolver | None = None) -> StateGraph:
    """The uncompiled ``StateGraph`` of ``spec``; add nodes or compile it yourself."""
    graph = StateGraph(MoAState, input_schema=MoAInput, output_schema=MoAOutput)
    graph.add_node("prepare", prepare)
    graph.add_edge(START, "prepare")
    last = add_moa_layers(graph, spec, after="prepare", models=models)
    graph.add_edge(last, END)
    return graph


def compile_graph(
    spec: GraphSpec,
    *,
    checkpointer: Checkpointer = None,
    models: ModelResolver | None = None,
    **kwargs: Any,
) -> CompiledStateGraph:
    """Build and compile ``spec``; the graph is named after the spec."""
    return build_graph(spec, models=models).compile(
        checkpointer=checkpointer, name=spec.name, **kwargs
    )
