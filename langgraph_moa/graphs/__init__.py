"""Graph specs (validated), the builder that compiles them, and presets."""

from langgraph_moa.graphs.builder import (
    TaskError,
    add_moa_layers,
    build_graph,
    compile_graph,
    node_names,
    prepare,
)
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
