"""The run-event log of the server (``moa_run_events``) on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio

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
