"""Run events across processes: a PostgreSQL table plus LISTEN/NOTIFY.

A worker appends each stream chunk of a run as a row of ``moa_run_events`` and sends
``NOTIFY moa_run_events, '<run_id>'`` in the same transaction. Any other process (the HTTP
server, ``moa run --submit --wait``) reads the rows after the last id it has seen, so a
reconnecting client replays what it missed by passing that id back (SSE ``Last-Event-ID``).
Notifications only wake readers; the rows are the truth, and readers also poll, so a
notification lost with a dropped connection delays a reader but never loses an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from langgraph.types import Interrupt, Overwrite, Send
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

__all__ = ["TERMINAL_EVENTS", "EventStore", "RunEvent", "dumps"]

log = logging.getLogger(__name__)

CHANNEL = "moa_run_events"
TERMINAL_EVENTS = frozenset({"end"})
"""The event (data ``null``) after which an execution of a run writes nothing more; an
``error`` event comes before it when the run failed."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS moa_run_events (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    event text NOT NULL,
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS moa_run_events_run_id_idx ON moa_run_events (run_id, id);
"""


def _default(obj: Any) -> Any:
    """JSON fallback for what LangGraph streams: messages, dataclasses, sets, datetimes."""
    if isinstance(obj, Overwrite):
        return obj.value
    if isinstance(obj, Interrupt):
        return {"value": obj.value, "id": obj.id}
    if isinstance(obj, Send):
        return {"node": obj.node, "arg": obj.arg}
    if hasattr(obj, "model_dump") and not isinstance(obj, type):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    return repr(obj)


def dumps(obj: Any) -> str:
    """JSON text of a stream chunk, as the HTTP server's serde writes it (messages become
    their ``model_dump``, interrupts ``{value, id}``)."""
    return json.dumps(obj, default=_default)


@dataclass(frozen=True)
class RunEvent:
    """One stored event of a run; ``id`` orders the events of a run and resumes a stream."""

    id: int
    run_id: str
    event: str
    data: Any

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


class EventStore:
    """Append and follow run events in PostgreSQL (``conninfo``: a libpq connection string)."""

    def __init__(self, conninfo: str, *, poll_interval: float = 2.0, max_size: int = 4) -> None:
        self.conninfo = conninfo
        self.poll_interval = poll_interval
        self._pool = AsyncConnectionPool(conninfo, min_size=1, max_size=max_size, open=False)
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStore:
        await self._pool.open(wait=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await self._pool.close()

    async def setup(self) -> None:
        """Create the events table (idempotent)."""
        async with self._pool.connection() as conn:
            await conn.execute(SCHEMA)

    async def append(self, run_id: str, event: str, data: Any) -> int:
        """Store one event and wake its readers; returns the event id."""
        payload = Jsonb(data, dumps=dumps)
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO moa_run_events (run_id, event, data) VALUES (%s, %s, %s) RETURNING id",
                (run_id, event, payload),
            )
            row = await cur.fetchone()
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))
        assert row is not None
        return int(row[0])

    async def extend(self, run_id: str, events: list[tuple[str, Any]]) -> None:
        """Store several events of a run in one transaction, with one notification."""
        if not events:
            return
        rows = [(run_id, event, Jsonb(data, dumps=dumps)) for event, data in events]
        async with self._pool.connection() as conn, conn.transaction():
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO moa_run_events (run_id, event, data) VALUES (%s, %s, %s)", rows
                )
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))

    @contextlib.asynccontextmanager
    async def writer(self, run_id: str) -> AsyncIterator[Callable[[str, Any], None]]:
        """A non-blocking ``emit(event, data)`` for a run: a background task writes what
        has accumulated in one transaction at a time, in order, so a run never waits for
        the database between two chunks. Everything is written when the block exits."""
        pending: list[tuple[str, Any]] = []
        wake = asyncio.Event()
        closing = False

        async def flush() -> None:
            while True:
                await wake.wait()
                wake.clear()
                while pending:
                    batch = pending[:]
                    del pending[: len(batch)]
                    await self.extend(run_id, batch)
                if closing:
                    return

        def emit(event: str, data: Any) -> None:
            pending.append((event, data))
            wake.set()

        task = asyncio.create_task(flush(), name=f"moa-events-{run_id}")
        try:
            yield emit
        finally:
            closing = True
            wake.set()
            if task.done():  # a failed write: report it rather than hide it
                task.result()
            await asyncio.shield(task)

    async def read(self, run_id: str, after: int = 0) -> list[RunEvent]:
        """The events of ``run_id`` with an id above ``after``, in order."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, event, data FROM moa_run_events WHERE run_id = %s AND id > %s "
                "ORDER BY id",
                (run_id, after),
            )
            rows = await cur.fetchall()
        return [RunEvent(id=r[0], run_id=run_id, event=r[1], data=r[2]) for r in rows]

    async def last(self, run_id: str) -> RunEvent | None:
        """The latest event of ``run_id``."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, event, data FROM moa_run_events WHERE run_id = %s "
                "ORDER BY id DESC LIMIT 1",
                (run_id,),
            )
            row = await cur.fetchone()
        return RunEvent(id=row[0], run_id=run_id, event=row[1], data=row[2]) if row else None

    async def follow(
        self, run_id: str, after: int = 0, *, until_terminal: bool = True
    ) -> AsyncIterator[RunEvent]:
        """Events of ``run_id`` after ``after``, live; ends after a terminal event."""
        self._ensure_listener()
        waiter = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(waiter)
        try:
            while True:
                waiter.clear()
                for event in await self.read(run_id, after):
                    yield event
                    after = event.id
                    if until_terminal and event.terminal:
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), self.poll_interval)
        finally:
            waiters = self._waiters.get(run_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[run_id]

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="moa-run-events-listener")

    async def _listen(self) -> None:
        """One LISTEN connection per store; reconnects after errors (readers poll meanwhile)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    for waiters in self._waiters.values():  # catch up after a reconnect
                        for waiter in waiters:
                            waiter.set()
                    async for note in conn.notifies():
                        for waiter in self._waiters.get(note.payload, ()):
                            waiter.set()
            except psycopg.OperationalError as exc:
                log.warning("run events listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(self.poll_interval)
