"""Concurrency: 1, 10, 100 and 1,000 runs at once, ours against raw LangGraph.

Each level runs in a fresh child process (so its peak memory is its own): it compiles the
``layered`` preset (3 proposers x 2 layers, 7 model calls per run) once - with the engine
(``langgraph-moa``) or hand-written in raw LangGraph + ``ChatOpenAI`` (``raw-langgraph``, the
graph of bench/overhead.py) - starts N runs at once with ``asyncio.gather`` and reports runs/s,
p50/p99 run latency, CPU seconds per run (the child's user + system time over the runs) and
the process's peak RSS, with the memory the runs added per run; also the cores the child kept
busy (CPU over wall time) and the test model server's CPU per run. ``--procs N`` splits a
level's runs over N such children (each with its own graph and store), which warm up, then
start together on the parent's go (a line on their stdin): runs/s is all runs over the wall
time from the go to the last child's end, CPU and peak memory are the children's sums, p50/p99
are over all runs. At every level the
implementations alternate (``--rounds`` > 1 flips their order each round) so that both see the
same background load; the ratio columns compare each row with the raw row of its level.
The test model server runs in another process with a fixed latency per call. Prints a table
and writes bench/results/concurrency.json.

    python bench/concurrency.py [--levels 1,10,100,1000] [--latency 0.2] [--stores memory,sqlite]
                               [--db-levels 1,10,100] [--impls langgraph-moa,raw-langgraph]
                               [--procs 1] [--rounds 1]
    python bench/concurrency.py --stores memory --levels 1000 --impls langgraph-moa \
                               --profile /tmp/moa.prof      # cProfile of the runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

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
    raw_graph,
)

from langgraph_moa.graphs import compile_graph


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MiB: now (``VmRSS``) or at its peak (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: peak only


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """One child's share of a level: ``args.child`` runs at once against ``args.base_url``,
    started on the parent's go; returns their latencies, CPU seconds, end time and memory."""
    if args.http == "httpx":  # our models on the OpenAI client's httpx transport instead
        import openai

        openai.DefaultAioHttpClient = openai.DefaultAsyncHttpxClient  # type: ignore[misc]
    spec = bench_spec(args.graph, args.base_url, max_concurrency=args.max_in_flight)
    with tempfile.TemporaryDirectory() as tmp:
        async with checkpointer(args.store, tmp, args.pg_admin) as saver:
            if args.impl == "raw-langgraph":
                graph = raw_graph(spec, args.base_url, saver)
            else:
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
            print("ready", flush=True)
            if not sys.stdin.readline():  # the go: every child of the level starts now
                raise SystemExit("no go: another child of the level failed")
            profiler = cProfile.Profile() if args.profile else None
            cpu0, loop0 = time.process_time(), time.thread_time()
            if profiler is not None:
                profiler.enable()
            latencies = await asyncio.gather(*(one(i) for i in range(args.child)))
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            end, cpu = time.monotonic(), time.process_time() - cpu0
            loop_cpu = time.thread_time() - loop0
    return {
        "latencies": latencies,
        "cpu_s": cpu,
        "loop_cpu_s": loop_cpu,
        "end": end,
        "rss_before_mb": base_rss,
        "peak_rss_mb": rss_mb("VmHWM"),
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
    ap.add_argument(
        "--impls",
        default="langgraph-moa,raw-langgraph",
        help="langgraph-moa and/or raw-langgraph (the same graph hand-written)",
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="children per level and impl (median kept)"
    )
    ap.add_argument(
        "--procs", type=int, default=1, help="child processes a level's runs are split over"
    )
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile each child's runs into FILE.IMPL.STORE.LEVEL (.K: child K of --procs)",
    )
    ap.add_argument(
        "--http",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="HTTP transport of our model clients (default aiohttp, as the engine's)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "concurrency.json")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--base-url", help=argparse.SUPPRESS)
    ap.add_argument("--store", default="memory", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="langgraph-moa", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(asyncio.run(child(args))), flush=True)
        return 0
    impls = [i.strip() for i in args.impls.split(",")]
    unknown = set(impls) - {"langgraph-moa", "raw-langgraph"}
    if unknown:
        ap.error(f"--impls: unknown {', '.join(sorted(unknown))}")
    if args.procs < 1:
        ap.error("--procs: at least 1")

    samples: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    load_before = load_average()
    started = time.perf_counter()
    with model_server(args.latency) as srv:
        for store in args.stores.split(","):
            levels = args.levels if store == "memory" else args.db_levels
            unavailable = False
            for level in (int(x) for x in levels.split(",")):
                got: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
                for r in range(args.rounds):
                    for impl in impls if r % 2 == 0 else impls[::-1]:
                        srv_cpu = cpu_seconds(srv.proc.pid)
                        row, error = run_level(args, srv.base_url, store, level, impl)
                        if row is None:
                            skipped.append(f"{store} x{level} {impl}: {error}")
                            unavailable = "ImportError" in error
                            continue
                        row["load_1min"] = load_average().split()[0]
                        # the model server shares the cores: its CPU per run (warm-up included)
                        srv_cpu = cpu_seconds(srv.proc.pid) - srv_cpu
                        n_runs = level + row["procs"]  # a warm-up run per child
                        row["server_cpu_ms_per_run"] = round(srv_cpu / n_runs * 1000, 1)
                        samples.append(row)
                        got[impl].append(row)
                    if unavailable:
                        break
                rows += compare([median_row(got[impl]) for impl in impls if got[impl]])
                if unavailable:
                    break  # the store is not available here; skip its other levels
    cap = f", at most {args.max_in_flight} calls in flight (ours)" if args.max_in_flight else ""
    where = "one process" if args.procs == 1 else f"{args.procs} processes"
    print(
        f"concurrent runs of '{args.graph}' in {where}, {args.latency * 1000:.0f} ms per "
        f"call{cap}; median of {args.rounds} round(s), implementations alternating"
    )
    print_table(
        rows,
        [
            ("store", "store", 18),
            ("impl", "impl", 14),
            *([("procs", "procs", 5)] if args.procs > 1 else []),
            ("runs", "runs", 5),
            ("wall_s", "wall s", 7),
            ("runs_per_s", "runs/s", 7),
            ("vs_raw_runs_per_s", "x raw", 6),
            ("p50_s", "p50 s", 7),
            ("p99_s", "p99 s", 7),
            ("cpu_ms_per_run", "CPU ms/run", 10),
            ("vs_raw_cpu", "x raw", 6),
            ("cores_used", "cores", 5),
            ("server_cpu_ms_per_run", "server ms/run", 13),
            ("peak_rss_mb", "peak MiB", 8),
            ("kib_per_run", "KiB/run", 7),
        ],
    )
    for line in skipped:
        print(f"skipped {line}")
    load_after = load_average()
    print(f"load average (1/5/15 min) before: {load_before}, after: {load_after}")
    report = {
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("child", "base_url")},
        "machine": machine(),
        "max_in_flight": args.max_in_flight,
        "load_average_before_after": [load_before, load_after],
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "samples": samples,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


