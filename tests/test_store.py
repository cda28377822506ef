"""The store: one engine per database per process, one migration runner, the event log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from langgraph_moa.eval.store import EvalStore, ResultRow
from langgraph_moa.persistence import AsyncSQLAlchemySaver, SchemaVersionError, migrations
from langgraph_moa.persistence.calls import CallLedger, CallRow
from langgraph_moa.persistence.engines import (
    engine_key,
    get_async_engine,
    get_engine,
    release_async_engine,
    release_engine,
)
from langgraph_moa.persistence.events import EventLog, events
from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.persistence.store import AsyncSQLAlchemyStore
from langgraph_moa.testing import ModelServer
from tests.conftest import PG_ADMIN

# -- engines -----------------------------------------------------------------------------


def test_one_sync_engine_per_database(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    a = get_engine("sqlite:///moa.sqlite")
    b = get_engine(f"sqlite+pysqlite:///{tmp_path / 'moa.sqlite'}")  # same file, other spelling
    c = get_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
    try:
        assert a is b and a is not c
        assert engine_key("postgres://u@h/db") == engine_key("postgresql+psycopg_async://u@h/db")
        mem1, mem2 = get_engine("sqlite://"), get_engine("sqlite://")
        assert mem1 is not mem2  # an in-memory database is one per engine
        release_engine(mem1)
        release_engine(mem2)
    finally:
        for engine in (a, b, c):
            release_engine(engine)
    # the last holder gave it back: the next one is a fresh engine
    d = get_engine("sqlite:///moa.sqlite")
    assert d is not a
    release_engine(d)


async def test_async_engine_shared_per_loop_and_released(sqlite_url: str) -> None:
    a = get_async_engine(sqlite_url)
    b = get_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
    assert a is b
    await release_async_engine(a)
    assert get_async_engine(sqlite_url) is a  # one holder left
    await release_async_engine(a)
    await release_async_engine(a)

    def other_loop() -> Any:
        async def get() -> Any:
            engine = get_async_engine(sqlite_url)
            await release_async_engine(engine)
            return engine

        return asyncio.run(get())

    mine = get_async_engine(sqlite_url)
    assert await asyncio.to_thread(other_loop) is not mine
    outside = await asyncio.to_thread(get_async_engine, sqlite_url)  # no loop there: private
    assert outside is not mine
    await release_async_engine(outside)
    await release_async_engine(mine)


def _connections(db: str) -> int:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_saver_registry_and_events_share_one_pool(pg_url: str) -> None:
    """What the server opens on one database: one pool (and the LISTEN connection)."""
    db = sa.make_url(pg_url).database
    assert db is not None
    async with (
        AsyncSQLAlchemySaver.from_url(pg_url) as saver,
        RunRegistry.from_url(pg_url) as registry,
        EventLog.from_url(pg_url) as log,
    ):
        assert saver.engine is registry.engine is log.engine
        await saver.setup()
        await registry.setup()
        await registry.create_thread("t1")
        await log.append("r1", "values", {"x": 1})
        following = log.follow("r1", until_terminal=True)
        first = await anext(following)
        assert first.data == {"x": 1}
        await log.append("r1", "end", None)
        assert [e.event async for e in following] == ["end"]
        await asyncio.wait_for(log.listening.wait(), 30)
        # every connection to the database is the one pool's, plus the LISTEN connection
        pool: Any = saver.engine.pool
        pooled = pool.checkedin() + pool.checkedout()
        assert _connections(db) == pooled + 1 <= 3


async def test_the_server_opens_one_pool_on_its_database(
    pg_url: str, model_server: ModelServer
) -> None:
    """``moa serve``'s core on PostgreSQL: checkpointer, registry and event log on one engine;
    after a run streamed through the log, every connection to the database is that pool's,
    the log's LISTEN connection, or the run executor's (cancel requests)."""
    from langgraph_moa.server.service import MoAServer
    from langgraph_moa.spec import GraphSpec
    from tests.test_server_support import moa_spec

    db = sa.make_url(pg_url).database
    assert db is not None
    spec = GraphSpec.model_validate(moa_spec(model_server))
    async with MoAServer([spec], db_url=pg_url) as server:
        checkpointer: Any = server.checkpointer
        engine = server.registry.engine
        assert checkpointer.engine is engine and server.streams.event_log.engine is engine
        log = server.streams.event_log
        await log.append("r1", "values", {"x": 1})
        await log.append("r1", "end", None)
        assert [e.event async for e in log.follow("r1")] == ["values", "end"]
        await asyncio.wait_for(log.listening.wait(), 30)
        await asyncio.wait_for(server.runner.cancel_listening.wait(), 30)
        pool: Any = engine.pool
        assert _connections(db) == pool.checkedin() + pool.checkedout() + 2


# -- migrations -----------------------------------------------------------------------------


async def test_newer_schema_is_refused_with_the_version(db_url: str) -> None:
    async with RunRegistry.from_url(db_url) as registry:
        assert await registry.setup() == migrations.schema_version("registry")
        async with registry.engine.begin() as conn:
            await conn.execute(
                migrations.table.insert().values(
                    component="registry", version=99, name="future", applied_at=datetime.now()
                )
            )
    with pytest.raises(SchemaVersionError, match=r"registry tables .* schema version 99") as info:
        async with RunRegistry.from_url(db_url) as registry:
            await registry.setup()
    assert info.value.found == 99
    assert "pip install -U langgraph-moa" in str(info.value)


_OLD_MIGRATION_TABLES = {
    "moa_checkpoint_migrations": "v INTEGER NOT NULL PRIMARY KEY",
    "moa_registry_migrations": (
        "version INTEGER NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at {ts} NOT NULL"
    ),
    "moa_server_migrations": "version INTEGER NOT NULL PRIMARY KEY, applied_at FLOAT NOT NULL",
    "moa_eval_migrations": (
        "version INTEGER NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at {ts} NOT NULL"
    ),
}


def _downgrade_to_old_layout(url: str) -> None:
    """Turn a store written by this code into the layout the previous code left: one
    migration table per component, and moa_threads without the columns added since."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            ts = "TIMESTAMP" if conn.dialect.name == "postgresql" else "DATETIME"
            conn.execute(sa.text("DROP TABLE moa_schema_migrations"))
            for name, columns in _OLD_MIGRATION_TABLES.items():
                conn.execute(sa.text(f"CREATE TABLE {name} ({columns.format(ts=ts)})"))
            conn.execute(sa.text("INSERT INTO moa_checkpoint_migrations (v) VALUES (1)"))
            conn.execute(
                sa.text(
                    "INSERT INTO moa_registry_migrations (version, name, applied_at) "
                    "VALUES (1, 'create moa_threads and moa_runs', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                sa.text("INSERT INTO moa_server_migrations (version, applied_at) VALUES (1, 0)")
            )
            conn.execute(
                sa.text(
                    "INSERT INTO moa_eval_migrations (version, name, applied_at) "
                    "VALUES (1, 'create moa_eval_results', CURRENT_TIMESTAMP)"
                )
            )
        added = {c["name"] for c in sa.inspect(engine).get_columns("moa_threads")} - {
            "thread_id",
            "created_at",
            "updated_at",
            "metadata",
            "status",
            "owner",
            "spec_name",
        }
        with engine.begin() as conn:
            for column in sorted(added):
                conn.execute(sa.text(f"ALTER TABLE moa_threads DROP COLUMN {column}"))
        assert added, "the registry has columns added after version 1"
    finally:
        engine.dispose()


async def test_store_of_the_previous_code_is_upgraded_in_place(db_url: str) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    async with AsyncSQLAlchemySaver.from_url(db_url) as saver:
        cfg = {"configurable": {"thread_id": "old", "checkpoint_ns": ""}}
        stored = await saver.aput(cfg, empty_checkpoint(), {"step": 1}, {})
    async with RunRegistry.from_url(db_url) as registry, EventLog.from_url(db_url) as log:
        await registry.setup()
        await registry.create_thread("old", metadata={"user": "ann"})
        await log.append("run-1", "values", {"answer": 42})
    async with EvalStore.from_url(db_url) as store:
        await store.record(ResultRow("e1", "answer", "spec", "item-1", "ok", 1.0, "42"))
    _downgrade_to_old_layout(db_url)

    async with (
        AsyncSQLAlchemySaver.from_url(db_url) as saver,
        RunRegistry.from_url(db_url) as registry,
        EventLog.from_url(db_url) as log,
    ):
        await saver.setup()
        assert await registry.setup() == migrations.schema_version("registry")
        got = await saver.aget_tuple(stored)
        assert got is not None and got.metadata["step"] == 1
        thread = await registry.get_thread("old")
        assert thread is not None and thread.metadata == {"user": "ann"}
        assert [e.data for e in await log.read("run-1")] == [{"answer": 42}]
        async with EvalStore.from_url(db_url) as store:
            assert [r.answer for r in await store.results("e1")] == ["42"]
        async with registry.engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            rows = (
                await conn.execute(
                    sa.select(migrations.table.c.component, migrations.table.c.version)
                )
            ).all()
    assert not names & set(_OLD_MIGRATION_TABLES), "the old migration tables are gone"
    components = {c for c, _ in rows}
    assert {"checkpoints", "registry", "events", "eval"} <= components
    assert ("registry", migrations.schema_version("registry")) in rows


_DOUBLES = {
    "checkpoints": ("moa_checkpoint_heads", ("updated_at",)),
    "calls": ("moa_calls", ("latency_ms",)),
    "store": ("moa_store", ("ttl_minutes",)),
    "eval": ("moa_eval_results", ("score", "cost", "latency_s")),
}
"""The columns ``sa.Float`` made single-precision FLOAT on MySQL/MariaDB; the last step
of each component widens them to DOUBLE."""


async def _set_up_with_rows(url: str) -> Any:
    from langgraph.checkpoint.base import empty_checkpoint

    async with AsyncSQLAlchemySaver.from_url(url) as saver:
        cfg = {"configurable": {"thread_id": "old", "checkpoint_ns": ""}}
        stored = await saver.aput(cfg, empty_checkpoint(), {"step": 1}, {})
    async with CallLedger.from_url(url) as ledger:
        await ledger.record(
            CallRow(
                run_id="r", thread_id="old", node="L1_a", kind="agent", task_id="k", seq=0,
                attempt=1, model="m", params={}, request_hash="h", messages=None,
                response=None, usage=None, latency_ms=12.5, retries=0,
            )
        )  # fmt: skip
    async with AsyncSQLAlchemyStore.from_url(url) as store:
        await store.aput(("ns",), "k", {"v": 1}, ttl=90.0)
    async with EvalStore.from_url(url) as results:
        await results.record(ResultRow("e1", "answer", "spec", "i", "ok", 0.5, "42", cost=0.25))
    return stored


async def test_float_columns_of_an_older_store_become_double(db_url: str) -> None:
    """A store set up before the DOUBLE steps (FLOAT columns on MySQL/MariaDB, the steps
    not recorded) is migrated by the next setup and keeps its rows; the columns then hold
    an epoch time to the microsecond (FLOAT: to 128 s)."""
    stored = await _set_up_with_rows(db_url)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            mysql = conn.dialect.name in ("mysql", "mariadb")
            for component, (table, columns) in _DOUBLES.items():
                version = migrations.schema_version(component)
                assert "as DOUBLE" in migrations.STEPS[component][-1].name
                conn.execute(
                    migrations.table.delete().where(
                        migrations.table.c.component == component,
                        migrations.table.c.version == version,
                    )
                )
                nullable = {c["name"]: c["nullable"] for c in sa.inspect(conn).get_columns(table)}
                for column in columns if mysql else ():
                    null = "NULL" if nullable[column] else "NOT NULL"
                    conn.execute(sa.text(f"ALTER TABLE {table} MODIFY {column} FLOAT {null}"))
            if mysql:
                kinds = {c["name"]: c["type"] for c in sa.inspect(conn).get_columns("moa_calls")}
                assert not isinstance(kinds["latency_ms"], sa.Double)  # the old layout

        async with AsyncSQLAlchemySaver.from_url(db_url) as saver:
            await saver.setup()
            got = await saver.aget_tuple(stored)
            assert got is not None and got.metadata["step"] == 1
        async with CallLedger.from_url(db_url) as ledger:
            assert await ledger.setup() == migrations.schema_version("calls")
            assert [c.latency_ms for c in await ledger.list(thread_id="old")] == [12.5]
        async with AsyncSQLAlchemyStore.from_url(db_url) as store:
            item = await store.aget(("ns",), "k", refresh_ttl=False)
            assert item is not None and item.value == {"v": 1}
        async with EvalStore.from_url(db_url) as results:
            assert await results.setup() == migrations.schema_version("eval")
            assert [(r.score, r.cost) for r in await results.results("e1")] == [(0.5, 0.25)]

        at = 1_990_000_000.123456
        with engine.begin() as conn:
            found = {
                (c, v)
                for c, v in conn.execute(
                    sa.select(migrations.table.c.component, migrations.table.c.version)
                )
            }
            for component, (table, columns) in _DOUBLES.items():
                assert (component, migrations.schema_version(component)) in found
                conn.execute(
                    sa.text(f"UPDATE {table} SET {', '.join(f'{c} = {at!r}' for c in columns)}")
                )
                for column in columns:
                    back = conn.execute(sa.text(f"SELECT {column} FROM {table}")).scalar_one()
                    assert abs(back - at) < 1e-3, (table, column, back)
    finally:
        engine.dispose()


# -- the event log ----------------------------------------------------------------------------


async def test_event_log_append_read_follow_prune(db_url: str) -> None:
    async with EventLog.from_url(db_url) as log:
        first = await log.append("r1", "updates", {"i": 0, "text": "é"})
        await log.extend("r1", [("updates", {"i": 1}), ("custom", 7), ("messages", b'["a"]')])
        async with log.writer("r2") as emit:
            emit("values", {"done": True})
        events = await log.read("r1")
        assert [e.event for e in events] == ["updates", "updates", "custom", "messages"]
        assert [e.data for e in events] == [{"i": 0, "text": "é"}, {"i": 1}, 7, ["a"]]
        assert events[0].id == first and [e.id for e in events] == sorted(e.id for e in events)
        assert [e.data for e in await log.read("r1", after=events[1].id)] == [7, ["a"]]
        last = await log.last("r1", "updates")
        assert last is not None and last.data == {"i": 1}
        assert (await log.read("r2"))[0].data == {"done": True}
        assert await log.delete_runs(["r2"]) == 1
        assert await log.prune(timedelta(hours=1)) == 0
        assert await log.prune(timedelta(seconds=-60)) == 4
        assert await log.read("r1") == []


async def test_follower_in_another_process_is_woken(db_url: str) -> None:
    """A follower with a poll interval far beyond the test's timeout still sees each event
    at once on PostgreSQL (LISTEN/NOTIFY); elsewhere it polls (a short interval here)."""
    slow = 3600.0 if db_url.startswith("postgresql") else 0.05
    async with EventLog.from_url(db_url) as writer:
        reader = EventLog(writer.engine, poll_interval=slow)  # another process's log
        try:
            seen: list[Any] = []

            async def follow() -> None:
                async for event in reader.follow("r1"):
                    seen.append(event.data)

            task = asyncio.create_task(follow())
            for i in range(3):
                await writer.append("r1", "custom", i)
            await writer.append("r1", "end", None)
            await asyncio.wait_for(task, 30)
            assert seen == [0, 1, 2, None]
        finally:
            await reader.aclose()


async def test_event_times_are_utc(db_url: str) -> None:
    async with EventLog.from_url(db_url) as log:
        await log.append("r1", "custom", 1)
        before = datetime.now(UTC) - timedelta(minutes=1)
        # an event written a minute ago is not older than a minute
        assert await log.prune(datetime.now(UTC) - before) == 0


async def test_deleting_a_thread_deletes_its_runs_events(db_url: str) -> None:
    async with RunRegistry.from_url(db_url) as registry, EventLog.from_url(db_url) as log:
        await registry.setup()
        mine = await registry.create_run("t1")
        other = await registry.create_run("t2")
        await log.append(mine.run_id, "values", 1)
        await log.append(other.run_id, "values", 2)
        assert await registry.delete_thread("t1")
        assert await registry.get_run(mine.run_id) is None
        assert await log.read(mine.run_id) == []
        assert [e.data for e in await log.read(other.run_id)] == [2]


async def test_reading_the_log_does_not_wait_for_a_sqlite_writer(sqlite_url: str) -> None:
    async with EventLog.from_url(sqlite_url) as log:
        await log.append("r1", "custom", 1)
        writer = get_engine(sqlite_url)
        try:
            with writer.begin() as conn:  # BEGIN IMMEDIATE: holds the write lock
                conn.execute(events.delete().where(events.c.run_id == "other"))
                got = await asyncio.wait_for(log.read("r1"), 10)  # busy timeout is 60 s
                last = await asyncio.wait_for(log.last("r1"), 10)
        finally:
            release_engine(writer)
        assert [e.data for e in got] == [1] and last is not None and last.data == 1
