"""The run-event log of the server (``moa_run_events``) on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import logging

import pytest
import sqlalchemy as sa

from langgraph_moa.persistence.events import EventLog
from langgraph_moa.server import serde
from langgraph_moa.server.events import RunStreams


async def test_log_replay_follow_and_prune(db_url: str) -> None:
    log = EventLog.from_url(db_url)
    try:
        streams = RunStreams(log, poll_interval=0.05)
        await streams.setup()
        await streams.setup()  # idempotent
        streams.open("r1", persist=True)
        live = streams.subscribe("r1")
        for i in range(3):
            await streams.publish("r1", "updates", serde.dumps({"i": i, "text": "é" * 10}))
        replay = streams.subscribe("r1", last_event_id=0)
        await streams.publish("r1", "values", b'{"done": true}')
        await streams.close("r1")
        got = [e async for e in live]
        assert [e.event for e in got] == ["updates", "updates", "updates", "values"]
        assert serde.loads(got[1].data) == {"i": 1, "text": "é" * 10}
        assert [e.seq for e in got] == sorted({e.seq for e in got})
        replayed = [e async for e in replay]
        assert [e.seq for e in replayed] == [e.seq for e in got], "no event twice, none lost"
        # after the run: read from the log, from any id, without the internal end marker
        after = [e async for e in streams.subscribe("r1", last_event_id=got[1].seq)]
        assert [e.seq for e in after] == [e.seq for e in got[2:]]

        # a run streamed by "another process": followed through the log while active
        other = RunStreams(EventLog(log.engine), poll_interval=0.05)
        active = True

        async def is_active() -> bool:
            return active

        follower = other.subscribe("r2", last_event_id=0, is_active=is_active)
        streams.open("r2", persist=True)

        async def produce() -> None:
            nonlocal active
            for i in range(3):
                await streams.publish("r2", "custom", serde.dumps(i))
                await asyncio.sleep(0.05)
            await streams.close("r2")
            active = False

        producer = asyncio.create_task(produce())
        followed = [serde.loads(e.data) async for e in follower]
        await producer
        assert followed == [0, 1, 2]

        assert await streams.prune(3600) == 0
        assert await streams.prune(-60) == 9  # 4 + end, 3 + end
        assert await streams.logged("r1") == []
    finally:
        await log.aclose()


class _Refusals(logging.Handler):
    """Sets ``seen`` when the event writer logs a refused write."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "write failed" in record.getMessage():
            self.seen.set()


async def test_writer_rides_out_refused_writes(pg_url: str) -> None:
    """A database that refuses the event writes for a while (a real PostgreSQL error from a
    trigger) delays them; every event is stored once, in order, and the block does not fail."""
    log = EventLog.from_url(pg_url)
    refusals = _Refusals()
    logging.getLogger("langgraph_moa.persistence.events").addHandler(refusals)
    try:
        await log.setup()
        async with log.engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE refuse (on_ boolean)"))
            await conn.execute(
                sa.text(
                    "CREATE FUNCTION refuse_events() RETURNS trigger AS $$ BEGIN "
                    "IF EXISTS (SELECT 1 FROM refuse) THEN "
                    "RAISE EXCEPTION 'refused for the test'; END IF; RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON moa_run_events "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_events()"
                )
            )
        async with log.writer("r1") as emit:
            emit("updates", {"i": 0})
            while not await log.read("r1"):  # the first write went through
                await log.wait("r1", timeout=5)
            async with log.engine.begin() as conn:
                await conn.execute(sa.text("INSERT INTO refuse VALUES (true)"))
            emit("updates", {"i": 1})
            emit("updates", {"i": 2})
            await asyncio.wait_for(refusals.seen.wait(), 60)
            assert [e.data for e in await log.read("r1")] == [{"i": 0}]
            async with log.engine.begin() as conn:
                await conn.execute(sa.text("DELETE FROM refuse"))
            emit("values", {"done": True})
        got = await log.read("r1")
        assert [(e.event, e.data) for e in got] == [
            ("updates", {"i": 0}),
            ("updates", {"i": 1}),
            ("updates", {"i": 2}),
            ("values", {"done": True}),
        ]
    finally:
        logging.getLogger("langgraph_moa.persistence.events").removeHandler(refusals)
        await log.aclose()


async def test_writer_gives_up_after_retry_for(pg_url: str) -> None:
    """Writes refused for longer than ``retry_for`` raise from the block: not hidden."""
    log = EventLog.from_url(pg_url)
    try:
        await log.setup()
        async with log.engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE moa_run_events RENAME TO moa_run_events_x"))
        with pytest.raises(sa.exc.ProgrammingError, match="moa_run_events"):
            async with log.writer("r1", retry_for=0.3) as emit:
                emit("updates", {"i": 0})
    finally:
        await log.aclose()


async def test_writer_does_not_retry_rows_the_database_refuses(pg_url: str) -> None:
    """PostgreSQL refuses a NUL in JSON: no retry can store it, so the block raises at once
    instead of holding the run's later events for ``retry_for``."""
    log = EventLog.from_url(pg_url)
    refusals = _Refusals()
    logging.getLogger("langgraph_moa.persistence.events").addHandler(refusals)
    try:
        await log.setup()

        async def write() -> None:
            async with log.writer("r1", retry_for=3600) as emit:
                emit("updates", {"text": "bad\x00"})

        with pytest.raises(sa.exc.DBAPIError):
            await asyncio.wait_for(write(), 60)  # a last guard: without the fix, an hour
        assert not refusals.seen.is_set()  # never retried
        assert await log.read("r1") == []
    finally:
        logging.getLogger("langgraph_moa.persistence.events").removeHandler(refusals)
        await log.aclose()
