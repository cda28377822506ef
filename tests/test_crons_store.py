"""The cron store on SQLite, PostgreSQL and MariaDB: a tick is claimed once however many
claimers race for it; a delete returns only once the run of a claimed tick exists; the
schedule arithmetic (seconds field, timezones, bad schedules)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from langgraph_moa.persistence.crons import (
    CronRecord,
    CronStore,
    InvalidScheduleError,
    crons_table,
    next_tick,
)
from langgraph_moa.persistence.engines import get_async_engine, release_async_engine


def test_next_tick_reads_seconds_and_timezones() -> None:
    base = datetime(2026, 11, 30, 13, 0, 0, 500_000)
    assert next_tick("* * * * * */2", base) == datetime(2026, 11, 30, 13, 0, 2)
    assert next_tick("*/5 * * * *", base) == datetime(2026, 11, 30, 13, 5)
    # 09:00 in New York is 14:00 UTC in winter
    assert next_tick("0 9 * * *", base, "America/New_York") == datetime(2026, 11, 30, 14, 0)
    with pytest.raises(InvalidScheduleError, match="every day"):
        next_tick("every day", base)
    with pytest.raises(InvalidScheduleError, match="never fires"):
        next_tick("0 0 31 2 *", base)  # February 31st
    with pytest.raises(InvalidScheduleError, match="Mars/Olympus"):
        next_tick("* * * * *", base, "Mars/Olympus")


async def test_a_tick_is_claimed_once_by_racing_claimers(db_url: str) -> None:
    engine = get_async_engine(db_url)
    try:
        store = CronStore(engine)
        await store.setup()
        cron = await store.create(
            "t", assistant_id="a", schedule="* * * * * *", payload={"input": {}}
        )
        due = await store.due(now=cron.next_run_date)
        assert [c.cron_id for c in due] == [cron.cron_id]
        # eight processes read the same due cron, then all claim its tick
        won = await asyncio.gather(
            *(store.claim(due[0], f"run-{i}", now=cron.next_run_date) for i in range(8))
        )
        assert won.count(True) == 1, won
        firings = await store.firings(cron.cron_id)
        assert [(f.tick, f.run_id, f.state) for f in firings] == [
            (cron.next_run_date, f"run-{won.index(True)}", "claimed")
        ]
        moved = await store.get("t", cron.cron_id)
        assert moved is not None
        assert moved.next_run_date == next_tick("* * * * * *", cron.next_run_date)
        # the stale copy cannot claim the same tick again later
        assert not await store.claim(due[0], "late", now=cron.next_run_date)
        # settled firings older than a day go when a later tick settles
        await store.fired(cron.cron_id, cron.next_run_date)
        later = CronRecord(
            **{**vars(moved), "next_run_date": cron.next_run_date + timedelta(days=2)}
        )
        async with engine.begin() as conn:
            await conn.execute(
                crons_table.update()
                .where(crons_table.c.cron_id == cron.cron_id)
                .values(next_run_date=later.next_run_date)
            )
        assert await store.claim(later, "run-later", now=later.next_run_date)
        await store.fired(cron.cron_id, later.next_run_date)
        assert [f.run_id for f in await store.firings(cron.cron_id)] == ["run-later"]
        # nor can another tenant see the cron
        assert await store.get("u", cron.cron_id) is None
        assert not await store.delete("u", cron.cron_id)
    finally:
        await release_async_engine(engine)


async def test_delete_waits_for_the_run_of_a_claimed_tick(db_url: str) -> None:
    engine = get_async_engine(db_url)
    try:
        store = CronStore(engine)
        await store.setup()
        cron = await store.create("t", assistant_id="a", schedule="* * * * * *", payload={})
        assert await store.claim(cron, "r1", now=cron.next_run_date)
        deleting = asyncio.create_task(store.delete("t", cron.cron_id))
        row = sa.select(crons_table.c.cron_id).where(crons_table.c.cron_id == cron.cron_id)
        while True:  # the cron's row is gone first...
            async with engine.connect() as conn:
                if (await conn.execute(row)).first() is None:
                    break
            await asyncio.sleep(0.01)
        assert not deleting.done()  # ...but the delete waits for the claimed tick's run
        await store.fired(cron.cron_id, cron.next_run_date)
        assert await deleting is True
        assert await store.firings(cron.cron_id) == []
        assert not await store.claim(cron, "r2", now=cron.next_run_date)
    finally:
        await release_async_engine(engine)


async def test_an_ended_cron_is_never_due_again(db_url: str) -> None:
    """A cron past its ``end_time`` is never claimed, so its tick stays in the past: the
    scheduler's next wake-up must not count it (it would wake at once, forever)."""
    engine = get_async_engine(db_url)
    try:
        store = CronStore(engine)
        await store.setup()
        cron = await store.create(
            "t",
            assistant_id="a",
            schedule="* * * * * *",
            payload={"input": {}},
            end_time=datetime.now(UTC) + timedelta(seconds=30),
        )
        assert await store.next_due(now=cron.next_run_date) == cron.next_run_date
        after_end = cron.next_run_date + timedelta(minutes=5)
        assert await store.due(now=after_end) == []
        assert await store.next_due(now=after_end) is None
    finally:
        await release_async_engine(engine)


async def test_a_stale_clock_never_sets_a_cron_back_to_a_fired_tick(db_url: str) -> None:
    """A PATCH from a replica whose clock is behind restarts the schedule after the last
    claimed tick, not at it; and a cron whose next tick fired already (set back by such a
    PATCH before this fix) is moved past it by the claim instead of failing it forever.
    The clock is passed in: nothing waits."""
    engine = get_async_engine(db_url)
    try:
        store = CronStore(engine)
        await store.setup()
        cron = await store.create("t", assistant_id="a", schedule="* * * * * *", payload={})
        tick = cron.next_run_date
        assert await store.claim(cron, "r1", now=tick)
        await store.fired(cron.cron_id, tick)

        # the other replica's clock is half a second behind the tick that just fired
        stale = tick - timedelta(milliseconds=500)
        changed = await store.update("t", cron.cron_id, {"schedule": "* * * * * *"}, now=stale)
        assert changed is not None
        assert changed.next_run_date == tick + timedelta(seconds=1)
        stored = await store.get("t", cron.cron_id)
        assert stored is not None and stored.next_run_date == tick + timedelta(seconds=1)

        # a cron already set back to a fired tick (what the old PATCH wrote)
        async with engine.begin() as conn:
            await conn.execute(
                crons_table.update()
                .where(crons_table.c.cron_id == cron.cron_id)
                .values(next_run_date=tick)
            )
        now = tick + timedelta(milliseconds=1500)
        [stuck] = await store.due(now=now)
        assert stuck.next_run_date == tick
        assert not await store.claim(stuck, "r2", now=now)  # someone else's tick...
        moved = await store.get("t", cron.cron_id)
        assert moved is not None  # ...and the cron is past it
        assert moved.next_run_date == tick + timedelta(seconds=2)
        [due] = await store.due(now=moved.next_run_date)
        assert await store.claim(due, "r3", now=moved.next_run_date)
        assert [(f.tick, f.run_id) for f in await store.firings(cron.cron_id)] == [
            (tick, "r1"),
            (tick + timedelta(seconds=2), "r3"),
        ]
    finally:
        await release_async_engine(engine)
