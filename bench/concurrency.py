"""Concurrency: 1, 10, 100 and 1,000 runs at once in one process.

Each level runs in a fresh child process (so its peak memory is its own): it compiles the
``layered`` preset (3 proposers x 2 layers, 7 model calls per run) once, starts N runs at once
with ``asyncio.gather`` and reports runs/s, p50/p99 run latency and the process's peak RSS.
The test model server runs in another process with a fixed latency per call. Prints a table
and writes bench/results/concurrency.json.

    python bench/concurrency.py [--levels 1,10,100,1000] [--latency 0.2] [--stores memory,sqlite]
                               [--db-levels 1,10,100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from overhead import (
    PG_ADMIN,
    RESULTS,
    STORE_LABELS,
    bench_spec,
    checkpointer,
    critical_calls,
    load_average,
    machine,
    model_server,
    print_table,
)

from langgraph_moa.graphs import compile_graph


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MiB: now (``VmRSS``) or at its peak (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: peak only


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """One level: N runs at once against ``args.base_url``; returns the row."""
    spec = bench_spec(args.graph, args.base_url, max_concurrency=args.max_in_flight)
    with tempfile.TemporaryDirectory() as tmp:
        async with checkpointer(args.store, tmp, args.pg_admin) as saver:
            graph = compile_graph(spec, checkpointer=saver)

            async def one(i: int) -> float:
                t0 = time.perf_counter()
                config = {"configurable": {"thread_id": uuid.uuid4().hex}}
                out = await graph.ainvoke({"task": f"task {i}"}, config, durability="sync")
                if not out.get("answer"):
                    raise RuntimeError(f"run {i} ended without an answer: {out}")
                return time.perf_counter() - t0

            await one(-1)  # warm up: imports, HTTP connection, first checkpoint
            base_rss = rss_mb()
            t0 = time.perf_counter()
            latencies = await asyncio.gather(*(one(i) for i in range(args.child)))
            wall = time.perf_counter() - t0
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    return {
        "graph": args.graph,
        "store": STORE_LABELS[args.store],
        "runs": args.child,
        "wall_s": round(wall, 2),
        "runs_per_s": round(args.child / wall, 1),
        "ideal_run_s": round(critical_calls(spec) * args.latency, 2),
        "p50_s": round(statistics.median(lat), 3),
        "p99_s": round(p99, 3),
        "rss_before_mb": round(base_rss),
        "peak_rss_mb": round(rss_mb("VmHWM")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,10,100,1000", help="runs at once, comma-separated")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per model call")
    ap.add_argument("--graph", default="layered")
    ap.add_argument("--stores", default="memory,sqlite")
    ap.add_argument(
        "--db-levels", default="1,10,100", help="levels for the SQL stores (1,000 takes minutes)"
    )
    ap.add_argument("--pg-admin", default=PG_ADMIN)
    ap.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="cap model calls in flight (the model entry's max_concurrency); default: none",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "concurrency.json")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--base-url", help=argparse.SUPPRESS)
    ap.add_argument("--store", default="memory", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(asyncio.run(child(args))), flush=True)
        return 0

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    load_before = load_average()
    started = time.perf_counter()
    with model_server(args.latency) as srv:
        for store in args.stores.split(","):
            levels = args.levels if store == "memory" else args.db_levels
            for level in (int(x) for x in levels.split(",")):
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(level),
                        "--base-url",
                        srv.base_url,
                        "--store",
                        store,
                        "--graph",
                        args.graph,
                        "--latency",
                        str(args.latency),
                        "--pg-admin",
                        args.pg_admin,
                        *(
                            ["--max-in-flight", str(args.max_in_flight)]
                            if args.max_in_flight
                            else []
                        ),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    skipped.append(f"{store} x{level}: {last}")
                    if "ImportError" in last:
                        break  # the store is not available here; skip its other levels
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cap = f", at most {args.max_in_flight} calls in flight" if args.max_in_flight else ""
    print(
        f"concurrent runs of '{args.graph}' in one process, {args.latency * 1000:.0f} ms per "
        f"call{cap}"
    )
    print_table(
        rows,
        [
            ("store", "store", 18),
            ("runs", "runs", 5),
            ("wall_s", "wall s", 7),
            ("runs_per_s", "runs/s", 7),
            ("ideal_run_s", "ideal s", 7),
            ("p50_s", "p50 s", 7),
            ("p99_s", "p99 s", 7),
            ("rss_before_mb", "RSS MiB", 7),
            ("peak_rss_mb", "peak MiB", 8),
        ],
    )
    for line in skipped:
        print(f"skipped {line}")
    print(f"load average (1/5/15 min) before: {load_before}, after: {load_average()}")
    report = {
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("child", "base_url")},
        "machine": machine(),
        "max_in_flight": args.max_in_flight,
        "load_average_before_after": [load_before, load_average()],
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
