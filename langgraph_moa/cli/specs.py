"""`moa spec validate`, `moa graph`, `moa models`: look at specs without running them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from langgraph_moa.cli.common import PresetOpt, SpecOpt, err, fail, out, resolve_spec


def spec_validate(
    file: Annotated[Path, typer.Argument(help="Spec file to check.")],
    check_tools: Annotated[
        bool,
        typer.Option(
            "--check-tools",
            help="Also start/contact the spec's MCP servers and check the tools agents pick.",
        ),
    ] = False,
) -> None:
    """Check a spec file and say what is wrong, with file, line and field (function tools
    are imported; MCP servers are contacted only with --check-tools)."""
    from langgraph_moa.spec import SpecError, load_spec

    try:
        graph_spec = load_spec(file)
    except SpecError as exc:
        fail(str(exc), 2)
    if check_tools and any(t.mcp is not None for t in graph_spec.tools.values()):
        import asyncio

        from langgraph_moa.nodes.tools import mcp_problems
        from langgraph_moa.spec import locate_problems

        problems = asyncio.run(mcp_problems(graph_spec))
        if problems:
            fail(str(SpecError(locate_problems(file, problems), str(file))), 2)
    layers = " -> ".join(f"[{', '.join(layer.agents)}]" for layer in graph_spec.layers)
    out.print(
        f"{file}: ok · {graph_spec.name}: {len(graph_spec.agents)} agents, "
        f"{len(graph_spec.layers)} layers {layers}",
        markup=False,
    )


def graph(
    file: Annotated[Path | None, typer.Argument(help="Spec file (default: --preset).")] = None,
    preset_name: PresetOpt = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Write a PNG here (needs pygraphviz).")
    ] = None,
) -> None:
    """Draw a spec's graph: Mermaid text, or a PNG with --png."""
    from langgraph_moa.graphs import build_graph

    graph_spec = resolve_spec(file, preset_name)
    drawable = build_graph(graph_spec).compile(name=graph_spec.name).get_graph()
    if png is None:
        out.print(drawable.draw_mermaid(), markup=False, highlight=False)
        return
    try:
        drawable.draw_png(str(png))
    except ImportError:
        fail(
            "drawing a PNG needs pygraphviz (apt-get install graphviz libgraphviz-dev && "
            "pip install pygraphviz); or paste the Mermaid text of `moa graph` into "
            "https://mermaid.live",
            2,
        )
    err.print(f"wrote {png}")


def models(
    spec: SpecOpt = None,
    preset_name: PresetOpt = None,
) -> None:
    """List the models a spec uses, the embedded model, and how to use a real endpoint."""
    from langgraph_moa.models.settings import describe_default, describe_local

    graph_spec = resolve_spec(spec, preset_name)
    out.print(f"[bold]{graph_spec.name}[/]: models without an entry use {describe_default()}")
    for name, model_spec in graph_spec.models.items():
        where = model_spec.base_url or "init_chat_model"
        out.print(f"  {name}: {model_spec.model or 'local'} ({where})", markup=False)
    try:
        info = describe_local()
    except ImportError:
        info = {"installed": False}
    out.print(f"embedded model: {json.dumps(info, default=str)}", markup=False)
    out.print(
        "Use a real model:\n"
        "  OpenAI:            export OPENAI_API_KEY=...; moa run TASK --model openai:gpt-4o-mini\n"
        "  any OpenAI-compatible server (vLLM, Ollama, llama.cpp):\n"
        "                     moa run TASK --base-url http://127.0.0.1:11434/v1 --model llama3\n"
        "  for every run:     export MOA_MODEL=... [MOA_BASE_URL=... MOA_API_KEY=...]\n"
        "  per agent:         name models under `models:` in a spec file (moa spec validate)",
        markup=False,
    )
