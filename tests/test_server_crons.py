"""Crons through the official ``langgraph_sdk`` against real ``moa serve`` processes on one
PostgreSQL database: two replicas that both run the scheduler, or one ``moa serve
--workers`` and two ``moa worker`` processes that fire the crons. Each tick of a cron
makes exactly one run; a deleted cron makes no run after the delete answered (checked
while a second cron keeps firing, so the schedulers are known to be running); another
tenant's cron is missing (404).

Schedules use croniter's sixth field (seconds): ``* * * * * *`` ticks every second.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

from langgraph_moa.persistence.crons import CronStore
from langgraph_moa.persistence.engines import get_async_engine, release_async_engine
from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.runtime.api import MoA
from langgraph_moa.runtime.workers import ProcrastinateExecutor
from langgraph_moa.server.service import MoAServer
from langgraph_moa.spec import GraphSpec
from langgraph_moa.testing import ModelServer
from tests.test_server_support import KEY_A, KEY_B, Served, moa_spec, serve, synthesis
from tests.test_workers_support import Workers

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WAIT = 120.0  # a bound on waits only
EVERY_SECOND = "* * * * * *"


@pytest.fixture
def srv() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(params=["replicas", "workers"])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, srv: ModelServer, pg_url: str
) -> Iterator[list[Served]]:
    """Two ``moa serve`` replicas firing crons, or one ``moa serve --workers`` and two
    workers firing them."""
    specs = [moa_spec(srv)]
    timings = ["--owner-heartbeat", "0.5", "--stale-after", "30"]
    group = Workers(pg_url, tmp_path)
    servers: list[Served] = []
    try:
        if request.param == "replicas":
            for _ in range(2):
                servers.append(Served(tmp_path, specs, pg_url, keys=[KEY_A, KEY_B], extra=timings))
                servers[-1].start()
        else:
            extra = [*timings, "--workers"]
            servers.append(Served(tmp_path, specs, pg_url, keys=[KEY_A, KEY_B], extra=extra))
            servers[-1].start()
            group.start()
            group.start()
        yield servers
    finally:
        group.stop()
        for served in servers:
            served.stop()


async def runs_of(client: LangGraphClient, thread_id: str, cron_id: str) -> list[dict[str, Any]]:
    runs = await client.runs.list(thread_id, limit=1000)
    return [r for r in runs if r["metadata"].get("cron_id") == cron_id]


async def until(check: Any, what: str) -> Any:
    for _ in range(int(WAIT * 10)):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_cron_fires_once_per_tick_and_stops_when_deleted(
    deployment: list[Served], pg_url: str
) -> None:
    client = get_client(url=deployment[0].url, api_key=KEY_A)
    other = get_client(url=deployment[-1].url, api_key=KEY_A)
    thread = await client.threads.create()
    control_thread = await client.threads.create()
    cron = await client.crons.create_for_thread(
        thread["thread_id"], "moa", schedule=EVERY_SECOND, input={"task": "tick"}
    )
    assert cron["thread_id"] == thread["thread_id"] and cron["schedule"] == EVERY_SECOND
    assert cron["enabled"] is True and cron["next_run_date"]

    async def four_runs() -> list[dict[str, Any]] | None:
        found = await runs_of(client, thread["thread_id"], cron["cron_id"])
        return found if len(found) >= 4 else None

    await until(four_runs, "four runs of the cron")
    control = await other.crons.create_for_thread(
        control_thread["thread_id"], "moa", schedule=EVERY_SECOND, input={"task": "control"}
    )
    await other.crons.delete(cron["cron_id"])  # through the other process
    after_delete = await runs_of(client, thread["thread_id"], cron["cron_id"])

    # the control cron fires three more ticks: the schedulers are running
    async def three_control_runs() -> bool:
        return len(await runs_of(client, control_thread["thread_id"], control["cron_id"])) >= 3

    await until(three_control_runs, "three runs of the control cron")
    final = await runs_of(client, thread["thread_id"], cron["cron_id"])
    assert sorted(r["run_id"] for r in final) == sorted(r["run_id"] for r in after_delete)

    # one run per tick: ticks are distinct, a second apart at least
    ticks = Counter(r["metadata"]["cron_tick"] for r in final)
    assert ticks and set(ticks.values()) == {1}, ticks
    assert len(ticks) == len(final)
    engine = get_async_engine(pg_url)
    try:
        registry = RunRegistry(engine)
        done = [await registry.get_run(r["run_id"]) for r in final]
        assert all(r is not None for r in done)
        firings = await CronStore(engine).firings(control["cron_id"])
        control_runs = await runs_of(client, control_thread["thread_id"], control["cron_id"])
        assert len({f.tick for f in firings}) == len(firings)
        assert {f.run_id for f in firings if f.state == "done"} <= {
            r["run_id"] for r in control_runs
        }
    finally:
        await release_async_engine(engine)
    with pytest.raises(NotFoundError):
        await client.crons.delete(cron["cron_id"])
    await client.crons.delete(control["cron_id"])


@pytest.fixture
def single(tmp_path: Path, srv: ModelServer, pg_url: str) -> Iterator[Served]:
    yield from serve(tmp_path, [moa_spec(srv)], pg_url, keys=[KEY_A, KEY_B])


async def test_a_stateless_cron_runs_each_tick_on_a_new_thread(
    single: Served, srv: ModelServer, pg_url: str
) -> None:
    client = get_client(url=single.url, api_key=KEY_A)
    kept = await client.crons.create(
        "moa", schedule=EVERY_SECOND, input={"task": "kept"}, on_run_completed="keep"
    )
    dropped = await client.crons.create("moa", schedule=EVERY_SECOND, input={"task": "dropped"})
    engine = get_async_engine(pg_url)
    try:
        crons, registry = CronStore(engine), RunRegistry(engine)

        async def ended_runs(cron_id: str) -> list[Any] | None:
            firings = [f for f in await crons.firings(cron_id) if f.state == "done"]
            runs = [await registry.get_run(f.run_id) for f in firings]
            done = [r for r in runs if r is not None and r.status == "success"]
            return done if len(done) >= 2 else None

        runs = await until(lambda: ended_runs(kept["cron_id"]), "two runs of the kept cron")
        assert len({r.thread_id for r in runs}) == len(runs)  # a thread per tick
        for run in runs:
            thread = await client.threads.get(run.thread_id)  # kept, and the tenant's
            state = await client.threads.get_state(thread["thread_id"])
            assert state["values"]["answer"] == synthesis(srv, "kept")
            assert run.metadata["cron_id"] == kept["cron_id"]

        async def dropped_threads_gone() -> bool:
            firings = [f for f in await crons.firings(dropped["cron_id"]) if f.state == "done"]
            if len(firings) < 2:
                return False
            return all([await registry.get_run(f.run_id) is None for f in firings[:2]])

        await until(dropped_threads_gone, "the threads of two dropped runs to be deleted")
    finally:
        await release_async_engine(engine)
    await client.crons.delete(kept["cron_id"])
    await client.crons.delete(dropped["cron_id"])


async def test_cron_crud_search_and_tenants(single: Served) -> None:
    a = get_client(url=single.url, api_key=KEY_A)
    b = get_client(url=single.url, api_key=KEY_B)
    thread = await a.threads.create()
    hourly = await a.crons.create("moa", schedule="0 * * * *", input={"task": "hourly"})
    assert hourly["thread_id"] is None and hourly["on_run_completed"] == "delete"
    on_thread = await a.crons.create_for_thread(
        thread["thread_id"], "moa", schedule="*/5 * * * *", metadata={"kind": "report"}
    )
    assert {c["cron_id"] for c in await a.crons.search()} == {
        hourly["cron_id"],
        on_thread["cron_id"],
    }
    assert [c["cron_id"] for c in await a.crons.search(thread_id=thread["thread_id"])] == [
        on_thread["cron_id"]
    ]
    assert await a.crons.count() == 2
    assert await a.crons.count(metadata={"kind": "report"}) == 1

    changed = await a.crons.update(on_thread["cron_id"], schedule="0 0 * * *", enabled=False)
    assert changed["schedule"] == "0 0 * * *" and changed["enabled"] is False
    assert changed["next_run_date"].split("T")[1].startswith("00:00:00")
    assert [c["cron_id"] for c in await a.crons.search(enabled=False)] == [on_thread["cron_id"]]

    # another tenant: its searches are empty, the crons and the thread are missing
    assert await b.crons.search() == [] and await b.crons.count() == 0
    with pytest.raises(NotFoundError):
        await b.crons.delete(hourly["cron_id"])
    with pytest.raises(NotFoundError):
        await b.crons.update(hourly["cron_id"], enabled=False)
    with pytest.raises(NotFoundError):
        await b.crons.create_for_thread(thread["thread_id"], "moa", schedule="* * * * *")
    mine = await a.assistants.create("moa", name="a's")
    with pytest.raises(NotFoundError):  # another tenant's assistant
        await b.crons.create(mine["assistant_id"], schedule="* * * * *")
    with pytest.raises(UnprocessableEntityError):
        await a.crons.create("moa", schedule="every day")

    # deleting an assistant deletes its crons
    await a.crons.create(mine["assistant_id"], schedule="0 * * * *")
    assert await a.crons.count(assistant_id=mine["assistant_id"]) == 1
    await a.assistants.delete(mine["assistant_id"])
    assert await a.crons.count(assistant_id=mine["assistant_id"]) == 0
    for cron in (hourly, on_thread):
        await a.crons.delete(cron["cron_id"])
    assert await a.crons.count() == 0


async def test_a_worker_compiles_each_recorded_spec_once(
    srv: ModelServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two crons of graph ``moa`` recorded with different specs (e.g. made before and after
    a deploy), fired by a worker's scheduler (no spec files: it serves the recorded ones)
    for three ticks each: each spec is compiled once, and each run records its cron's spec.
    The clock is passed to the scheduler: nothing waits for a tick."""
    compiled: list[str] = []
    enter = MoA.__aenter__

    async def counting(self: MoA) -> MoA:
        compiled.append(self.spec.spec_hash())
        return await enter(self)

    monkeypatch.setattr(MoA, "__aenter__", counting)
    specs = [
        GraphSpec.model_validate(moa_spec(srv)),
        GraphSpec.model_validate(moa_spec(srv, interrupt_before_synthesis=True)),
    ]
    assert len({s.spec_hash() for s in specs}) == 2
    executor = ProcrastinateExecutor(pg_url)
    async with MoAServer([], db_url=pg_url, executor=executor, role="worker") as server:
        await executor.start(server)
        try:
            crons = [
                await server.cron_store.create(
                    None,
                    assistant_id="moa",
                    schedule=EVERY_SECOND,
                    payload={"input": {"task": f"spec {i}"}},
                    spec=spec.model_dump(mode="json"),
                )
                for i, spec in enumerate(specs)
            ]
            for _ in range(3):
                pending = [await server.cron_store.get(None, c.cron_id) for c in crons]
                now = max(c.next_run_date for c in pending if c is not None)
                assert await server.fire_due_crons(now=now) == 2
            for cron, spec in zip(crons, specs, strict=True):
                firings = await server.cron_store.firings(cron.cron_id)
                assert [f.state for f in firings] == ["done"] * 3
                runs = [await server.registry.get_run(f.run_id) for f in firings]
                assert [r.spec_hash if r else None for r in runs] == [spec.spec_hash()] * 3
        finally:
            await executor.aclose()
    assert sorted(compiled) == sorted(s.spec_hash() for s in specs), compiled
