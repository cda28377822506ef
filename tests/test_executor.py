"""The one run executor: lease order, cancel from anywhere, lost leases, one recorded shape."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from langgraph_moa.persistence.registry import LeaseHeldError, Owner, RunRegistry
from langgraph_moa.runtime.api import MoA
from langgraph_moa.runtime.executor import (
    LEASE_KEY,
    Execution,
    LeaseLostError,
    RunEnd,
    RunExecutor,
    usage_totals,
)
from langgraph_moa.testing import ModelServer

WAIT = 60.0  # a bound on waits only


def spec_for(srv: ModelServer) -> dict[str, Any]:
    models = {n: {"model": n, "base_url": srv.base_url, "max_retries": 0} for n in ("p1", "synth")}
    return {
        "name": "ex",
        "models": models,
        "agents": [{"name": "a1", "model": "p1"}],
        "layers": [{"agents": ["a1"], "synthesizer": {"model": "synth"}}],
    }


def hold(
    srv: ModelServer, model: str, reply: str = "late"
) -> tuple[threading.Event, threading.Event]:
    """The next call of ``model`` signals ``arrived`` and waits for ``gate``."""
    arrived, gate = threading.Event(), threading.Event()

    def answer(_: Any) -> str:
        arrived.set()
        gate.wait(WAIT)
        return reply

    srv.add_rule(model=model, reply=answer, times=1)
    return arrived, gate


async def arrival(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT), "the held call never came"


@pytest.fixture
async def registry(db_url: str) -> AsyncIterator[RunRegistry]:
    async with RunRegistry.from_url(db_url) as reg:
        await reg.setup()
        yield reg


async def test_cancel_from_another_moa_stops_the_run(
    db_url: str, model_server: ModelServer
) -> None:
    arrived, gate = hold(model_server, "synth")
    spec = spec_for(model_server)
    async with (
        MoA(spec, db_url=db_url, heartbeat_interval=0.2) as running,
        MoA(spec, db_url=db_url) as other,
    ):
        task = asyncio.create_task(running.ainvoke("question", thread_id="t"))
        await arrival(arrived)
        (asked,) = await other.acancel(thread_id="t")
        assert asked.status == "running" and asked.cancel_requested_at is not None
        result = await asyncio.wait_for(task, WAIT)
        gate.set()
        assert result.status == "cancelled"
        assert other.registry is not None
        record = await other.registry.get_run(result.run_id)
        assert record is not None
        assert (record.status, record.error) == ("cancelled", "cancelled on request")
        assert record.usage["calls"] == 1  # the agent's call, kept
        thread = await other.registry.get_thread("t")
        assert thread is not None and thread.lease_token is None and thread.status == "idle"
        with pytest.raises(ValueError, match="run_id or a thread_id"):
            await other.acancel()


async def test_lost_lease_stops_the_run_without_recording(
    sqlite_url: str, model_server: ModelServer
) -> None:
    arrived, gate = hold(model_server, "synth")
    async with MoA(spec_for(model_server), db_url=sqlite_url, heartbeat_interval=0.2) as moa:
        assert moa.registry is not None
        task = asyncio.create_task(moa.ainvoke("question", thread_id="t"))
        await arrival(arrived)
        with pytest.raises(LeaseHeldError, match="holds its lease"):
            await moa.registry.acquire_lease("t", "thief")
        await moa.registry.acquire_lease("t", "thief", stale_after=0)  # taken for dead
        with pytest.raises(LeaseLostError, match="another process took thread t"):
            await asyncio.wait_for(task, WAIT)
        gate.set()
        (run,) = await moa.registry.list_runs(thread_id="t")
        assert run.status == "running" and run.answer is None  # left to the new holder


@pytest.mark.postgres
async def test_an_end_that_cannot_be_recorded_is_an_error(
    pg_url: str, model_server: ModelServer
) -> None:
    """PostgreSQL refuses NUL in text: the answer cannot be stored, so the run ends
    ``error`` naming why instead of staying ``running``."""
    model_server.add_rule(model="synth", reply="bad\x00answer")
    async with MoA(spec_for(model_server), db_url=pg_url) as moa:
        result = await moa.ainvoke("question", thread_id="t")
        assert moa.registry is not None
        (run,) = await moa.registry.list_runs(thread_id="t")
    assert run.status == "error" and result.status == "error"
    assert run.error is not None
    assert run.error.startswith("cannot record the end of the run (success): DataError")
    assert "NUL" in run.error and run.owner_token is None


async def test_old_run_never_runs_after_a_newer_one_ended(registry: RunRegistry) -> None:
    old = await registry.create_run("t", status="pending")
    newer = await registry.create_run("t", status="pending")
    await registry.update_run(newer.run_id, status="success", answer="new")

    async def body(_: Execution) -> RunEnd:
        raise AssertionError("the old run must not execute")

    ended = await RunExecutor(registry).execute(old, body)
    assert ended is not None and ended.status == "cancelled"
    assert ended.error is not None and f"superseded: run {newer.run_id}" in ended.error


async def test_runs_of_a_thread_take_turns_across_executors(registry: RunRegistry) -> None:
    """Two executors (as two processes, each its own owner) on one thread: the second run
    waits for the lease and for the older run, then runs; each ran with its own token."""
    first = await registry.create_run("t", status="pending")
    second = await registry.create_run("t", status="pending")
    started, release = asyncio.Event(), asyncio.Event()
    seen: list[tuple[str, str, int]] = []

    async def hold_first(ex: Execution) -> RunEnd:
        seen.append((ex.run_id, ex.configurable()[LEASE_KEY], ex.epoch))
        started.set()
        await release.wait()
        return RunEnd("success", answer={"x": 1}, usage={"total": {"calls": 2, "cost": 0.5}})

    async def quick(ex: Execution) -> RunEnd:
        seen.append((ex.run_id, ex.configurable()[LEASE_KEY], ex.epoch))
        return RunEnd("success", answer="second")

    one = RunExecutor(registry, lease_poll=0.05)
    two = RunExecutor(registry, lease_poll=0.05)
    a = asyncio.create_task(one.execute(first, hold_first, owner=Owner.new()))
    await started.wait()
    b = asyncio.create_task(two.execute(second, quick, owner=Owner.new(), wait=True))
    with pytest.raises(LeaseHeldError):  # without waiting: the thread is busy
        await two.execute(second, quick, owner=Owner.new())
    assert [s[0] for s in seen] == [first.run_id]
    release.set()
    done_a, done_b = await asyncio.wait_for(asyncio.gather(a, b), WAIT)
    assert [s[0] for s in seen] == [first.run_id, second.run_id]
    assert seen[0][1] != seen[1][1] and seen[1][2] == seen[0][2] + 1
    assert done_a is not None and done_a.answer == '{"x": 1}'  # any answer, as text
    assert done_a.usage == {"calls": 2, "cost": 0.5}
    assert done_b is not None and done_b.status == "success"


async def test_cancel_reaches_a_waiting_run(registry: RunRegistry) -> None:
    await registry.acquire_lease("t", "someone-else")
    queued = await registry.create_run("t", status="pending", owner=None)
    executor = RunExecutor(registry, lease_poll=0.05)

    async def body(_: Execution) -> RunEnd:
        raise AssertionError("a cancelled run must not start")

    task = asyncio.create_task(executor.execute(queued, body, wait=True))
    while queued.run_id not in executor._waiting:
        assert not task.done(), f"the run never waited: {task.result()!r}"
        await asyncio.sleep(0)
    await executor.cancel(queued.run_id)
    ended = await asyncio.wait_for(task, WAIT)
    assert ended is not None and ended.status == "cancelled"


def test_usage_totals_one_shape() -> None:
    total = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7, "calls": 2, "cost": 0.1}
    assert usage_totals(total) == total
    assert usage_totals({"total": total, "by_agent": {"a": total}}) == total
    assert usage_totals(None) == {} and usage_totals({"calls": "x"}) == {}


async def test_moa_cancel_command_reaches_a_run_in_another_process(
    sqlite_url: str, model_server: ModelServer
) -> None:
    from tests.durable_helpers import moa

    arrived, gate = hold(model_server, "synth")
    async with MoA(spec_for(model_server), db_url=sqlite_url, heartbeat_interval=0.2) as running:
        task = asyncio.create_task(running.ainvoke("question", thread_id="t"))
        await arrival(arrived)
        shown = await asyncio.to_thread(moa, "cancel", "--thread", "t", "--db", sqlite_url)
        assert "cancel requested" in shown.stderr
        result = await asyncio.wait_for(task, WAIT)
        gate.set()
        assert result.status == "cancelled"
    nothing = await asyncio.to_thread(moa, "cancel", "--thread", "t", "--db", sqlite_url)
    assert "thread t has no active run" in nothing.stderr
    missing = await asyncio.to_thread(moa, "cancel", "nope", "--db", sqlite_url, check=False)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr


async def test_the_checkpointer_fences_a_run_that_lost_its_lease(
    db_url: str, model_server: ModelServer
) -> None:
    """The lease is taken while the run waits on a call and before its heartbeat notices:
    its next checkpoint write is refused, it stops without recording, and the thread's
    checkpoints end where they were."""
    arrived, gate = hold(model_server, "synth")
    async with MoA(spec_for(model_server), db_url=db_url, heartbeat_interval=60) as moa:
        assert moa.registry is not None
        task = asyncio.create_task(moa.ainvoke("question", thread_id="t"))
        await arrival(arrived)
        before = [c async for c in moa.checkpointer.alist({"configurable": {"thread_id": "t"}})]
        await moa.registry.acquire_lease("t", "thief", stale_after=0)
        gate.set()
        with pytest.raises(LeaseLostError, match="refused its write"):
            await asyncio.wait_for(task, WAIT)
        after = [c async for c in moa.checkpointer.alist({"configurable": {"thread_id": "t"}})]
        (run,) = await moa.registry.list_runs(thread_id="t")
    assert len(after) == len(before)
    assert run.status == "running" and run.answer is None and run.error is None


@pytest.mark.postgres
async def test_cancel_notification_reaches_the_run_without_polling(pg_url: str) -> None:
    """No poll for an hour: the run stops on the NOTIFY of a request made elsewhere."""
    async with RunRegistry.from_url(pg_url) as registry, RunRegistry.from_url(pg_url) as other:
        await registry.setup()
        run = await registry.create_run("t", status="pending")
        executor = RunExecutor(registry, heartbeat_interval=3600, cancel_poll=3600)
        listener = asyncio.create_task(executor.listen_for_cancels())
        started = asyncio.Event()

        async def body(_: Execution) -> RunEnd:
            started.set()
            await asyncio.Event().wait()  # until cancelled
            raise AssertionError("not reached")

        try:
            task = asyncio.create_task(executor.execute(run, body))
            await started.wait()
            await asyncio.wait_for(executor.cancel_listening.wait(), WAIT)
            await other.request_cancel(run.run_id)
            ended = await asyncio.wait_for(task, WAIT)  # a last guard: no poll would end it
        finally:
            listener.cancel()
    assert ended is not None and (ended.status, ended.error) == (
        "cancelled",
        "cancelled on request",
    )


@pytest.mark.postgres
async def test_a_failing_cancel_callback_does_not_stop_the_listener(pg_url: str) -> None:
    """A request the caller fails to act on (say the database blinked) is logged; the
    listener goes on and the next request still reaches the caller."""
    async with RunRegistry.from_url(pg_url) as registry:
        await registry.setup()
        executor = RunExecutor(registry, heartbeat_interval=0.05)
        seen: list[str] = []
        second = asyncio.Event()

        async def on_request(run_id: str) -> None:
            seen.append(run_id)
            if len(seen) == 1:
                raise RuntimeError("the database blinked")
            second.set()

        listener = asyncio.create_task(executor.listen_for_cancels(on_request))
        try:
            await asyncio.wait_for(executor.cancel_listening.wait(), WAIT)
            a = await registry.create_run("t", owner=Owner.new())  # held elsewhere: not local
            b = await registry.create_run("u", owner=Owner.new())
            await registry.request_cancel(a.run_id)
            await registry.request_cancel(b.run_id)
            await asyncio.wait_for(second.wait(), WAIT)
        finally:
            listener.cancel()
    assert seen == [a.run_id, b.run_id]


async def test_a_second_cancel_does_not_cut_the_stop_record_short(
    registry: RunRegistry,
) -> None:
    """Ctrl-C twice: the second cancellation lands while the first one's stop is being
    recorded; the run still ends ``interrupted`` with its usage and the lease is given back."""
    run = await registry.create_run("t", status="pending")
    started, in_usage, go_on = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def body(_: Execution) -> RunEnd:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def usage() -> dict[str, Any]:
        in_usage.set()
        await go_on.wait()
        return {"calls": 2}

    task = asyncio.create_task(RunExecutor(registry).execute(run, body, usage_so_far=usage))
    await asyncio.wait_for(started.wait(), WAIT)
    task.cancel()
    await asyncio.wait_for(in_usage.wait(), WAIT)
    task.cancel()  # the second Ctrl-C, while the stop is being recorded
    await asyncio.sleep(0)
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    ended = await registry.get_run(run.run_id)
    assert ended is not None and ended.status == "interrupted"
    assert ended.error == "stopped before the end" and ended.owner_token is None
    assert ended.usage is not None and ended.usage.get("calls") == 2
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None
