"""Graph specs (validated), the builder that compiles them, and presets.

The builder's names are imported on first use: the presets and the spec helpers
(``preset``, ``with_default_model``, ...) do not load LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from langgraph_moa.graphs.dsl import SpecBuilder, with_aggregation, with_default_model
from langgraph_moa.graphs.presets import PRESETS, layered, preset, team

# Re-exported for user code written against ``langgraph_moa.graphs``; the package itself imports
# them from ``langgraph_moa.spec`` (the bottom floor).
from langgraph_moa.spec import (
    AgentSpec,
    Defaults,
    GraphSpec,
    LayerSpec,
    ModelSpec,
    RouterSpec,
    SpecError,
    SpecProblem,
    SynthesizerSpec,
    load_spec,
)

if TYPE_CHECKING:
    from langgraph_moa.graphs.builder import (
        TaskError,
        add_moa_layers,
        build_graph,
        compile_graph,
        node_names,
        prepare,
    )

_BUILDER = {"TaskError", "add_moa_layers", "build_graph", "compile_graph", "node_names", "prepare"}

__all__ = [
    "PRESETS",
    "AgentSpec",
    "Defaults",
    "GraphSpec",
    "LayerSpec",
    "ModelSpec",
    "RouterSpec",
    "SpecBuilder",
    "SpecError",
    "SpecProblem",
    "SynthesizerSpec",
    "TaskError",
    "add_moa_layers",
    "build_graph",
    "compile_graph",
    "layered",
    "load_spec",
    "node_names",
    "prepare",
    "preset",
    "team",
    "with_aggregation",
    "with_default_model",
]


def __getattr__(name: str) -> Any:
    """Import a name of the builder (and LangGraph) on first use."""
    if name not in _BUILDER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("langgraph_moa.graphs.builder"), name)
    globals()[name] = value
    return value
