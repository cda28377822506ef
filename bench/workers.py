"""Scale-out: runs per second with 1, 2 and 4 `moa worker` processes on PostgreSQL.

For each level, N worker processes (``moa worker --concurrency C``) take runs of the
``layered`` preset (3 proposers x 2 layers, 7 model calls, 3 on the critical path) from the
procrastinate queue of a throw-away PostgreSQL database; the test model server answers
every call after a fixed latency. After a warm-up batch (one run per worker slot), a batch
of N x C x ROUNDS runs is queued at once with :class:`RunQueue` (``queue s``: how long that
took) and timed from the first run's start to the last run's end as the workers recorded
them in the run registry (``wall s``). The ideal is every slot busy all the time:
N x C / (critical calls x latency) runs/s.
``cpu ms/run`` is the workers' CPU time (user + system) during the timed batch per run.
Prints a table and writes bench/results/workers.json.

    python bench/workers.py [--levels 1,2,4] [--concurrency 4] [--latency 0.5] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from overhead import (
    PG_ADMIN,
    RESULTS,
    bench_spec,
    critical_calls,
    load_average,
    machine,
    model_server,
    postgres_url,
    print_table,
)

from langgraph_moa.runtime.workers import RunQueue, conninfo_of
from langgraph_moa.spec import GraphSpec

FINAL = ("success", "error", "cancelled", "interrupted")


def start_workers(db_url: str, count: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "langgraph_moa.cli", "worker", "--db", db_url),
                *("--concurrency", str(concurrency), "--log-level", "WARNING"),
            ],
        )
        for _ in range(count)
    ]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()  # SIGTERM: the worker drains (it is idle by now) and exits
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU time the processes have used so far (Linux)."""
    total = 0
    for proc in procs:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


async def wait_ready(conn: psycopg.AsyncConnection[Any], count: int, procs: list[Any]) -> None:
    while True:
        try:
            cur = await conn.execute("SELECT count(*) FROM procrastinate_workers")
            row = await cur.fetchone()
            if row and row[0] >= count:
                return
        except psycopg.errors.UndefinedTable:
            pass
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited while starting; run it by hand to see why")
        await asyncio.sleep(0.1)


async def batch(
    queue: RunQueue, conn: psycopg.AsyncConnection[Any], spec: GraphSpec, runs: int, tag: str
) -> tuple[float, list[str]]:
    """Queue ``runs`` runs at once and wait for them; the seconds queueing took, and the
    run ids."""
    t0 = time.perf_counter()
    subs = await asyncio.gather(*(queue.submit(spec, f"{tag} task {i}") for i in range(runs)))
    queued = time.perf_counter() - t0
    ids = [s.run_id for s in subs]
    while True:
        cur = await conn.execute(
            "SELECT count(*) FROM moa_runs WHERE run_id = ANY(%s) AND status = ANY(%s)",
            (ids, list(FINAL)),
        )
        row = await cur.fetchone()
        if row and row[0] == runs:
            return queued, ids
        await asyncio.sleep(0.02)


async def level(
    db_url: str, spec: GraphSpec, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    slots = workers * args.concurrency
    procs = start_workers(db_url, workers, args.concurrency)
    try:
        async with (
            RunQueue(db_url) as queue,
            await psycopg.AsyncConnection.connect(conninfo_of(db_url), autocommit=True) as conn,
        ):
            await wait_ready(conn, workers, procs)
            await batch(queue, conn, spec, slots, f"warm-up {workers}")
            load = load_average()
            cpu = cpu_seconds(procs)
            queued, ids = await batch(queue, conn, spec, slots * args.rounds, f"level {workers}")
            cpu = cpu_seconds(procs) - cpu
            cur = await conn.execute(
                "SELECT status, extract(epoch from finished_at - started_at), attempts "
                "FROM moa_runs WHERE run_id = ANY(%s)",
                (ids,),
            )
            rows = await cur.fetchall()
            cur = await conn.execute(  # first start to last end, as the workers recorded them
                "SELECT extract(epoch from max(finished_at) - min(started_at)) "
                "FROM moa_runs WHERE run_id = ANY(%s)",
                (ids,),
            )
            span = await cur.fetchone()
            assert span is not None
            wall = float(span[0])
    finally:
        stop_workers(procs)
    failed = [r for r in rows if r[0] != "success"]
    if failed:
        raise RuntimeError(f"{len(failed)} runs did not succeed: {failed[:3]}")
    runs = len(ids)
    ideal_run = critical_calls(spec) * args.latency
    ideal = slots / ideal_run
    return {
        "workers": workers,
        "concurrency": args.concurrency,
        "runs": runs,
        "queue_s": round(queued, 2),
        "wall_s": round(wall, 2),
        "runs_per_s": round(runs / wall, 2),
        "ideal_runs_per_s": round(ideal, 2),
        "efficiency_pct": round(100 * runs / wall / ideal, 1),
        "run_p50_s": round(statistics.median(float(r[1]) for r in rows), 2),
        "ideal_run_s": round(ideal_run, 2),
        "worker_cpu_ms_per_run": round(1000 * cpu / runs),
        "max_attempts": max(int(r[2]) for r in rows),
        "load": load,
    }


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,2,4", help="worker processes per level")
    ap.add_argument("--concurrency", type=int, default=4, help="runs at a time per worker")
    ap.add_argument("--latency", type=float, default=0.5, help="seconds per model call")
    ap.add_argument("--rounds", type=int, default=4, help="timed runs per worker slot")
    ap.add_argument("--pg-admin", default=os.environ.get("MOA_TEST_PG", PG_ADMIN))
    ap.add_argument("--out", type=Path, default=RESULTS / "workers.json")
    args = ap.parse_args(argv)
    load_before = load_average()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        async with postgres_url(args.pg_admin) as db_url:
            with model_server(args.latency) as srv:
                spec = bench_spec("layered", srv.base_url)
                for workers in (int(n) for n in args.levels.split(",")):
                    rows.append(await level(db_url, spec, workers, args))
                    print(f"  {workers} worker(s) done", file=sys.stderr)
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL is not reachable at {args.pg_admin}: {exc}", file=sys.stderr)
        return 2
    print(
        f"layered preset, {critical_calls(spec)} calls on the critical path x "
        f"{args.latency}s; load before: {load_before}"
    )
    print_table(
        rows,
        [
            ("workers", "workers", 7),
            ("concurrency", "conc", 4),
            ("runs", "runs", 4),
            ("queue_s", "queue s", 7),
            ("wall_s", "wall s", 7),
            ("runs_per_s", "runs/s", 7),
            ("ideal_runs_per_s", "ideal/s", 7),
            ("efficiency_pct", "eff %", 6),
            ("run_p50_s", "p50 run s", 9),
            ("ideal_run_s", "ideal run s", 11),
            ("worker_cpu_ms_per_run", "cpu ms/run", 10),
            ("load", "load avg", 15),
        ],
    )
    report = {
        "script": "bench/workers.py",
        "machine": machine(),
        "load_before": load_before,
        "seconds": round(time.perf_counter() - started, 1),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