def run_level(
    args: argparse.Namespace, base_url: str, store: str, level: int, impl: str
) -> tuple[dict[str, Any] | None, str]:
    """One level of one implementation, its runs split over ``args.procs`` fresh processes
    that warm up, then start together: the level's row, or why it failed."""
    shares = [level // args.procs + (k < level % args.procs) for k in range(args.procs)]
    children: list[tuple[subprocess.Popen[str], IO[str], IO[str], IO[str]]] = []
    with contextlib.ExitStack() as stack:

        @stack.callback
        def stop() -> None:  # children still running when the level ends early
            for proc, *_ in children:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

        for k, n in enumerate(n for n in shares if n):
            profile = f"{args.profile}.{impl}.{store}.{level}"
            profile += f".{k}" if args.procs > 1 else ""
            errors = stack.enter_context(tempfile.TemporaryFile("w+"))
            cmd = [
                *(sys.executable, __file__, "--child", str(n), "--base-url", base_url),
                *("--store", store, "--impl", impl, "--graph", args.graph),
                *("--latency", str(args.latency), "--pg-admin", args.pg_admin),
                *(("--max-in-flight", str(args.max_in_flight)) if args.max_in_flight else ()),
                *("--http", args.http),
                *(("--profile", profile) if args.profile else ()),
            ]
            pipe = subprocess.PIPE
            proc = subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=errors, text=True)
            assert proc.stdin is not None and proc.stdout is not None
            children.append((proc, proc.stdin, proc.stdout, errors))
        guard = threading.Timer(1800, stop)  # a hung child (stuck run, lock) ends the level
        guard.start()
        stack.callback(guard.cancel)
        # a child that is not ready has failed: the others get no go (EOF) and stop
        ready = [_ready(out) for _, _, out, _ in children]
        go = time.monotonic()
        for _, stdin, _, _ in children:
            if all(ready):
                stdin.write("go\n")
            stdin.close()
        outs = [out.read() for _, _, out, _ in children]
        failed = [
            (r, errors)
            for (proc, _, _, errors), out, r in zip(children, outs, ready, strict=True)
            if proc.wait() != 0 or not out.strip()
        ]
        if failed:
            why = min(failed, key=lambda f: f[0])[1]  # one that was not ready, if any
            why.seek(0)
            return None, (why.read().strip().splitlines() or ["no output"])[-1]
    parts = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    wall = max(p["end"] for p in parts) - go
    cpu = sum(p["cpu_s"] for p in parts)
    lat = sorted(x for p in parts for x in p["latencies"])
    runs = len(lat)  # the children's runs, added up
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    base, peak = (sum(p[k] for p in parts) for k in ("rss_before_mb", "peak_rss_mb"))
    return {
        "graph": args.graph,
        "impl": impl,
        "http": args.http if impl == "langgraph-moa" else "httpx",
        "store": STORE_LABELS[store],
        "procs": len(parts),
        "runs": runs,
        "wall_s": round(wall, 3),  # as p99_s: the slowest run ends just before the wall
        "runs_per_s": round(runs / wall, 1),
        "ideal_run_s": round(critical_calls(bench_spec(args.graph, base_url)) * args.latency, 2),
        "p50_s": round(statistics.median(lat), 3),
        "p99_s": round(p99, 3),
        "cpu_ms_per_run": round(cpu / runs * 1000, 1),
        "cores_used": round(cpu / wall, 2),  # 1.0: one core busy the whole time
        # of which the event loop's thread (the rest: DB driver and executor threads)
        "loop_cpu_ms_per_run": round(sum(p["loop_cpu_s"] for p in parts) / runs * 1000, 1),
        "rss_before_mb": round(base),
        "peak_rss_mb": round(peak),
        "kib_per_run": round(max(0.0, peak - base) * 1024 / runs),
        "per_proc": [  # each child: its runs, CPU, peak memory, wall time from the go
            {
                "runs": len(p["latencies"]),
                "cpu_s": round(p["cpu_s"], 2),
                "peak_rss_mb": round(p["peak_rss_mb"]),
                "wall_s": round(p["end"] - go, 3),
            }
            for p in parts
        ],
    }, ""


def _ready(out: IO[str]) -> bool:
    """Read a child's stdout up to its ``ready`` line; False at EOF (the child failed)."""
    return any(line.strip() == "ready" for line in out)


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median runs/s (all of its figures, so they stay consistent)."""
    return sorted(rows, key=lambda r: r["runs_per_s"])[(len(rows) - 1) // 2]


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each row's ratios to the raw LangGraph row of the same level."""
    raw = next((r for r in rows if r["impl"] == "raw-langgraph"), None)
    for row in rows:
        if raw is not None and raw["runs_per_s"] and raw["cpu_ms_per_run"]:
            row["vs_raw_runs_per_s"] = round(row["runs_per_s"] / raw["runs_per_s"], 2)
            row["vs_raw_cpu"] = round(row["cpu_ms_per_run"] / raw["cpu_ms_per_run"], 2)
    return rows


if __name__ == "__main__":
    sys.exit(main())
