"""Resilience: what quorum + grace, retries and call limits do to a layer's wall time.

One layer per scenario on the scripted test model server (in-process, fixed latency per
call), InMemorySaver, ``durability="sync"``. Scenarios:

* ``baseline``: 3 proposers + synthesizer, no faults.
* ``straggler``: one proposer answers after ``--straggle`` seconds; the layer waits for it.
* ``quorum 2/3 + grace``: the same straggler, ``min_proposals: 2``, ``grace_period``: the
  layer goes on ``--grace`` seconds after the second answer and names the missing agent.
* ``429 + Retry-After``: one proposer is rate-limited once with ``Retry-After``.
* ``max_concurrency``: ``--agents`` agents on one endpoint limited to 4 calls in flight.
* ``requests_per_second``: ``--rps-agents`` agents on one endpoint limited to ``--rps``.

"ideal s" is the wall time the scenario's rules allow (critical path of calls, waits and
limits); the table shows the measured median and, for the limited endpoints, the server's
peak of calls in flight.
Prints a table and writes bench/results/resilience.json.

    python bench/resilience.py [--latency 0.1] [--repeat 3] [--straggle 2] [--grace 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from overhead import RESULTS, load_average, machine, print_table

from langgraph_moa.runtime import MoA
from langgraph_moa.testing import ModelServer


def layer_spec(srv: ModelServer, agents: list[str], model: str | None = None, **layer: Any) -> Any:
    """Agents on their own model (or all on ``model``), a synthesizer on ``synth``."""
    names = [model] if model else agents
    models = {n: {"model": n, "base_url": srv.base_url, "max_retries": 2} for n in names}
    models["synth"] = {"model": "synth", "base_url": srv.base_url}
    return {
        "models": models,
        "agents": [{"name": a, "model": model or a} for a in agents],
        "layers": [{"agents": agents, "synthesizer": {"model": "synth"}, **layer}],
    }


def scenarios(srv: ModelServer, args: argparse.Namespace) -> list[dict[str, Any]]:
    lat, three = args.latency, ["p1", "p2", "p3"]
    many = [f"a{i}" for i in range(args.agents)]
    paced = [f"r{i}" for i in range(args.rps_agents)]
    return [
        {"name": "baseline", "spec": layer_spec(srv, three), "ideal": 2 * lat},
        {
            "name": "straggler",
            "spec": layer_spec(srv, three),
            "rules": [{"model": "p3", "delay": args.straggle}],
            "ideal": args.straggle + lat,
        },
        {
            "name": "quorum 2/3 + grace",
            "spec": layer_spec(srv, three, min_proposals=2, grace_period=args.grace),
            "rules": [{"model": "p3", "delay": args.straggle}],
            "ideal": lat + args.grace + lat,
        },
        {
            "name": "429 + Retry-After",
            "spec": layer_spec(srv, three),
            "rules": [{"model": "p2", "fail": 429, "retry_after": args.retry_after, "times": 1}],
            "ideal": lat + args.retry_after + lat + lat,
        },
        {
            "name": f"max_concurrency 4, {args.agents} agents",
            "spec": {
                **layer_spec(srv, many, model="w"),
                "models": {
                    "w": {"model": "w", "base_url": srv.base_url, "max_concurrency": 4},
                    "synth": {"model": "synth", "base_url": srv.base_url},
                },
            },
            "peak_model": "w",
            "ideal": -(-args.agents // 4) * lat + lat,
        },
        {
            "name": f"requests_per_second {args.rps:g}, {args.rps_agents} agents",
            "spec": {
                **layer_spec(srv, paced, model="r"),
                "models": {
                    "r": {"model": "r", "base_url": srv.base_url, "requests_per_second": args.rps},
                    "synth": {"model": "synth", "base_url": srv.base_url},
                },
            },
            "peak_model": "r",
            "ideal": args.rps_agents / args.rps + lat + lat,
        },
    ]


async def measure(srv: ModelServer, case: dict[str, Any], repeat: int) -> dict[str, Any]:
    times: list[float] = []
    peak = 0
    missing = 0
    for _ in range(repeat):
        srv.reset()
        for rule in case.get("rules", []):
            srv.add_rule(**rule)
        async with MoA(case["spec"], checkpointer=InMemorySaver(), registry=False) as moa:
            t0 = time.perf_counter()
            result = await moa.ainvoke("task", thread_id=uuid.uuid4().hex)
            times.append(time.perf_counter() - t0)
        assert result.status == "success", result
        missing = sum(p["status"] == "missing" for p in result.values["proposals"]["1"].values())
        if "peak_model" in case:  # (stragglers of earlier rows may still hang on the server)
            peak = max(peak, srv.max_in_flight(case["peak_model"]))
    return {
        "scenario": case["name"],
        "calls": srv.calls(),
        "ideal_s": round(case["ideal"], 2),
        "median_s": round(statistics.median(times), 2),
        "max_s": round(max(times), 2),
        "peak": peak or "",
        "missing": missing,
    }


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.1, help="seconds per model call")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per scenario")
    ap.add_argument("--straggle", type=float, default=2.0, help="the straggler's delay (s)")
    ap.add_argument("--grace", type=float, default=0.2, help="grace period after quorum (s)")
    ap.add_argument("--retry-after", type=float, default=0.5, help="Retry-After of the 429 (s)")
    ap.add_argument("--agents", type=int, default=40, help="agents on the capped endpoint")
    ap.add_argument("--rps", type=float, default=10.0, help="requests per second of the paced one")
    ap.add_argument("--rps-agents", type=int, default=10, help="agents on the paced endpoint")
    ap.add_argument("--out", type=Path, default=RESULTS / "resilience.json")
    args = ap.parse_args(argv)
    load_before = load_average()
    started = time.perf_counter()
    with ModelServer(latency=args.latency) as srv:
        rows = [await measure(srv, case, args.repeat) for case in scenarios(srv, args)]
    print(f"resilience, {args.latency * 1000:.0f} ms per model call, {args.repeat} runs per row")
    print_table(
        rows,
        [
            ("scenario", "scenario", 34),
            ("calls", "calls", 5),
            ("ideal_s", "ideal s", 7),
            ("median_s", "median s", 8),
            ("max_s", "max s", 6),
            ("peak", "peak in flight", 14),
            ("missing", "missing", 7),
        ],
    )
    print(f"load average (1/5/15 min) before: {load_before}, after: {load_average()}")
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(),
        "load_average_before_after": [load_before, load_average()],
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
