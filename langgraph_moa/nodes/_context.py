"""What every node of a compiled spec shares: the spec and the model resolver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage

from langgraph_moa.models import ModelResolver
from langgraph_moa.nodes.tools import ToolResolver
from langgraph_moa.spec import GraphSpec, ModelSpec
from langgraph_moa.state import Usage

__all__ = ["NodeContext", "usage_of"]


@dataclass
class NodeContext:
    """Spec and models of one graph."""

    spec: GraphSpec
    models: ModelResolver
    tools: ToolResolver = field(init=False)

    def __post_init__(self) -> None:
        self.tools = ToolResolver(self.spec)


def usage_of(message: AIMessage, model: ModelSpec) -> Usage:
    """Token usage and cost of one model reply."""
    meta: dict[str, Any] = dict(message.usage_metadata or {})
    tokens_in = int(meta.get("input_tokens", 0))
    tokens_out = int(meta.get("output_tokens", 0))
    cost = (tokens_in * model.input_cost_per_mtok + tokens_out * model.output_cost_per_mtok) / 1e6
    return Usage(
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        total_tokens=int(meta.get("total_tokens", tokens_in + tokens_out)),
        calls=1,
        cost=cost,
    )
