"""Embed MoA layers in a StateGraph of your own: a node before, the mixture, a node after.

python examples/custom_graph.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from langgraph_moa.graphs import SpecBuilder, add_moa_layers, prepare
from langgraph_moa.state import MoAState
from langgraph_moa.testing import ModelServer


class ReviewState(MoAState, total=False):
    """Our own state: MoA's keys plus a field of ours."""

    word_count: int


def count_words(state: ReviewState) -> dict[str, Any]:
    """A plain node of ours that runs after the mixture."""
    return {"word_count": len(state["answer"].split())}


async def main() -> None:
    with ModelServer() as srv:
        spec = (
            SpecBuilder("review")
            .model("m", model="reviewer", base_url=srv.base_url)
            .defaults(model="m")
            .agent("style")
            .agent("correctness")
            .layer(["style", "correctness"])
            .build()
        )
        graph = StateGraph(ReviewState)
        graph.add_node("prepare", prepare)
        graph.add_edge(START, "prepare")
        last = add_moa_layers(graph, spec, after="prepare")
        graph.add_node("count_words", count_words)
        graph.add_edge(last, "count_words")
        graph.add_edge("count_words", END)
        app = graph.compile(checkpointer=InMemorySaver())
        out = await app.ainvoke(
            {"task": "Review: def f(x): return x*2"}, {"configurable": {"thread_id": "review-1"}}
        )
        print(out["answer"], "\nwords:", out["word_count"])


if __name__ == "__main__":
    asyncio.run(main())
