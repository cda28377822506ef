"""The declarative graph spec (plain pydantic) and its loader: the bottom floor of the package.

Everything above (models, nodes, graphs, runtime, server, cli, eval) reads specs; nothing here
imports any of them.
"""

from langgraph_moa.spec.loader import SpecError, SpecProblem, load_spec, parse_spec
from langgraph_moa.spec.model import (
    AgentSpec,
    Defaults,
    GraphSpec,
    LayerSpec,
    ModelSpec,
    RouterSpec,
    SpecReferenceError,
    SynthesizerSpec,
)

__all__ = [
    "AgentSpec",
    "Defaults",
    "GraphSpec",
    "LayerSpec",
    "ModelSpec",
    "RouterSpec",
    "SpecError",
    "SpecProblem",
    "SpecReferenceError",
    "SynthesizerSpec",
    "load_spec",
    "parse_spec",
]
