"""The server's parts inside a worker process (``moa worker``).

When ``moa serve`` queues runs to workers (``ProcrastinateExecutor``), a worker executes
them with :func:`open_run_handler`: the same code as the in-process executor, with the
graph rebuilt from the spec recorded with each run, and every event written to
``moa_run_events`` for the server to stream. :func:`run_cron_scheduler` fires the crons
from the workers (``moa serve --workers`` leaves them to the workers): each due tick is
claimed in the database (one firing per tick, whatever the number of workers) and its
run is queued like a run the server queues.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from langgraph_moa.server.service import MoAServer, ServerOptions

if TYPE_CHECKING:
    from langgraph_moa.runtime.workers import WorkerSettings

__all__ = ["open_run_handler", "run_cron_scheduler"]


@asynccontextmanager
async def open_run_handler(db_url: str, settings: WorkerSettings) -> AsyncIterator[MoAServer]:
    """A run handler (``execute``, ``dequeued``, ``cancel_local``) on the store ``db_url``.

    Its runs poll for cancel requests every ``settings.cancel_poll`` seconds and beat at
    least as often as ``moa serve``'s do by default, so a replica with the default
    ``--stale-after`` never takes a live worker's run for dead."""
    defaults = ServerOptions()
    options = ServerOptions(
        owner_heartbeat=min(settings.heartbeat_interval, defaults.owner_heartbeat),
        cancel_poll=settings.cancel_poll,
    )
    async with MoAServer([], db_url=db_url, options=options, role="worker") as handler:
        yield handler


async def run_cron_scheduler(db_url: str, *, poll: float = 5.0) -> None:
    """Fire due crons until cancelled, queueing their runs to the workers."""
    from langgraph_moa.runtime.workers import ProcrastinateExecutor

    executor = ProcrastinateExecutor(db_url)
    options = ServerOptions(cron_poll=poll)
    async with MoAServer(
        [], db_url=db_url, executor=executor, options=options, role="worker"
    ) as server:
        await executor.start(server)
        try:
            await server.schedule_crons()
        finally:
            await executor.aclose()
