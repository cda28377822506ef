"""Compiled presets for LangGraph's own tooling (``langgraph.json``): the platform adds the
checkpointer, so these graphs are compiled without one."""

from langgraph_moa.graphs.builder import compile_graph
from langgraph_moa.graphs.presets import layered as _layered
from langgraph_moa.graphs.presets import team as _team

layered = compile_graph(_layered())
team = compile_graph(_team())
