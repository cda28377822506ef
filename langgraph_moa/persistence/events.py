"""The event log of runs: ``moa_run_events``, shared by the HTTP server and the workers.

Whoever executes a run appends its stream chunks here; anyone else (the server that
streams the run to a client, ``moa run --submit --wait``) reads the rows after the last
id it has seen, so a client that reconnects with ``Last-Event-ID: n`` replays what it
missed. On PostgreSQL an append sends ``NOTIFY moa_run_events, '<run_id>'`` in the same
transaction and followers ``LISTEN``; elsewhere followers poll (``poll_interval``), and
followers in the appending process are woken at once. The rows are the truth:
notifications only wake readers early.

Table ``moa_run_events``: ``id`` (ascending, the SSE event id), ``run_id``, ``event``,
``data`` (JSON), ``created_at``. An ``end`` event (data ``null``) closes the events of
one execution of a run (:data:`TERMINAL_EVENTS`).

```python
async with EventLog.from_url(db_url) as log:        # tables set up on enter
    event_id = await log.append(run_id, "values", {"answer": "..."})
    async for event in log.follow(run_id, after=last_seen):
        ...
```
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence import migrations
from langgraph_moa.persistence.engines import READ_ONLY, get_async_engine, release_async_engine

__all__ = [
    "ANY_RUN",
    "CHANNEL",
    "TERMINAL_EVENTS",
    "EventLog",
    "RunEvent",
    "dumps",
    "events",
    "row_event",
    "thread_event_key",
]

log = logging.getLogger(__name__)

CHANNEL = "moa_run_events"
"""The PostgreSQL notification channel; the payload is the run id."""

ANY_RUN = "*"
"""Waiters under this key are woken by an event of any run."""

TERMINAL_EVENTS = frozenset({"end"})
"""The event (data ``null``) after which an execution of a run writes nothing more; an
``error`` event comes before it when the run failed."""

metadata = sa.MetaData()
events = sa.Table(
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
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("moa_run_events_run_id_idx", "run_id", "id"),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)


def thread_event_key(thread_id: str, created_at: datetime) -> str:
    """The ``run_id`` under which events of a thread itself (not of one of its runs, e.g.
    ``state_update``) are logged: ``thread:`` and a hash of the id and of the thread's
    ``created_at`` (ids may be longer than the column; a run id is a UUID, so the two
    never meet). A thread deleted and created again under the same id (maybe by another
    tenant) has another key, so it never reads the old thread's events, even one written
    late, after the delete."""
    if created_at.tzinfo is not None:  # the same instant, however the row was read
        created_at = created_at.astimezone(UTC).replace(tzinfo=None)
    stamp = created_at.isoformat(timespec="microseconds")
    return "thread:" + hashlib.sha256(f"{thread_id}\n{stamp}".encode()).hexdigest()[:57]


def _default(obj: Any) -> Any:
    """JSON fallback for what LangGraph streams: messages, dataclasses, sets, datetimes."""
    from langgraph.types import Interrupt, Overwrite, Send  # only what JSON cannot hold

    if isinstance(obj, Overwrite):
        return obj.value
    if isinstance(obj, Interrupt):
        return {"value": obj.value, "id": obj.id}
    if isinstance(obj, Send):
        return {"node": obj.node, "arg": obj.arg}
    if hasattr(obj, "model_dump") and not isinstance(obj, type):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__, "message": str(obj)}
    return repr(obj)


_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(obj: Any) -> bytes:
    """JSON bytes of a stream chunk (messages become their ``model_dump``, interrupts
    ``{value, id}``, anything else JSON cannot hold its ``repr``)."""
    return orjson.dumps(obj, default=_default, option=_OPTS)


def _parse(text: Any) -> Any:
    if isinstance(text, int | float):  # SQLite: a JSON number read back as a number
        return text
    return orjson.loads(text)


@dataclass(frozen=True)
class RunEvent:
    """One stored event of a run; ``id`` orders the events of a run and resumes a stream.
    ``raw`` is ``data`` as JSON bytes."""

    id: int
    run_id: str
    event: str
    raw: bytes

    @property
    def data(self) -> Any:
        return orjson.loads(self.raw)

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


def row_event(row: Any) -> RunEvent:
    """The :class:`RunEvent` of a selected ``(id, run_id, event, data as text)`` row."""
    text = row[3]
    raw = orjson.dumps(text) if isinstance(text, int | float) else str(text).encode()
    return RunEvent(id=int(row[0]), run_id=row[1], event=row[2], raw=raw)


class EventLog:
    """Append, read and follow run events in ``moa_run_events`` (see the module docs)."""

    def __init__(
        self, engine: AsyncEngine, *, poll_interval: float = 0.5, owns_engine: bool = False
    ) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self.backend = engine.dialect.name
        self._owns_engine = owns_engine
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while the PostgreSQL LISTEN connection is up (started by the first follower)."""
        self._insert = events.insert().values(
            run_id=sa.bindparam("run_id"),
            event=sa.bindparam("event"),
            data=self._json_param(),
            created_at=sa.bindparam("created_at", type_=events.c.created_at.type),
        )

    def _json_param(self) -> Any:
        text = sa.bindparam("data", type_=sa.Text())
        return sa.cast(text, postgresql.JSONB()) if self.backend == "postgresql" else text

    @classmethod
    def from_url(cls, url: str | sa.URL, *, poll_interval: float = 0.5) -> EventLog:
        """A log on the process's engine of ``url`` (given back by :meth:`aclose`)."""
        return cls(get_async_engine(url), poll_interval=poll_interval, owns_engine=True)

    async def setup(self) -> int:
        """Create or upgrade the table (see :mod:`.migrations`); returns its version."""
        return await migrations.aupgrade(self.engine, "events")

    async def aclose(self) -> None:
        """Stop listening; give back the engine if :meth:`from_url` took it."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
            self.listening.clear()
        if self._owns_engine:
            self._owns_engine = False
            await release_async_engine(self.engine)

    async def __aenter__(self) -> EventLog:
        try:
            await self.setup()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- writing ---

    def _row(self, run_id: str, event: str, data: Any) -> dict[str, Any]:
        raw = data if isinstance(data, bytes) else dumps(data)
        now = datetime.now(UTC)
        return {
            "run_id": run_id,
            "event": event,
            "data": raw.decode(),
            "created_at": now if self.backend == "postgresql" else now.replace(tzinfo=None),
        }

    async def _notify(self, conn: Any, run_id: str) -> None:
        if self.backend == "postgresql":
            await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, run_id)))

    def _wake(self, run_id: str) -> None:
        for waiter in (*self._waiters.get(run_id, ()), *self._waiters.get(ANY_RUN, ())):
            waiter.set()

    async def append(self, run_id: str, event: str, data: Any) -> int:
        """Store one event (``data``: a JSON-able object, or JSON bytes as they are) and
        wake its followers; returns the event id."""
        async with self.engine.begin() as conn:
            result = await conn.execute(self._insert, self._row(run_id, event, data))
            await self._notify(conn, run_id)
        self._wake(run_id)
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def extend(self, run_id: str, items: Sequence[tuple[str, Any]]) -> None:
        """Store several events of a run in one transaction, with one notification."""
        if not items:
            return
        rows = [self._row(run_id, event, data) for event, data in items]
        async with self.engine.begin() as conn:
            await conn.execute(self._insert, rows)
            await self._notify(conn, run_id)
        self._wake(run_id)

    @contextlib.asynccontextmanager
    async def writer(
        self, run_id: str, *, retry_for: float = 60.0
    ) -> AsyncIterator[Callable[[str, Any], None]]:
        """A non-blocking ``emit(event, data)`` for a run: a background task writes what
        has accumulated in one transaction at a time, in order, so a run never waits for
        the database between two chunks. Everything is written when the block exits.

        A write the database refuses (connection lost, failover, lock timeout) is retried
        with backoff, the events kept in order in memory, so a blip does not end the run;
        only when writes have failed for ``retry_for`` seconds does the block raise (at
        once for rows the database refuses as such: integrity or data errors). A
        connection lost during the commit may store a batch twice."""
        pending: list[tuple[str, Any]] = []
        wake = asyncio.Event()
        closing = False

        async def flush() -> None:
            failing_since: float | None = None
            delay = 0.05
            while True:
                await wake.wait()
                wake.clear()
                while pending:
                    batch = pending[:]
                    try:
                        await self.extend(run_id, batch)
                    except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
                        if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError):
                            raise  # the rows themselves are refused: a retry cannot help
                        now = asyncio.get_running_loop().time()
                        failing_since = now if failing_since is None else failing_since
                        if now - failing_since >= retry_for:
                            raise
                        log.warning(
                            "event log of run %s: write failed (%s), retrying in %.2f s",
                            run_id,
                            exc.__class__.__name__,
                            delay,
                        )
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
                        continue
                    del pending[: len(batch)]
                    failing_since, delay = None, 0.05
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
            if task.done():  # writes failed for retry_for: report it rather than hide it
                task.result()
            await asyncio.shield(task)

    # ----------------------------------------------------------------- reading ---

    def _select(self) -> sa.Select[Any]:
        return sa.select(
            events.c.id, events.c.run_id, events.c.event, sa.cast(events.c.data, sa.Text())
        )

    async def read(self, run_id: str, after: int = 0) -> list[RunEvent]:
        """The events of ``run_id`` with an id above ``after``, in order."""
        query = self._select().where(events.c.run_id == run_id, events.c.id > after)
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            rows = (await conn.execute(query.order_by(events.c.id))).all()
        return [row_event(r) for r in rows]

    async def last(self, run_id: str, event: str | None = None) -> RunEvent | None:
        """The latest event of ``run_id`` (of that ``event`` name, if given)."""
        query = self._select().where(events.c.run_id == run_id)
        if event is not None:
            query = query.where(events.c.event == event)
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            row = (await conn.execute(query.order_by(events.c.id.desc()).limit(1))).first()
        return None if row is None else row_event(row)

    async def wait(self, run_id: str, timeout: float | None = None) -> None:
        """Return when an event of ``run_id`` may have been appended (a notification, an
        append in this process) or after ``timeout`` (default ``poll_interval``)."""
        self._ensure_listener()
        waiter = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), timeout or self.poll_interval)
        finally:
            self._discard(run_id, waiter)

    async def wait_any(self, timeout: float | None = None) -> None:
        """Like :meth:`wait`, for an event of any run (e.g. to follow a thread's runs)."""
        await self.wait(ANY_RUN, timeout)

    def _discard(self, run_id: str, waiter: asyncio.Event) -> None:
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[run_id]

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
                for item in await self.read(run_id, after):
                    yield item
                    after = item.id
                    if until_terminal and item.terminal:
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), self.poll_interval)
        finally:
            self._discard(run_id, waiter)

    # --------------------------------------------------------------- retention ---

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete the events of ``run_ids``; returns how many rows went."""
        if not run_ids:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(events.delete().where(events.c.run_id.in_(run_ids)))
            return int(result.rowcount or 0)

    async def prune(self, older_than: timedelta) -> int:
        """Delete events written more than ``older_than`` ago; returns how many went."""
        cutoff = datetime.now(UTC) - older_than
        if self.backend != "postgresql":
            cutoff = cutoff.replace(tzinfo=None)  # stored as naive UTC there
        async with self.engine.begin() as conn:
            result = await conn.execute(events.delete().where(events.c.created_at < cutoff))
            return int(result.rowcount or 0)

    # -------------------------------------------------------------- notifications ---

    def _ensure_listener(self) -> None:
        if self.backend != "postgresql":
            return
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="moa-run-events-listener")

    async def _listen(self) -> None:
        """One LISTEN connection per log (outside the pool); reconnects after errors
        (followers poll meanwhile)."""
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    for waiters in list(self._waiters.values()):  # catch up after a reconnect
                        for waiter in waiters:
                            waiter.set()
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except psycopg.OperationalError as exc:
                self.listening.clear()
                log.warning("run events listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(self.poll_interval)
