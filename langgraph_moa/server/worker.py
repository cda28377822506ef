"""The server's run handler inside a worker process (``moa worker``).

When ``moa serve`` queues runs to workers (``ProcrastinateExecutor``), a worker executes
them with :func:`open_run_handler`: the same code as the in-process executor, with the
graph rebuilt from the spec recorded with each run, and every event written to
``moa_run_events`` for the server to stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph_moa.server.service import MoAServer, ServerOptions

__all__ = ["open_run_handler"]


@asynccontextmanager
async def open_run_handler(db_url: str) -> AsyncIterator[MoAServer]:
    """A run handler (``execute``, ``dequeued``) on the store ``db_url``."""
    async with MoAServer([], db_url=db_url, options=ServerOptions(), role="worker") as handler:
        yield handler
