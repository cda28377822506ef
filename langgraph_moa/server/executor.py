"""Where runs execute: the :class:`RunExecutor` seam and its in-process implementation.

The HTTP layer records a run as ``pending`` in the run registry, then hands its id to an
executor. :class:`InProcessExecutor` runs it as an asyncio task of the server process, at
most ``max_concurrency`` at a time and one at a time per thread (later runs of a thread
wait for the earlier ones: ``multitask_strategy="enqueue"``; across processes the thread's
lease in the registry orders them; a run taken over from a dead process skips both queues,
as newer runs of its thread wait for it). An executor backed by
workers in other processes implements the same protocol: ``submit`` defers a job for the
run, ``cancel`` drops it while queued; the workers execute :meth:`RunHandler.execute` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Protocol

__all__ = ["InProcessExecutor", "RunExecutor", "RunHandler"]

log = logging.getLogger(__name__)


class RunHandler(Protocol):
    """What an executor calls."""

    async def execute(self, run_id: str, *, resume: bool) -> None:
        """Run ``run_id`` to its end and record its status. Never raises in the server; in
        a worker, raises what the worker acts on (a busy or lost run, a cancellation)."""

    async def dequeued(self, run_id: str) -> None:
        """``run_id`` was cancelled before it started: record that."""

    def cancel_local(self, run_id: str) -> bool:
        """Stop ``run_id`` at once if it runs in this process; False otherwise."""
        ...


class RunExecutor(Protocol):
    """Runs the runs the server accepted."""

    async def start(self, handler: RunHandler) -> None:
        """Begin accepting runs; ``handler`` executes them."""

    async def submit(self, run_id: str, thread_id: str, *, resume: bool = False) -> None:
        """Execute ``run_id`` after the earlier runs of ``thread_id``. ``resume`` continues
        a run that was running when the server stopped."""

    async def cancel(self, run_id: str) -> bool:
        """Stop ``run_id`` (running or queued); False when this executor does not have it."""

    async def wait(self, run_id: str) -> None:
        """Return once ``run_id`` is no longer executing here."""

    async def aclose(self) -> None:
        """Stop every run (they stay resumable) and accept no more."""


class InProcessExecutor:
    """Runs as asyncio tasks of this process: bounded overall, ordered per thread."""

    in_process = True
    """Runs stream from this process (an executor without it streams through the log)."""

    def __init__(self, max_concurrency: int = 8) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._thread_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._handler: RunHandler | None = None
        self._closing = False

    async def start(self, handler: RunHandler) -> None:
        self._handler = handler

    async def submit(self, run_id: str, thread_id: str, *, resume: bool = False) -> None:
        if self._handler is None or self._closing:
            raise RuntimeError("the executor is not running")
        if run_id in self._tasks:
            return
        task = asyncio.create_task(self._run(run_id, thread_id, resume), name=f"moa-run-{run_id}")
        self._tasks[run_id] = task

    async def _run(self, run_id: str, thread_id: str, resume: bool) -> None:
        assert self._handler is not None
        started = False
        lock = self._thread_locks[thread_id]
        try:
            if resume:  # a run taken over from a dead process: it goes before queued ones
                started = True
                await self._handler.execute(run_id, resume=resume)
                return
            async with lock, self._slots:
                started = True
                await self._handler.execute(run_id, resume=resume)
        except asyncio.CancelledError:
            if not started and not self._closing:
                await asyncio.shield(self._handler.dequeued(run_id))
        except Exception:  # the handler records errors itself; this is a last resort
            log.exception("run %s failed outside its handler", run_id)
        finally:
            self._tasks.pop(run_id, None)
            if not lock.locked() and thread_id in self._thread_locks:
                waiting = getattr(lock, "_waiters", None)
                if not waiting:
                    self._thread_locks.pop(thread_id, None)

    async def cancel(self, run_id: str) -> bool:
        task = self._tasks.get(run_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def wait(self, run_id: str) -> None:
        task = self._tasks.get(run_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    def running(self) -> list[str]:
        """Ids of the runs this executor holds (running or queued)."""
        return list(self._tasks)

    async def aclose(self) -> None:
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
