"""The run registry on SQLite, PostgreSQL and MariaDB: threads, runs, ownership."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from langgraph_moa.persistence import migrations
from langgraph_moa.persistence.registry import (
    LeaseHeldError,
    Owner,
    OwnershipLostError,
    RunNotFoundError,
    RunOwnedError,
    RunRegistry,
    ThreadExistsError,
    pid_alive,
)

VERSION = migrations.schema_version("registry")


@pytest.fixture
async def registry(db_url: str) -> AsyncIterator[RunRegistry]:
    async with RunRegistry.from_url(db_url) as reg:
        await reg.setup()
        yield reg


def dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_setup_is_idempotent_and_versioned(registry: RunRegistry) -> None:
    assert await registry.schema_version() == VERSION
    assert await registry.setup() == VERSION
    async with registry.engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert {"moa_threads", "moa_runs", "moa_schema_migrations"} <= names


async def test_concurrent_setup(db_url: str) -> None:
    regs = [RunRegistry.from_url(db_url) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(r.setup() for r in regs))
    finally:
        for r in regs:
            await r.aclose()
    assert versions == [VERSION] * 3


async def test_threads_crud_and_search(registry: RunRegistry) -> None:
    a = await registry.create_thread("ta", metadata={"user": "ann", "n": 1}, owner="t1")
    await registry.create_thread("tb", metadata={"user": "bob", "flag": True, "tags": ["x"]})
    await registry.create_thread("tc", metadata={"user": "ann", "n": 2}, owner="t1")
    assert a.status == "idle" and a.metadata == {"user": "ann", "n": 1}
    with pytest.raises(ThreadExistsError, match="already exists"):
        await registry.create_thread("ta")
    same = await registry.create_thread("ta", if_exists="do_nothing")
    assert same.metadata == {"user": "ann", "n": 1}

    ids = lambda threads: sorted(t.thread_id for t in threads)  # noqa: E731
    assert ids(await registry.search_threads(metadata={"user": "ann"})) == ["ta", "tc"]
    assert ids(await registry.search_threads(metadata={"user": "ann", "n": 2})) == ["tc"]
    assert ids(await registry.search_threads(metadata={"flag": True})) == ["tb"]
    assert ids(await registry.search_threads(metadata={"tags": ["x"]})) == ["tb"]
    assert ids(await registry.search_threads(owner="t1")) == ["ta", "tc"]
    assert await registry.count_threads(metadata={"user": "ann"}) == 2
    assert await registry.count_threads(metadata={"tags": ["x"]}) == 1
    assert await registry.count_threads() == 3
    page = await registry.search_threads(sort_by="thread_id", sort_order="asc", limit=2, offset=1)
    assert [t.thread_id for t in page] == ["tb", "tc"]

    updated = await registry.update_thread("ta", metadata={"n": 5}, status="busy")
    assert updated.metadata == {"user": "ann", "n": 5} and updated.status == "busy"
    got = await registry.get_thread("ta")
    assert got is not None and got.metadata == {"user": "ann", "n": 5} and got.status == "busy"
    assert got.to_json()["created_at"].endswith("+00:00")
    replaced = await registry.update_thread("ta", metadata={"k": "v"}, replace_metadata=True)
    assert replaced.metadata == {"k": "v"}

    await registry.create_run("ta", spec_name="s")
    assert await registry.delete_thread("ta") is True
    assert await registry.delete_thread("ta") is False
    assert await registry.get_thread("ta") is None
    assert await registry.list_runs(thread_id="ta") == []


async def test_runs_lifecycle_and_thread_status(registry: RunRegistry) -> None:
    me = Owner.current()
    spec = {"name": "s", "layers": [{"agents": ["a"]}]}
    run = await registry.create_run(
        "t1",
        spec=spec,
        spec_name="s",
        spec_hash="abc",
        input={"task": "hi"},
        owner=me,
        thread_metadata={"from": "test"},
    )
    assert run.status == "running" and run.attempts == 1 and run.owner == me
    thread = await registry.get_thread("t1")
    assert thread is not None and thread.status == "busy" and thread.spec_name == "s"
    assert thread.metadata == {"from": "test"}

    assert await registry.heartbeat(run.run_id, me) is True
    paused = await registry.update_run(
        run.run_id, owner=me, status="interrupted", waiting_for=[{"kind": "approve"}]
    )
    assert paused.waiting_for == [{"kind": "approve"}] and paused.finished_at is not None
    assert (await registry.get_thread("t1")).status == "interrupted"  # type: ignore[union-attr]

    done = await registry.release_run(
        run.run_id, me, status="success", answer="42", usage={"total_tokens": 7}
    )
    assert done.owner is None and done.answer == "42" and done.usage == {"total_tokens": 7}
    assert (await registry.get_thread("t1")).status == "idle"  # type: ignore[union-attr]
    got = await registry.get_run(run.run_id)
    assert got is not None and got.spec == spec and got.input == {"task": "hi"}

    second = await registry.create_run("t1", spec_name="s")
    assert second.status == "pending" and second.attempts == 0
    latest = await registry.latest_run("t1")
    assert latest is not None and latest.run_id == second.run_id
    assert [r.run_id for r in await registry.list_runs(status="success")] == [run.run_id]
    assert len(await registry.list_runs(thread_id="t1")) == 2
    with pytest.raises(ValueError, match="unknown run status"):
        await registry.list_runs(status="done")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot update"):
        await registry.update_run(run.run_id, thread_id="x")
    with pytest.raises(RunNotFoundError):
        await registry.update_run("nope", status="error")
    assert await registry.delete_run(second.run_id) is True


async def test_claim_is_exclusive_while_owner_lives(registry: RunRegistry) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = Owner("elsewhere-host", holder.pid, "tok-other")
        run = await registry.create_run("t", owner=other)
        with pytest.raises(RunOwnedError, match=f"pid {holder.pid} on elsewhere-host") as info:
            await registry.claim_run(run.run_id, Owner.new())
        assert info.value.run.owner_token == "tok-other"
        # A live owner on this host: its pid is alive, its heartbeat fresh.
        local = Owner(Owner.current().host, holder.pid, "tok-local")
        run2 = await registry.create_run("t2", owner=local)
        with pytest.raises(RunOwnedError, match=str(holder.pid)):
            await registry.claim_run(run2.run_id, Owner.new())
        # The owner itself may claim again (no error), which counts another attempt.
        again = await registry.claim_run(run2.run_id, local)
        assert again.attempts == 2
    finally:
        holder.kill()
        holder.wait()
    # Now the local pid is dead: the run is stale and can be taken over.
    stale = {r.run_id for r in await registry.stale_runs()}
    assert run2.run_id in stale and run.run_id not in stale  # other host: heartbeat fresh
    me = Owner.new()
    taken = await registry.claim_run(run2.run_id, me)
    assert taken.owner == me and taken.attempts == 3
    # The old owner is fenced out.
    assert await registry.heartbeat(run2.run_id, local) is False
    with pytest.raises(OwnershipLostError, match="now owned by"):
        await registry.update_run(run2.run_id, owner=local, status="success")
    # Heartbeat age makes the other host's run stale too.
    assert run.run_id in {r.run_id for r in await registry.stale_runs(stale_after=0)}


async def test_claim_race_has_one_winner(registry: RunRegistry) -> None:
    gone = Owner(Owner.current().host, dead_pid(), "tok-dead")
    run = await registry.create_run("t", owner=gone)
    owners = [Owner.new() for _ in range(4)]
    results = await asyncio.gather(
        *(registry.claim_run(run.run_id, o) for o in owners), return_exceptions=True
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 1, results
    assert all(isinstance(r, RunOwnedError) for r in results if r not in wins)
    final = await registry.get_run(run.run_id)
    assert final is not None and final.owner_token == wins[0].owner_token  # type: ignore[union-attr]
    assert final.attempts == 2


async def test_unknown_run_and_free_runs(registry: RunRegistry) -> None:
    with pytest.raises(RunNotFoundError, match="no run 'missing'"):
        await registry.claim_run("missing")
    free = await registry.create_run("t", status="pending")
    assert free.run_id in {r.run_id for r in await registry.stale_runs()}
    done = await registry.create_run("t", status="success")
    assert done.run_id not in {r.run_id for r in await registry.stale_runs(stale_after=0)}


def test_pid_alive() -> None:
    assert pid_alive(sys.modules["os"].getpid())
    assert not pid_alive(dead_pid())
    assert not pid_alive(0)


async def test_from_sync_engine(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    reg = RunRegistry.from_engine(engine)
    try:
        await reg.setup()
        await reg.create_thread("x")
        assert [t.thread_id for t in await reg.search_threads()] == ["x"]
    finally:
        await reg.aclose()
        engine.dispose()


async def test_thread_lease_is_exclusive_and_fenced_by_epoch(registry: RunRegistry) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = Owner(Owner.current().host, holder.pid, "unused")
        first = await registry.acquire_lease("t", "tok-a", owner=live, run_id="r1")
        assert first == 1
        thread = await registry.get_thread("t")
        assert thread is not None and thread.lease_token == "tok-a"
        assert (thread.lease_pid, thread.lease_run_id) == (holder.pid, "r1")
        assert "lease" not in str(thread.to_json())
        # The holder again: same epoch, no error. Another token: refused, naming the holder.
        assert await registry.acquire_lease("t", "tok-a", owner=live) == 1
        with pytest.raises(LeaseHeldError, match=rf"run r1 holds its lease \(pid {holder.pid}"):
            await registry.acquire_lease("t", "tok-b")
        assert await registry.renew_lease("t", "tok-a") is True
        assert await registry.renew_lease("t", "tok-b") is False
        assert await registry.release_lease("t", "tok-b") is False
        assert await registry.release_lease("t", "tok-a") is True
        assert await registry.acquire_lease("t", "tok-b") == 2  # free again: a new epoch
        # Expired by heartbeat age: taken over, and the old holder is fenced out.
        assert await registry.acquire_lease("t", "tok-c", stale_after=0) == 3
        assert await registry.renew_lease("t", "tok-b") is False
        await registry.release_lease("t", "tok-c")
        await registry.acquire_lease("t", "tok-d", owner=live)
    finally:
        holder.kill()
        holder.wait()
    # The holding process died on this host: the lease is free at once.
    assert await registry.acquire_lease("t", "tok-e") == 5


async def test_lease_race_has_one_winner(registry: RunRegistry) -> None:
    gone = Owner(Owner.current().host, dead_pid(), "x")
    await registry.acquire_lease("t", "tok-dead", owner=gone)
    results = await asyncio.gather(
        *(registry.acquire_lease("t", f"tok-{i}") for i in range(4)), return_exceptions=True
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert wins == [2], results
    assert all(isinstance(r, LeaseHeldError) for r in results if r not in wins)
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_epoch == 2


async def test_cancel_request(registry: RunRegistry) -> None:
    queued = await registry.create_run("t", status="pending")
    cancelled = await registry.request_cancel(queued.run_id)  # nobody holds it: marked now
    assert (cancelled.status, cancelled.error) == ("cancelled", "cancelled before it started")
    me = Owner.new()
    running = await registry.create_run("t", owner=me)
    assert await registry.cancel_requested([running.run_id]) == set()
    asked = await registry.request_cancel(running.run_id)
    assert asked.status == "running" and asked.cancel_requested_at is not None  # its owner stops it
    assert await registry.cancel_requested([running.run_id, queued.run_id]) == {running.run_id}
    with pytest.raises(RunNotFoundError):
        await registry.request_cancel("missing")


async def test_resuming_a_cancelled_run_forgets_the_old_cancel(registry: RunRegistry) -> None:
    me = Owner.new()
    run = await registry.create_run("t", owner=me)
    await registry.request_cancel(run.run_id)
    await registry.update_run(run.run_id, owner=me, status="cancelled", release=True)
    resumed = await registry.claim_run(run.run_id, me)  # `moa resume` reuses the run id
    assert resumed.status == "running" and resumed.cancel_requested_at is None
    assert await registry.cancel_requested([run.run_id]) == set()
    # a cancel asked of a run that is still active is kept by a claim
    await registry.request_cancel(run.run_id)
    again = await registry.claim_run(run.run_id, me)
    assert again.cancel_requested_at is not None


async def test_migration_2_adds_the_lease_to_a_version_1_store(db_url: str) -> None:
    from langgraph_moa.persistence import registry as module

    async with RunRegistry.from_url(db_url) as old:
        async with old.engine.begin() as conn:  # the tables as version 1 made them
            stamp = "TIMESTAMP" if old.dialect == "postgresql" else "DATETIME"
            added = module._V1_COLUMNS
            await conn.execute(
                sa.text(
                    "CREATE TABLE moa_registry_migrations (version INTEGER NOT NULL PRIMARY "
                    f"KEY, name VARCHAR(200) NOT NULL, applied_at {stamp} NOT NULL)"
                )
            )
            for table in (module.threads_table, module.runs_table):
                legacy = sa.Table(
                    table.name,
                    sa.MetaData(),
                    *(
                        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                        for c in table.columns
                        if c.name not in added[table.name]
                    ),
                )
                await conn.run_sync(legacy.create)
            await conn.execute(
                sa.text(
                    "INSERT INTO moa_registry_migrations (version, name, applied_at) "
                    "VALUES (1, 'v1', CURRENT_TIMESTAMP)"
                )
            )
        assert await old.schema_version() == 1
        assert await old.setup() == VERSION
        assert await old.acquire_lease("t", "tok") == 1
