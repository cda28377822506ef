"""Run streams: live fan-out of a run's SSE events, and their SQL log for replay.

Events of runs created with ``stream_resumable`` (or of every run, when the server
persists all streams, as runs executed by workers in other processes need) are written
to ``moa_run_events`` before they are fanned out; the row id is the SSE event id, so a
client that reconnects with ``Last-Event-ID: n`` gets every event after ``n`` and then
the live ones. The table has the same shape as the one
:mod:`langgraph_moa.runtime.worker_events` writes on PostgreSQL (``id``, ``run_id``,
``event``, ``data`` JSON, ``created_at``), so a server can follow runs that workers
stream, on any of the three databases. Migrations are recorded in
``moa_server_migrations``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "END",
    "RunStreams",
    "StreamEvent",
    "engine_json_options",
    "events_table",
    "migrate",
]

metadata = sa.MetaData()

events_table = sa.Table(
    "moa_run_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("event", sa.String(255), nullable=False),
    sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Index("moa_run_events_run_id_idx", "run_id", "id"),
)

migrations_table = sa.Table(
    "moa_server_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

MIGRATIONS: list[Callable[[sa.Connection], None]] = [
    lambda conn: events_table.create(conn, checkfirst=True),
]


def _json_loads(value: Any) -> Any:
    # SQLite gives a JSON column NUMERIC affinity: a bare number comes back as a number
    return value if isinstance(value, int | float) else orjson.loads(value)


def engine_json_options() -> dict[str, Any]:
    """``create_async_engine`` arguments that make JSON columns use orjson, so event
    bodies (already JSON bytes) are stored as they are."""
    return {
        "json_serializer": lambda obj: orjson.dumps(obj).decode(),
        "json_deserializer": _json_loads,
    }


INTERNAL_EVENTS = frozenset({"end"})
"""Logged (they tell followers a run is over) but never sent to clients."""


async def migrate(engine: AsyncEngine) -> None:
    """Create or upgrade the server's tables (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: migrations_table.create(c, checkfirst=True))
        done = {r[0] for r in await conn.execute(sa.select(migrations_table.c.version))}
        for version, step in enumerate(MIGRATIONS, start=1):
            if version not in done:
                await conn.run_sync(step)
                await conn.execute(
                    migrations_table.insert().values(version=version, applied_at=time.time())
                )


@dataclass(frozen=True)
class StreamEvent:
    """One SSE event: its name, its JSON body, its sequence number (the log's row id when
    the run's stream is persisted)."""

    event: str
    data: bytes
    seq: int


END = StreamEvent("end", b"null", -1)
"""Put in subscriber queues when a run's stream is over (never sent to clients)."""


@dataclass
class _Channel:
    persist: bool
    seq: int = 0
    subscribers: set[asyncio.Queue[StreamEvent]] = field(default_factory=set)


def _row(row: Any) -> StreamEvent:
    return StreamEvent(row.event, orjson.dumps(row.data), int(row.id))


