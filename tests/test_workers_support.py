"""Shared pieces of the worker tests: the spec, `moa worker` subprocesses, waits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from langgraph_moa.runtime.workers import RunQueue, conninfo_of
from langgraph_moa.testing import ModelServer

__all__ = [
    "REAP_INTERVAL",
    "STALLED_AFTER",
    "WAIT",
    "Workers",
    "calls",
    "finished",
    "queue",
    "spec_for",
    "until",
    "workers",
]

WAIT = 120.0  # bound on waits, so a broken run fails the test instead of hanging it
# Worker timings of the tests. A worker is declared dead only by the silence of its
# heartbeats, so the threshold must stay well above what a starved but live worker can lag on
# a loaded machine (0.5 s beats and death after 2 s did not): 1 s beats, dead after 8 s.
HEARTBEAT, STALLED_AFTER, REAP_INTERVAL = 1.0, 8.0, 0.5
TIMINGS = (
    *("--heartbeat", f"{HEARTBEAT:g}", "--stalled-after", f"{STALLED_AFTER:g}"),
    *("--reap-interval", f"{REAP_INTERVAL:g}"),
)


def spec_for(srv: ModelServer) -> dict[str, Any]:
    """Two layers; each agent and the final synthesizer has a model of its own, so the
    server's per-model counts tell which nodes ran."""
    names = ["a1", "a2", "b1", "b2", "b3", "s"]
    return {
        "name": "scale",
        "models": {n: {"model": n, "base_url": srv.base_url, "max_retries": 0} for n in names},
        "agents": [{"name": n, "model": n} for n in names[:5]],
        "layers": [
            {"agents": ["a1", "a2"], "synthesizer": "concat"},
            {"agents": ["b1", "b2", "b3"], "synthesizer": {"model": "s"}},
        ],
    }


def calls(srv: ModelServer, marker: str) -> dict[str, int]:
    """Calls per model whose prompt carries ``marker`` (one run's calls)."""
    counts: dict[str, int] = {}
    for req in srv.requests:
        if marker in req.prompt:
            counts[req.model] = counts.get(req.model, 0) + 1
    return counts


class Workers:
    """`moa worker` subprocesses on one database, stopped by pid at the end."""

    def __init__(self, db_url: str, tmp: Path) -> None:
        self.db_url, self.tmp = db_url, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115
        args = [*TIMINGS, *extra]
        proc = subprocess.Popen(
            [sys.executable, "-m", "langgraph_moa.cli", "worker", "--db", self.db_url, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        index = self.procs.index(proc)
        return (self.tmp / f"worker{index}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(
            f"--- worker{i} ---\n" + (self.tmp / f"worker{i}.log").read_text(errors="replace")
            for i in range(len(self.procs))
        )

    async def ready(self, count: int) -> None:
        """Wait until ``count`` workers are registered with procrastinate."""
        async with await psycopg.AsyncConnection.connect(
            conninfo_of(self.db_url), autocommit=True
        ) as conn:
            for _ in range(int(WAIT * 10)):
                try:
                    cur = await conn.execute("SELECT count(*) FROM procrastinate_workers")
                    row = await cur.fetchone()
                    if row and row[0] >= count:
                        return
                except psycopg.errors.UndefinedTable:
                    pass
                for proc in self.procs:
                    assert proc.poll() is None, f"a worker exited early:\n{self.logs()}"
                await asyncio.sleep(0.1)
        raise AssertionError(f"{count} workers did not start:\n{self.logs()}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def workers(pg_url: str, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(pg_url, tmp_path)
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
async def queue(pg_url: str) -> AsyncIterator[RunQueue]:
    async with RunQueue(pg_url) as runs:
        yield runs


async def until(check: Callable[[], Any], what: str, workers: Workers | None = None) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    for _ in range(int(WAIT * 20)):
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"timed out waiting for {what}" + (f"\n{workers.logs()}" if workers else "")
    )


async def finished(queue: RunQueue, run_id: str, workers: Workers) -> Any:
    try:
        return await asyncio.wait_for(queue.wait(run_id), WAIT)
    except TimeoutError:
        raise AssertionError(f"run {run_id} did not end:\n{workers.logs()}") from None
