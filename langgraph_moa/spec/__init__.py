"""The declarative graph spec (plain pydantic) and its loader: the bottom floor of the package.

Everything above (models, nodes, graphs, runtime, server, cli, eval) reads specs; nothing here
imports any of them.
"""

from langgraph_moa.spec.loader import (
    SpecError,
    SpecProblem,
    load_spec,
    locate_problems,
    parse_spec,
)
from langgraph_moa.spec.model import (
    AGGREGATION_MODES,
    AgentSpec,
    Defaults,
    GraphSpec,
    LayerSpec,
    ModelSpec,
    RouterSpec,
    SpecReferenceError,
    SynthesizerSpec,
)
from langgraph_moa.spec.tools import McpServerSpec, ToolSpec

__all__ = [
    "AGGREGATION_MODES",
    "AgentSpec",
    "Defaults",
    "GraphSpec",
    "LayerSpec",
    "McpServerSpec",
    "ModelSpec",
    "RouterSpec",
    "SpecError",
    "SpecProblem",
    "SpecReferenceError",
    "SynthesizerSpec",
    "ToolSpec",
    "load_spec",
    "locate_problems",
    "parse_spec",
]