class RunStreams:
    """Sequence, persist and fan out the events of runs.

    ``engine`` must serialize JSON with orjson (``json_serializer=`` of the engine) so
    that already encoded event bodies go into the log as they are.
    """

    def __init__(self, engine: AsyncEngine, *, poll_interval: float = 0.25) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self._channels: dict[str, _Channel] = {}

    async def setup(self) -> None:
        await migrate(self.engine)

    def open(self, run_id: str, *, persist: bool) -> None:
        """Start the stream of ``run_id`` here (before anyone subscribes or publishes)."""
        self._channels.setdefault(run_id, _Channel(persist=persist))

    def is_open(self, run_id: str) -> bool:
        return run_id in self._channels

    async def _append(self, run_id: str, event: str, data: bytes) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                events_table.insert().values(run_id=run_id, event=event, data=orjson.Fragment(data))
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def publish(self, run_id: str, event: str, data: bytes) -> None:
        """Send one event to every subscriber (logging it first if the run persists)."""
        channel = self._channels[run_id]
        if channel.persist:
            channel.seq = await self._append(run_id, event, data)
        else:
            channel.seq += 1
        item = StreamEvent(event, data, channel.seq)
        for queue in list(channel.subscribers):
            queue.put_nowait(item)

    async def log(self, run_id: str, event: str, data: bytes) -> None:
        """Log an event without a live channel (e.g. the error of a run that cannot resume)."""
        await self._append(run_id, event, data)

    async def close(self, run_id: str) -> None:
        """End the stream: subscribers drain what they have and stop."""
        channel = self._channels.pop(run_id, None)
        if channel is None:
            return
        if channel.persist:
            await self._append(run_id, END.event, END.data)
        for queue in list(channel.subscribers):
            queue.put_nowait(END)

    def forget(self, run_id: str) -> None:
        """Drop the live channel without ending the stream (another process continues it)."""
        channel = self._channels.pop(run_id, None)
        for queue in list(channel.subscribers if channel else ()):
            queue.put_nowait(END)

    async def logged(self, run_id: str, after: int = 0) -> list[StreamEvent]:
        """Logged events of ``run_id`` after row id ``after``, in order."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(events_table.c.id, events_table.c.event, events_table.c.data)
                .where(events_table.c.run_id == run_id, events_table.c.id > after)
                .order_by(events_table.c.id)
            )
            return [_row(r) for r in rows]

    async def last_logged(self, run_id: str, event: str) -> StreamEvent | None:
        """The last logged ``event`` of ``run_id``."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(events_table.c.id, events_table.c.event, events_table.c.data)
                    .where(events_table.c.run_id == run_id, events_table.c.event == event)
                    .order_by(events_table.c.id.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else _row(row)

    async def delete(self, run_ids: list[str]) -> None:
        """Forget the logged events of ``run_ids``."""
        if run_ids:
            async with self.engine.begin() as conn:
                await conn.execute(events_table.delete().where(events_table.c.run_id.in_(run_ids)))

    async def prune(self, older_than: float) -> int:
        """Delete logged events older than ``older_than`` seconds; how many went."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        if self.engine.dialect.name != "postgresql":
            cutoff = cutoff.replace(tzinfo=None)  # stored as naive UTC there
        async with self.engine.begin() as conn:
            result = await conn.execute(
                events_table.delete().where(events_table.c.created_at < cutoff)
            )
            return int(result.rowcount or 0)

    def subscribe(
        self,
        run_id: str,
        *,
        last_event_id: int | None = None,
        is_active: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The events of ``run_id``: logged ones after ``last_event_id`` (when given), then
        live ones until the run ends. Live events are buffered from this call on, so
        subscribe before starting a run to see all of it. A run that is not streamed by
        this process (a worker's, or one that already ended) is read from the log, which
        is polled while ``is_active()`` says the run goes on."""
        channel = self._channels.get(run_id)
        if channel is None:
            return self._follow_log(run_id, last_event_id, is_active)
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        channel.subscribers.add(queue)
        return self._live(run_id, channel, queue, last_event_id)

    async def _live(
        self,
        run_id: str,
        channel: _Channel,
        queue: asyncio.Queue[StreamEvent],
        last_event_id: int | None,
    ) -> AsyncIterator[StreamEvent]:
        try:
            seen = 0
            if last_event_id is not None and channel.persist:
                seen = last_event_id
                for item in await self.logged(run_id, last_event_id):
                    seen = item.seq
                    if item.event not in INTERNAL_EVENTS:
                        yield item
            while True:
                item = await queue.get()
                if item is END:
                    return
                if item.seq > seen:
                    yield item
        finally:
            channel.subscribers.discard(queue)

    async def _follow_log(
        self,
        run_id: str,
        last_event_id: int | None,
        is_active: Callable[[], Awaitable[bool]] | None,
    ) -> AsyncIterator[StreamEvent]:
        after = last_event_id or 0
        while True:
            active = is_active is not None and await is_active()
            if last_event_id is not None or active:
                for item in await self.logged(run_id, after):
                    after = item.seq
                    if item.event == END.event:
                        return
                    yield item
            if run_id in self._channels:  # it was started here meanwhile: go live
                async for item in self.subscribe(run_id, last_event_id=after):
                    yield item
                return
            if not active:
                return
            await asyncio.sleep(self.poll_interval)
