"""The server object, independent of HTTP: assistants, threads, runs and their execution.

:class:`MoAServer` binds each configured spec (an *assistant*, addressed by its graph
name or a UUID derived from it) to the checkpointer, keeps threads and runs in the run
registry (``moa_threads``/``moa_runs``), executes runs through a :class:`RunExecutor`
and fans their events out through :class:`RunStreams`. Every thread belongs to a tenant;
a thread of another tenant is reported as missing (404), never as forbidden.

The parts live by resource: ``core.py`` (shared state and lookups), ``threads.py``,
``runs.py`` and ``execution.py``; this module assembles them and owns the lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, Self

from langgraph.store.base import TTLConfig

from langgraph_moa.persistence.assistants import AssistantStore
from langgraph_moa.persistence.crons import CronStore
from langgraph_moa.persistence.engines import get_async_engine, release_async_engine
from langgraph_moa.persistence.events import EventLog
from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.persistence.store import AsyncSQLAlchemyStore
from langgraph_moa.runtime.api import MoA
from langgraph_moa.runtime.executor import RunExecutor as Runner
from langgraph_moa.runtime.store import open_checkpointer
from langgraph_moa.server.core import (
    ACTIVE,
    NAMESPACE_GRAPH,
    ApiError,
    Assistant,
    LiveRun,
    ServerOptions,
)
from langgraph_moa.server.crons import CronService
from langgraph_moa.server.events import RunStreams
from langgraph_moa.server.execution import RunExecution
from langgraph_moa.server.protocol import ProtocolService
from langgraph_moa.server.threads import ThreadService

__all__ = ["ACTIVE", "NAMESPACE_GRAPH", "ApiError", "Assistant", "MoAServer", "ServerOptions"]

log = logging.getLogger("langgraph_moa.server")

STORE_TTL: TTLConfig = {"refresh_on_read": True, "omit_expired": True, "sweep_interval_minutes": 5}
"""The ``/store`` items: a read restarts an item's TTL; an expired item is never returned
and its row is deleted within 5 minutes."""


class MoAServer(ThreadService, ProtocolService, CronService, RunExecution):
    """Assistants, threads, runs and crons over the registry, the checkpointer and an
    executor.

    Use as an async context manager (or :meth:`start`/:meth:`stop`)::

        async with MoAServer([spec], db_url="sqlite:///moa.sqlite") as server:
            app.include_router(create_router(server))
    """

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the stores, compile the graphs, and resume runs a previous process left."""
        stack = AsyncExitStack()
        try:
            checkpointer = self._checkpointer
            if checkpointer is None:
                checkpointer = await stack.enter_async_context(open_checkpointer(self.db_url))
            # one engine (one pool) for the registry, the event log and the checkpointer
            self.registry = RunRegistry.from_url(self.db_url)
            stack.push_async_callback(self.registry.aclose)
            await self.registry.setup()
            self.assistant_store = AssistantStore(self.registry.engine)
            await self.assistant_store.setup()
            self.cron_store = CronStore(self.registry.engine)
            await self.cron_store.setup()
            self.runner = Runner(
                self.registry,
                heartbeat_interval=self.options.owner_heartbeat,
                stale_after=self.options.stale_after,
                cancel_poll=self.options.cancel_poll,
            )
            events = EventLog.from_url(self.db_url)
            stack.push_async_callback(events.aclose)
            self.streams = RunStreams(events)
            await self.streams.setup()
            self.store = AsyncSQLAlchemyStore(get_async_engine(self.db_url), ttl=STORE_TTL)
            stack.push_async_callback(release_async_engine, self.store.engine)
            await self.store.setup()
            self.checkpointer = checkpointer
            now = datetime.now(UTC).isoformat()
            for spec in self.specs:
                moa = MoA(spec, checkpointer=checkpointer)
                await stack.enter_async_context(moa)
                self.assistants[spec.name] = Assistant(spec, moa, now)
            self._run_graphs_stack = stack
            if self.role == "server":
                await self.store.start_ttl_sweeper()
                stack.push_async_callback(self.store.stop_ttl_sweeper)
                await self.executor.start(self)
                stack.push_async_callback(self._shutdown_executor)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        if self.role == "server":
            pruner = asyncio.create_task(self._prune_events(), name="moa-prune-events")
            stack.push_async_callback(_cancel_task, pruner)
            if self.options.crons:
                scheduler = asyncio.create_task(self.schedule_crons(), name="moa-crons")
                stack.push_async_callback(_cancel_task, scheduler)
        if self.role == "server" and self.in_process:
            await self._resume_left_runs()
            keeper = asyncio.create_task(self._keep_runs(), name="moa-keep-runs")
            stack.push_async_callback(_cancel_task, keeper)
            listener = asyncio.create_task(
                self.runner.listen_for_cancels(self._cancel_queued), name="moa-cancels"
            )
            stack.push_async_callback(_cancel_task, listener)

    async def stop(self) -> None:
        """Stop running runs (they resume at the next start) and close the stores."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def _shutdown_executor(self) -> None:
        self._stopping = True
        await self.executor.aclose()

    async def _resume_left_runs(self) -> None:
        """Server runs whose process is gone (this one before a restart, or another
        replica): continue or start them here, oldest first."""
        for run in await self.registry.stale_runs(stale_after=self.options.stale_after):
            if not run.options.get("server") or run.run_id in self._live:
                continue  # someone else's (e.g. a worker queue's) run, or ours already
            log.warning(
                "run %s (%s, %s): its process is gone; continuing it here",
                run.run_id,
                run.status,
                run.describe_owner(),
            )
            self.streams.open(run.run_id, persist=self._persist(run))
            self._live.setdefault(run.run_id, LiveRun())
            # resume=True: it goes before this process's queue (a newer run of its thread
            # waiting here must not hold it up); a run that never started starts afresh
            await self.executor.submit(run.run_id, run.thread_id, resume=True)

    async def _cancel_queued(self, run_id: str) -> None:
        """A cancel request (from any process) for a run queued here."""
        if run_id in self._live:
            await self.executor.cancel(run_id)

    async def _keep_runs(self) -> None:
        """Every ``owner_heartbeat`` seconds: tell the registry this process still holds its
        queued runs, pass on cancel requests for them made elsewhere, and take over the
        runs of processes that died (see ``ServerOptions.stale_after``)."""
        while True:
            await asyncio.sleep(self.options.owner_heartbeat)
            try:
                here = list(self._live)
                await self.registry.beat_owned(self.owner, here)
                for run_id in await self.registry.cancel_requested(here):
                    if not self.runner.cancel_local(run_id):
                        await self.executor.cancel(run_id)
                await self._resume_left_runs()
            except Exception:  # the database may be back at the next round
                log.warning("keeping the runs of this process failed", exc_info=True)

    async def _prune_events(self) -> None:
        while True:
            try:
                await self.streams.prune(self.options.stream_ttl)
            except Exception:
                log.warning("cannot prune old stream events", exc_info=True)
            await asyncio.sleep(min(3600.0, self.options.stream_ttl))


async def _cancel_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
