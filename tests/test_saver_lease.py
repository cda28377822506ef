"""Fencing by run ownership on real databases: a write carrying a lease token
(``configurable["__moa_lease__"]``) is stored only while that token holds the thread's
lease in ``moa_threads``; a write without one is never fenced (like LangGraph's savers)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, Interrupt

from langgraph_moa.persistence import (
    LEASE_CONFIG_KEY,
    AsyncSQLAlchemySaver,
    CheckpointConflictError,
    PersistenceError,
    SQLAlchemySaver,
    create_engine,
)
from langgraph_moa.persistence.registry import RunRegistry
from tests.test_checkpointer import ask_graph, cfg

_TABLES = ("moa_checkpoints", "moa_checkpoint_blobs", "moa_checkpoint_writes")


@asynccontextmanager
async def registry_of(url: str) -> AsyncIterator[RunRegistry]:
    async with RunRegistry.from_url(url) as reg:
        await reg.setup()
        yield reg


class Writer:
    """One saver (its own engine) used through the sync or the async methods."""

    def __init__(self, saver: Any, flavour: str) -> None:
        self.saver = saver
        self.flavour = flavour

    async def call(self, name: str, *args: Any) -> Any:
        if self.flavour == "async":
            return await getattr(self.saver, "a" + name)(*args)
        return await asyncio.to_thread(getattr(self.saver, name), *args)

    async def put(self, thread: str, parent: str | None, lease: str | None, **metadata: Any) -> str:
        conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
        if parent:
            conf["checkpoint_id"] = parent
        if lease is not None:
            conf[LEASE_CONFIG_KEY] = lease
        c = empty_checkpoint()
        c["channel_values"] = {"small": lease or "-", "big": "x" * 600}
        c["channel_versions"] = {
            "small": self.saver.get_next_version(None, None),
            "big": self.saver.get_next_version(None, None),
        }
        md: Any = {"source": "loop", "step": 0, **metadata}
        out = await self.call("put", {"configurable": conf}, c, md, dict(c["channel_versions"]))
        return str(out["configurable"]["checkpoint_id"])

    async def put_writes(self, thread: str, checkpoint_id: str, lease: str | None) -> None:
        conf: dict[str, Any] = {
            "thread_id": thread,
            "checkpoint_ns": "",
            "checkpoint_id": checkpoint_id,
        }
        if lease is not None:
            conf[LEASE_CONFIG_KEY] = lease
        writes = [("small", f"w-{lease}"), ("big", "y" * 600)]
        await self.call("put_writes", {"configurable": conf}, writes, f"task-{lease}")


@asynccontextmanager
async def writer(url: str, flavour: str) -> AsyncIterator[Writer]:
    if flavour == "async":
        async with AsyncSQLAlchemySaver.from_url(url) as asaver:
            yield Writer(asaver, flavour)
    else:
        with SQLAlchemySaver.from_url(url) as saver:
            yield Writer(saver, flavour)


def rows_of(url: str, thread: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of the thread, table by table (the bytes, not just counts)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for name in (*_TABLES, "moa_checkpoint_heads"):
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                rows = conn.execute(sa.select(table).where(table.c.thread_id == thread)).all()
                out[name] = sorted(
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows
                )
            return out
    finally:
        engine.dispose()


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_stale_token_is_refused_on_put_and_put_writes(db_url: str, flavour: str) -> None:
    async with registry_of(db_url) as reg, writer(db_url, flavour) as w:
        await reg.acquire_lease("t", "A")
        root = await w.put("t", None, "A")
        await w.put_writes("t", root, "A")
        # the lease changes hands: A's run is gone, B's run owns the thread now
        assert await reg.release_lease("t", "A")
        await reg.acquire_lease("t", "B")
        before = rows_of(db_url, "t")
        with pytest.raises(CheckpointConflictError) as info:
            await w.put("t", root, "A")
        assert info.value.thread_id == "t" and info.value.token == "A"
        assert info.value.holder == "B"
        assert "'t'" in str(info.value) and "held by another run" in str(info.value)
        with pytest.raises(CheckpointConflictError, match="held by another run"):
            await w.put_writes("t", root, "A")
        assert rows_of(db_url, "t") == before  # nothing of either refused write
        # the holder writes on
        child = await w.put("t", root, "B")
        await w.put_writes("t", child, "B")
        latest = await w.call("get_tuple", cfg("t"))
        assert latest.config["configurable"]["checkpoint_id"] == child
        assert latest.checkpoint["channel_values"]["small"] == "B"
        assert {(t, c) for t, c, _ in latest.pending_writes} == {
            ("task-B", "small"),
            ("task-B", "big"),
        }
        # a freed lease fences everyone out too
        await reg.release_lease("t", "B")
        with pytest.raises(CheckpointConflictError, match="is free"):
            await w.put("t", child, "B")


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_fenced_write_sent_again_is_stored_once(db_url: str, flavour: str) -> None:
    """A retried fenced ``put_writes`` (its rows there already: MySQL's one-statement
    insert then affects no row, as when the lease is someone else's) is accepted and
    changes nothing; a stale token is still refused after it."""
    async with registry_of(db_url) as reg, writer(db_url, flavour) as w:
        await reg.acquire_lease("t", "A")
        root = await w.put("t", None, "A")
        child = await w.put("t", root, "A")
        await w.put_writes("t", child, "A")
        before = rows_of(db_url, "t")
        assert len(before["moa_checkpoint_writes"]) == 2
        await w.put_writes("t", child, "A")
        assert rows_of(db_url, "t") == before
        await reg.release_lease("t", "A")
        await reg.acquire_lease("t", "B")
        with pytest.raises(CheckpointConflictError, match="held by another run"):
            await w.put_writes("t", child, "A")
        assert rows_of(db_url, "t") == before


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_token_equal_only_under_a_collation_is_refused(db_url: str, flavour: str) -> None:
    """Tokens are compared byte for byte on every database: MySQL's default collation
    would take ``"TOK"`` and ``"tok "`` for ``"Tok"``. A leased put moves the head's
    ``updated_at`` forward (MySQL's upsert assigns it before the new checkpoint id)."""
    async with registry_of(db_url) as reg, writer(db_url, flavour) as w:
        await reg.acquire_lease("tc", "Tok")
        root = await w.put("tc", None, "Tok")
        before = rows_of(db_url, "tc")
        with pytest.raises(CheckpointConflictError, match="held by another run"):
            await w.put("tc", root, "TOK")
        with pytest.raises(CheckpointConflictError, match="held by another run"):
            await w.put_writes("tc", root, "tok ")
        assert rows_of(db_url, "tc") == before

        engine = sa.create_engine(db_url)
        try:
            with engine.begin() as conn:  # the head looks an hour old
                conn.exec_driver_sql(
                    "UPDATE moa_checkpoint_heads SET updated_at = updated_at - 3600"
                    " WHERE thread_id = 'tc'"
                )
            start = time.time()
            child = await w.put("tc", root, "Tok")
            with engine.connect() as conn:
                head = conn.exec_driver_sql(
                    "SELECT checkpoint_id, updated_at FROM moa_checkpoint_heads"
                    " WHERE thread_id = 'tc'"
                ).one()
        finally:
            engine.dispose()
        assert head[0] == child
        assert start - 0.001 <= head[1] <= time.time() + 0.001


async def test_two_writers_race_for_the_first_checkpoint(db_url: str) -> None:
    """Two processes' writers start a new thread at once; only the lease holder's first
    checkpoint is stored, so the thread cannot fork."""
    async with registry_of(db_url) as reg:
        await reg.acquire_lease("new", "A")
        async with writer(db_url, "async") as a, writer(db_url, "sync") as b:
            results = await asyncio.gather(
                a.put("new", None, "A"), b.put("new", None, "B"), return_exceptions=True
            )
            assert isinstance(results[0], str), results
            assert isinstance(results[1], CheckpointConflictError), results
            stored = rows_of(db_url, "new")
            assert [r[2] for r in stored["moa_checkpoints"]] == [results[0]]
            tuples = [t async for t in a.saver.alist(cfg("new"))]
            assert [t.checkpoint["channel_values"]["small"] for t in tuples] == ["A"]
            # a thread the registry does not know: no run holds it, every token is stale
            with pytest.raises(CheckpointConflictError, match="is free"):
                await a.put("unknown", None, "A")
            assert rows_of(db_url, "unknown")["moa_checkpoints"] == []


async def test_concurrent_runs_with_different_tokens(db_url: str) -> None:
    """Two runs resume one paused thread at once; the run holding the lease finishes,
    the other is refused and leaves no trace in the thread's state."""
    async with registry_of(db_url) as reg, AsyncSQLAlchemySaver.from_url(db_url) as saver:
        app = ask_graph(saver)
        await reg.acquire_lease("race", "A")
        a = cfg("race", **{LEASE_CONFIG_KEY: "A"})
        b = cfg("race", **{LEASE_CONFIG_KEY: "B"})
        await app.ainvoke({"value": 0, "trace": []}, a)
        results = await asyncio.gather(
            app.ainvoke(Command(resume="1"), a),
            app.ainvoke(Command(resume="2"), b),
            return_exceptions=True,
        )
        alone = ask_graph(InMemorySaver())
        await alone.ainvoke({"value": 0, "trace": []}, cfg("x"))
        assert results[0] == await alone.ainvoke(Command(resume="1"), cfg("x")), results
        assert results[0]["value"] == 12
        assert isinstance(results[1], CheckpointConflictError), results
        state = await app.aget_state(cfg("race"))
        assert state.values["value"] == 12 and state.next == ()
        # the token is passed to the saver but never stored in checkpoint metadata
        async for item in saver.alist(cfg("race")):
            assert LEASE_CONFIG_KEY not in item.metadata
            assert all("B" not in str(v) for _, _, v in item.pending_writes or [])


async def test_a_token_without_the_registry_table_is_a_clear_error(db_url: str) -> None:
    async with writer(db_url, "async") as w:
        root = await w.put("t", None, None)
        with pytest.raises(PersistenceError, match="no moa_threads table") as info:
            await w.put("t", root, "A")
        assert not isinstance(info.value, CheckpointConflictError)
        assert "RunRegistry.setup()" in str(info.value)
        with pytest.raises(PersistenceError, match="no moa_threads table"):
            await w.put_writes("t", root, "A")
        assert [r[2] for r in rows_of(db_url, "t")["moa_checkpoints"]] == [root]
        assert rows_of(db_url, "t")["moa_checkpoint_writes"] == []


def _lock_waiters(conn: sa.Connection, backend: str) -> int:
    if backend == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )
    else:
        sql = "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
    return int(conn.exec_driver_sql(sql).scalar() or 0)


@pytest.mark.parametrize("op", ["put", "put_writes"])
async def test_the_check_waits_for_a_lease_change_in_flight(db_url: str, op: str) -> None:
    """PostgreSQL/MySQL: the check locks the thread's row, so a write racing a lease
    handover waits for it and then sees the new holder (a plain read would see the old
    committed token and write)."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite: the write transaction holds the database's write lock")
    backend = "postgresql" if db_url.startswith("postgres") else "mysql"
    async with registry_of(db_url) as reg, writer(db_url, "sync") as w:
        await reg.acquire_lease("t", "A")
        root = await w.put("t", None, "A")
        before = rows_of(db_url, "t")
        engine = create_engine(db_url)
        try:
            with engine.connect() as handover, engine.connect() as probe:
                handover.execute(
                    sa.text("UPDATE moa_threads SET lease_token = 'B' WHERE thread_id = 't'")
                )
                outcome: list[BaseException | None] = []

                def write() -> None:
                    try:
                        if op == "put":
                            asyncio.run(w.put("t", root, "A"))
                        else:
                            asyncio.run(w.put_writes("t", root, "A"))
                        outcome.append(None)
                    except BaseException as exc:
                        outcome.append(exc)

                thread = threading.Thread(target=write)
                thread.start()
                deadline = time.monotonic() + 60
                while _lock_waiters(probe, backend) == 0 and not outcome:
                    assert time.monotonic() < deadline, "the write never waited for the lock"
                    probe.rollback()
                    # InnoDB refreshes its lock tables only after 0.1 s without readers
                    await asyncio.sleep(0.01 if backend == "postgresql" else 0.2)
                assert not outcome, f"the write did not wait for the row lock: {outcome}"
                handover.commit()
                thread.join(60)
        finally:
            engine.dispose()
        assert len(outcome) == 1 and isinstance(outcome[0], CheckpointConflictError), outcome
        assert outcome[0].holder == "B"
        assert rows_of(db_url, "t") == before


# -- no token: exactly like LangGraph's own savers ----------------------------------------


def _norm(obj: Any) -> Any:
    """``obj`` with interrupts as their values (their ids derive from checkpoint ids)."""
    if isinstance(obj, Interrupt):
        return ("interrupt", obj.value)
    if isinstance(obj, dict):
        return {k: _norm(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_norm(v) for v in obj)
    return obj


async def _time_travel_script(saver: Any) -> list[Any]:
    """Resume at a superseded checkpoint, durability="exit" from an older checkpoint,
    new input at an explicit old checkpoint_id: what LangGraph's own tests do."""
    app = ask_graph(saver)
    seen: list[Any] = []
    t = cfg("tt")
    seen.append(await app.ainvoke({"value": 0, "trace": []}, t))
    paused = (await app.aget_state(t)).config
    seen.append(await app.ainvoke(Command(resume="5"), t))
    # resume at the superseded (paused) checkpoint
    seen.append(await app.ainvoke(Command(resume="7"), paused))
    history = [h async for h in app.aget_state_history(t)]
    before_sub = next(h for h in history if h.next == ("sub",))
    # replay from an old checkpoint with durability="exit"
    seen.append(await app.ainvoke(None, before_sub.config, durability="exit"))
    seen.append(await app.ainvoke(Command(resume="1"), t, durability="exit"))
    # new input at an explicit old checkpoint id
    seen.append(await app.ainvoke({"value": 100, "trace": []}, before_sub.config))
    seen.append(await app.ainvoke(Command(resume="2"), t))
    fork = await app.aupdate_state(before_sub.config, {"value": 1000})
    seen.append(await app.ainvoke(None, fork))
    seen.append(await app.ainvoke(Command(resume="3"), t))
    final = await app.aget_state(t)
    seen.append((final.values, final.next))
    seen.append(
        [
            (h.values, h.next, h.metadata["source"], h.metadata["step"])  # type: ignore[index]
            async for h in app.aget_state_history(t)
        ]
    )
    return _norm(seen)


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_without_a_token_time_travel_matches_in_memory_saver(
    db_url: str, flavour: str
) -> None:
    expected = await _time_travel_script(InMemorySaver())
    if flavour == "async":
        async with AsyncSQLAlchemySaver.from_url(db_url) as asaver:
            got = await _time_travel_script(asaver)
    else:
        with SQLAlchemySaver.from_url(db_url) as saver:
            got = await _time_travel_script(saver)
    assert got == expected
    assert expected[5]["value"] == 111 and expected[8]["value"] == 1013  # the script ran


async def test_a_write_cancelled_in_flight_leaves_the_saver_usable(db_url: str) -> None:
    """PostgreSQL/MySQL: a task cancelled while the saver's statement is in flight (here:
    waiting for a row lock) must not leave the saver's kept connection mid-protocol (on
    aiomysql a rollback after the cancel read the cancelled statement's reply, and the next
    operation on that connection read the rollback's). Afterwards reads and writes are
    exact."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite: no row lock to wait on")
    backend = "postgresql" if db_url.startswith("postgres") else "mysql"
    async with registry_of(db_url) as reg, writer(db_url, "async") as w:
        await reg.acquire_lease("t", "A")
        root = await w.put("t", None, "A")
        engine = create_engine(db_url)
        try:
            with engine.connect() as holder, engine.connect() as probe:
                holder.execute(
                    sa.text("UPDATE moa_threads SET lease_pid = lease_pid WHERE thread_id = 't'")
                )
                task = asyncio.create_task(w.put("t", root, "A"))
                deadline = time.monotonic() + 60
                while _lock_waiters(probe, backend) == 0:
                    assert time.monotonic() < deadline and not task.done(), task
                    probe.rollback()
                    await asyncio.sleep(0.01 if backend == "postgresql" else 0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                holder.commit()
        finally:
            engine.dispose()
        for _ in range(3):  # the saver's next operations see exactly what is stored
            got = await w.saver.aget_tuple(
                {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
            )
            assert got is not None and got.checkpoint["id"] == root
            assert got.checkpoint["channel_values"]["small"] == "A"
        child = await w.put("t", root, "A")
        listed = [
            c.checkpoint["id"] async for c in w.saver.alist({"configurable": {"thread_id": "t"}})
        ]
        assert listed == [child, root]


@pytest.mark.parametrize("multi", [True, False])
async def test_mysql_put_with_and_without_multi_statements(mysql_url: str, multi: bool) -> None:
    """MySQL: a put is one request (BEGIN, head, blobs, checkpoint) and its COMMIT when the
    connection may send several statements at once (our engines), else one statement per
    round trip; both store the same rows, and both refuse a stale token, storing nothing."""
    import pymysql
    from pymysql.constants import CLIENT, COMMAND

    sent: list[str] = []  # the requests (COM_QUERY) the saver's connections send

    class Counting(pymysql.connections.Connection):
        def _execute_command(self, command: int, sql: Any) -> None:
            if command == COMMAND.COM_QUERY:
                sent.append(sql if isinstance(sql, str) else bytes(sql).decode(errors="replace"))
            super()._execute_command(command, sql)

    u = sa.engine.make_url(mysql_url)
    flags = CLIENT.FOUND_ROWS | (CLIENT.MULTI_STATEMENTS if multi else 0)
    engine = create_engine(
        mysql_url,
        creator=lambda: Counting(
            host=u.host,
            port=u.port,
            user=u.username,
            database=u.database,
            charset="utf8mb4",
            client_flag=flags,
        ),
    )
    try:
        async with registry_of(mysql_url) as reg:
            with SQLAlchemySaver(engine) as saver:
                w = Writer(saver, "sync")
                await reg.acquire_lease("m", "A")
                root = await w.put("m", None, "A")
                assert saver._multi_statements is multi
                sent.clear()
                child = await w.put("m", root, "A")
                fenced_requests, sent[:] = list(sent), []
                plain = await w.put("m", child, None)
                plain_requests = list(sent)
                for requests in (fenced_requests, plain_requests):
                    if multi:  # BEGIN; head; blob; checkpoint -- then COMMIT
                        assert len(requests) == 2, requests
                        assert requests[0].startswith("BEGIN; INSERT") and requests[1] == "COMMIT"
                    else:
                        assert len(requests) == 5, requests  # BEGIN, head, blob, checkpoint, COMMIT
                        assert not any(";" in r.rstrip(";") for r in requests)
                # over 512,000 bytes of values (300,000 characters, 600,000 bytes in UTF-8):
                # one statement per round trip, so that no request outgrows max_allowed_packet
                sent.clear()
                wide = await w.put("m", plain, "A", note="é" * 300_000)
                assert len(sent) == 5, [r[:40] for r in sent]
                got = await w.call(
                    "get_tuple", {"configurable": {"thread_id": "m", "checkpoint_id": wide}}
                )
                assert got.metadata["note"] == "é" * 300_000
                again = await w.put("m", root, "A")  # a fork: the head stays at the latest
                stored = rows_of(mysql_url, "m")
                assert [r[2] for r in stored["moa_checkpoints"]] == sorted(
                    [root, child, plain, wide, again]
                )
                assert [r[2] for r in stored["moa_checkpoint_heads"]] == [max(wide, again)]
                assert len(stored["moa_checkpoint_blobs"]) == 5  # "big" of each put
                latest = await w.call("get_tuple", cfg("m"))
                assert latest.checkpoint["id"] == max(wide, again)
                await reg.release_lease("m", "A")
                await reg.acquire_lease("m", "B")
                with pytest.raises(CheckpointConflictError) as info:
                    await w.put("m", child, "A")
                assert info.value.holder == "B"
                assert rows_of(mysql_url, "m") == stored
    finally:
        engine.dispose()


async def test_our_pymysql_engines_allow_several_statements(mysql_url: str) -> None:
    """Our PyMySQL engines add CLIENT_MULTI_STATEMENTS and FOUND_ROWS to the flags asked
    for in the URL; a client_flag in the caller's connect_args is theirs, and their dict
    is left as it was."""
    from pymysql.constants import CLIENT

    def flags(engine: sa.Engine) -> int:
        raw = engine.raw_connection()
        try:
            return int(raw.driver_connection.client_flag)  # type: ignore[union-attr]
        finally:
            raw.close()
            engine.dispose()

    url = f"{mysql_url}&client_flag={CLIENT.IGNORE_SPACE}"
    got = flags(create_engine(url))
    wanted = CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS | CLIENT.IGNORE_SPACE
    assert got & wanted == wanted
    mine = {"connect_timeout": 5}
    got = flags(create_engine(mysql_url, connect_args=mine))
    assert got & (CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS) and mine == {"connect_timeout": 5}
    got = flags(create_engine(mysql_url, connect_args={"client_flag": CLIENT.FOUND_ROWS}))
    assert not got & CLIENT.MULTI_STATEMENTS
