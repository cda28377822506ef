"""Build a spec in Python and run it, offline, against the scripted test model server.

python examples/python_builder.py
"""

from __future__ import annotations

import asyncio
import tempfile

from langgraph_moa.graphs import SpecBuilder
from langgraph_moa.runtime import MoA
from langgraph_moa.testing import ModelServer


async def main() -> None:
    with ModelServer(latency=0.2) as srv, tempfile.TemporaryDirectory() as tmp:
        spec = (
            SpecBuilder("builder-demo")
            .model("a", model="model-a", base_url=srv.base_url)
            .model("b", model="model-b", base_url=srv.base_url)
            .agent("optimist", model="a", role="You see the upside.")
            .agent("pessimist", model="b", role="You see the risks.")
            .layer(["optimist", "pessimist"], synthesizer={"model": "a"})
            .build()
        )
        async with MoA(spec, db_url=f"sqlite:///{tmp}/moa.sqlite") as moa:
            result = await moa.ainvoke("Should we rewrite the service in Rust?")
        print(result.answer)
        print(
            f"thread {result.thread_id}: {result.usage['total_tokens']} tokens, "
            f"{srv.calls()} model calls"
        )


if __name__ == "__main__":
    asyncio.run(main())
