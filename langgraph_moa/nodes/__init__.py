"""Agent, router and synthesizer nodes, usable in any ``StateGraph`` over :class:`MoAState`."""

from langgraph_moa.nodes._context import NodeContext
from langgraph_moa.nodes.agent import agent_messages, make_agent_node
from langgraph_moa.nodes.router import Plan, PlanError, make_fan_out, make_router_node, parse_plan
from langgraph_moa.nodes.synthesizer import (
    ContextWindowError,
    QuorumError,
    fit_proposals,
    make_synthesizer_node,
)

__all__ = [
    "ContextWindowError",
    "NodeContext",
    "Plan",
    "PlanError",
    "QuorumError",
    "agent_messages",
    "fit_proposals",
    "make_agent_node",
    "make_fan_out",
    "make_router_node",
    "make_synthesizer_node",
    "parse_plan",
]
