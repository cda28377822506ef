"""Spec builders (every model points at the test model server) and an MCP server for tests."""

from __future__ import annotations

from typing import Any

from langgraph_moa.testing import ModelServer

# a stdio MCP server with two tools (as examples/mcp_words.py), written to a file by tests
MCP_WORDS_SERVER = '''
from mcp.server.fastmcp import FastMCP

server = FastMCP("words")


@server.tool()
def reverse(text: str) -> str:
    """Reverse a text."""
    return text[::-1]


@server.tool()
def count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


server.run()
'''


def served_models(srv: ModelServer, *names: str, **settings: Any) -> dict[str, Any]:
    """Spec ``models`` entries, one per name, each a model of ``srv`` with that name."""
    return {n: {"model": n, "base_url": srv.base_url, "max_retries": 0, **settings} for n in names}


def layered_spec(
    srv: ModelServer, *, proposers: int = 3, layers: int = 2, **layer: Any
) -> dict[str, Any]:
    """A broadcast spec: proposers p1..pN (model pK each) in every layer, synthesizer 'synth'."""
    names = [f"p{i}" for i in range(1, proposers + 1)]
    return {
        "name": "test-layered",
        "models": served_models(srv, *names, "synth"),
        "agents": [{"name": n, "model": n} for n in names],
        "layers": [
            {"agents": names, "synthesizer": {"model": "synth"}, **layer} for _ in range(layers)
        ],
    }
