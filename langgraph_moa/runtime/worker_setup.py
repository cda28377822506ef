"""The worker backend's set-up: PostgreSQL connection strings, the ``moa.run`` task name
and queue, and the schema (procrastinate's, the events table, the registry) applied under
an advisory lock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import procrastinate
import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from langgraph_moa.persistence.events import EventLog
from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.runtime.store import resolve_db_url

log = logging.getLogger("langgraph_moa.runtime.workers")

TASK_NAME = "moa.run"
DEFAULT_QUEUE = "moa"


_SCHEMA_LOCK = 0x6D6F_6173  # advisory lock key ("moas")


class WorkerConfigError(ValueError):
    """The worker backend cannot be used as configured."""


def conninfo_of(db_url: str | None) -> str:
    """The libpq connection string of a PostgreSQL SQLAlchemy URL (``--db`` / MOA_DB_URL)."""
    url_text = resolve_db_url(db_url)
    try:
        url = make_url(url_text)
    except ArgumentError as exc:
        raise WorkerConfigError(f"--db / MOA_DB_URL: cannot parse {url_text!r}: {exc}") from None
    if url.get_backend_name() != "postgresql":
        raise WorkerConfigError(
            f"--db / MOA_DB_URL: workers need PostgreSQL (procrastinate keeps its queue "
            f"there), got a {url.get_backend_name()} URL {url.render_as_string()!r}; use e.g. "
            "postgresql+psycopg://user@host/db, or run without workers"
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def schema_lock(conninfo: str) -> AsyncIterator[None]:
    """Hold a PostgreSQL advisory lock while creating tables, so that processes starting
    together do not race on DDL. Waiters poll (no statement stays open while waiting,
    which ``CREATE INDEX CONCURRENTLY`` in a checkpointer's setup would wait for)."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while True:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_SCHEMA_LOCK,))
            row = await cur.fetchone()
            if row and row[0]:
                break
            await asyncio.sleep(0.1)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))


def _conninfo(events: EventLog) -> str:
    return conninfo_of(events.engine.url.render_as_string(hide_password=False))


async def setup_schema(
    app: procrastinate.App, events: EventLog, registry: RunRegistry | None = None
) -> None:
    """Apply procrastinate's schema when missing, the events table and the registry.

    Idempotent and safe when several processes start at once (see :func:`schema_lock`).
    """
    async with schema_lock(_conninfo(events)):
        if not await app.check_connection_async():
            await app.schema_manager.apply_schema_async()
            log.info("applied the procrastinate schema")
        await events.setup()
        if registry is not None:
            await registry.setup()
