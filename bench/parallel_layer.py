"""A layer's agents run in parallel: wall time of one layer of N agents against one call.

Every model call takes a fixed injected latency on the test model server; the synthesizer
concatenates (no call), so the ideal layer time is one call. Prints a table and writes
bench/results/parallel_layer.json.

    python bench/parallel_layer.py [--latency 0.3] [--agents 4] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver

from langgraph_moa.runtime import MoA
from langgraph_moa.testing import ModelServer


def spec_for(srv: ModelServer, agents: int) -> dict[str, Any]:
    names = [f"a{i}" for i in range(agents)]
    return {
        "models": {n: {"model": n, "base_url": srv.base_url, "max_retries": 0} for n in names},
        "agents": [{"name": n, "model": n} for n in names],
        "layers": [{"agents": names, "synthesizer": "concat"}],
    }


async def measure(moa: MoA, repeat: int) -> list[float]:
    times = []
    await moa.ainvoke("warm up")
    for i in range(repeat):
        t0 = time.perf_counter()
        await moa.ainvoke(f"task {i}")
        times.append(time.perf_counter() - t0)
    return times


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = []
    with ModelServer(latency=args.latency) as srv, tempfile.TemporaryDirectory() as tmp:
        spec = spec_for(srv, args.agents)
        stores: dict[str, Any] = {
            "InMemorySaver": {"checkpointer": InMemorySaver()},
            "SQLite (ours)": {"db_url": f"sqlite:///{tmp}/bench.sqlite"},
        }
        for label, kwargs in stores.items():
            async with MoA(spec, **kwargs) as moa:
                times = await measure(moa, args.repeat)
            med = statistics.median(times)
            rows.append(
                {
                    "store": label,
                    "agents": args.agents,
                    "latency_s": args.latency,
                    "layer_s": round(med, 3),
                    "ratio_to_one_call": round(med / args.latency, 2),
                    "max_in_flight": srv.max_in_flight(),
                }
            )
    print(f"{'store':<16}{'agents':>7}{'call s':>8}{'layer s':>9}{'x one call':>11}{'peak':>6}")
    for r in rows:
        print(
            f"{r['store']:<16}{r['agents']:>7}{r['latency_s']:>8}{r['layer_s']:>9}"
            f"{r['ratio_to_one_call']:>11}{r['max_in_flight']:>6}"
        )
    out = Path(__file__).parent / "results" / "parallel_layer.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
