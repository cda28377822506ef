"""Graph specs (validated), the builder that compiles them, and presets."""

from langgraph_moa.graphs.builder import (
    TaskError,
    add_moa_layers,
    build_graph,
    compile_graph,
    node_names,
    prepare,
)
from langgraph_moa.graphs.dsl import SpecBuilder, with_default_model
from langgraph_moa.graphs.loader import SpecError, SpecProblem, load_spec
from langgraph_moa.graphs.presets import PRESETS, layered, preset, team
from langgraph_moa.graphs.spec import (
    AgentSpec,
    Defaults,
    GraphSpec,
    LayerSpec,
    ModelSpec,
    RouterSpec,
    SynthesizerSpec,
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
    "with_default_model",
]
