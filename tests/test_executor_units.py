"""The run executor piece by piece, on SQLite, without a model server: each test checks what
the executor returns or raises and what it leaves in the registry (status, answer, error,
usage, owner, the thread's lease and status), or what it logs.

Races between processes (a cancel landing between two statements, a run deleted before it is
claimed) are played by a registry whose ``claim_run`` first runs a hook against the same real
database; the heartbeat is run with short polls and counted, never waited on by the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import operator
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import START, StateGraph

from langgraph_moa.persistence import LEASE_CONFIG_KEY, AsyncSQLAlchemySaver
from langgraph_moa.persistence.calls import CALLS_KEY, CallLedger
from langgraph_moa.persistence.errors import CheckpointConflictError
from langgraph_moa.persistence.registry import (
    RUN_STATUSES,
    LeaseHeldError,
    Owner,
    OwnershipLostError,
    RunNotFoundError,
    RunOwnedError,
    RunRecord,
    RunRegistry,
    runs_table,
)
from langgraph_moa.runtime.executor import (
    LEASE_KEY,
    Execution,
    LeaseLostError,
    RunEnd,
    RunExecutor,
    RunRejectedError,
    _clean,
    _describe,
    _fenced,
    _newer_ended,
    _older_active,
    _to_the_end,
    admit_run,
    usage_totals,
)

WAIT = 20.0  # a bound on waits only (each is for sub-second work)
LOGGER = "langgraph_moa.runtime.executor"


class RacingRegistry(RunRegistry):
    """A registry whose ``claim_run`` first runs ``before_claim`` (another process acting
    between the executor's last read and its claim), against the same database."""

    before_claim: Callable[[str], Awaitable[None]] | None = None
    before_update: Callable[[str, dict[str, Any]], None] | None = None
    fail_release = False
    asked_for_cancels: asyncio.Event | None = None
    """Set when a waiting run looks for cancel requests (it went round its wait loop)."""

    async def cancel_requested(self, run_ids: Any) -> set[str]:
        if self.asked_for_cancels is not None:
            self.asked_for_cancels.set()
        return await super().cancel_requested(run_ids)

    async def claim_run(self, run_id: str, owner: Owner | None = None, **kw: Any) -> RunRecord:
        if self.before_claim is not None:
            await self.before_claim(run_id)
        return await super().claim_run(run_id, owner, **kw)

    async def update_run(self, run_id: str, **kw: Any) -> RunRecord:
        if self.before_update is not None:
            self.before_update(run_id, kw)
        return await super().update_run(run_id, **kw)

    async def release_lease(self, thread_id: str, token: str) -> bool:
        if self.fail_release:
            raise ConnectionError("database is gone")
        return await super().release_lease(thread_id, token)


class CountingRegistry(RunRegistry):
    """A registry that counts the heartbeat's queries (and can fail the first cancel poll)."""

    polls = 0
    renewals = 0
    fail_first_poll = False
    renewed_twice: asyncio.Event

    async def cancel_requested(self, run_ids: Any) -> set[str]:
        self.polls += 1
        if self.fail_first_poll and self.polls == 1:
            raise ConnectionError("database is locked")
        return await super().cancel_requested(run_ids)

    async def renew_lease(self, thread_id: str, token: str) -> bool:
        held = await super().renew_lease(thread_id, token)
        self.renewals += 1
        if self.renewals == 2:
            self.renewed_twice.set()
        return held


@pytest.fixture
async def registry(sqlite_url: str) -> AsyncIterator[RunRegistry]:
    async with RacingRegistry.from_url(sqlite_url) as reg:
        await reg.setup()
        yield reg


async def at(registry: RunRegistry, run: RunRecord, seconds: float) -> RunRecord:
    """``run`` with its ``created_at`` set to a fixed instant (ordering without the clock)."""
    when = dt.datetime(2026, 1, 1) + dt.timedelta(seconds=seconds)
    async with registry.engine.begin() as conn:
        await conn.execute(
            runs_table.update().where(runs_table.c.run_id == run.run_id).values(created_at=when)
        )
    found = await registry.get_run(run.run_id)
    assert found is not None
    return found


async def waiting(executor: RunExecutor, run_id: str, task: asyncio.Task[Any]) -> None:
    """Until ``run_id`` waits for its thread's lease in ``executor`` (executing in ``task``)."""
    while run_id not in executor._waiting:
        assert not task.done(), f"the run never waited: {task.result()!r}"
        await asyncio.sleep(0)


async def forever(_: Execution) -> RunEnd:
    await asyncio.Event().wait()
    raise AssertionError("not reached")


async def never(_: Execution) -> RunEnd:
    raise AssertionError("the body must not run")


def conflict() -> CheckpointConflictError:
    return CheckpointConflictError(thread_id="t", checkpoint_ns="", token="old", holder="new")


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


# ------------------------------------------------------------------- the shape ---


@dataclass
class Result:
    status: str
    answer: Any = None
    usage: Any = None


@dataclass
class Paused(Result):
    waiting_for: Any = None


def test_run_end_of_an_outcome() -> None:
    assert RunEnd.of(Result("success", "a", {"calls": 1})) == RunEnd(
        "success", answer="a", usage={"calls": 1}, error=None, waiting_for=None
    )
    assert RunEnd.of(Result("whatever")).status == "success"
    paused = RunEnd.of(Paused("interrupted", None, None, [{"question": "ok?"}]))
    assert paused == RunEnd("interrupted", waiting_for=[{"question": "ok?"}])
    assert RunEnd.of(Paused("interrupted", waiting_for=[])).waiting_for is None
    end = RunEnd("error", error="e")
    assert RunEnd.of(end) is end


def test_run_end_values_are_the_registry_columns() -> None:
    usage = {"total": {"calls": 2, "cost": 0.5, "other": 1}, "by_agent": {}}
    assert RunEnd("success", answer={"é": [1]}, usage=usage, waiting_for={}).values() == {
        "status": "success",
        "answer": '{"é": [1]}',
        "usage": {"calls": 2, "cost": 0.5},
        "error": None,
        "waiting_for": None,
    }
    end = RunEnd("interrupted", answer="", error="e", waiting_for=[{"id": 1}])
    assert end.values() == {
        "status": "interrupted",
        "answer": None,
        "usage": {},
        "error": "e",
        "waiting_for": [{"id": 1}],
    }
    when = RunEnd("success", answer={"on": dt.date(2026, 1, 2)}).values()["answer"]
    assert when == '{"on": "2026-01-02"}'  # anything else as its str
    assert RunEnd("success", answer="text").values()["answer"] == "text"


def test_usage_totals_keeps_numbers_of_the_known_keys() -> None:
    assert usage_totals({}) == {}
    assert usage_totals({"total": 3, "calls": 1, "cost": 0.25, "x": 2}) == {
        "calls": 1,
        "cost": 0.25,
    }
    assert usage_totals({"input_tokens": 1, "output_tokens": None}) == {"input_tokens": 1}


def test_clean_keeps_one_line_of_at_most_limit_characters() -> None:
    assert _clean("") == ""
    assert _clean("a\x00b\nsecond line") == "a\\x00b"
    assert _clean("x" * 500) == "x" * 500
    assert _clean("x" * 501) == "x" * 497 + "..."
    assert _clean("abcdef", limit=5) == "ab..."


def test_describe_and_fenced() -> None:
    assert _describe(ValueError("bad")) == ("ValueError", "bad")
    assert _fenced(conflict()) and not _fenced(None) and not _fenced(ValueError("x"))

    def chain(depth: int, link: str) -> BaseException:
        """``conflict`` behind ``depth`` other exceptions linked by ``link``."""
        exc: BaseException = conflict()
        for i in range(depth):
            outer = RuntimeError(f"wrapper {i}")
            setattr(outer, link, exc)
            exc = outer
        return exc

    assert _fenced(chain(1, "__cause__")) and _fenced(chain(1, "__context__"))
    assert _fenced(chain(9, "__cause__"))  # the tenth exception looked at
    assert not _fenced(chain(10, "__cause__"))  # no further
    both = RuntimeError("both")
    both.__cause__, both.__context__ = ValueError("cause"), conflict()
    assert not _fenced(both)  # the cause is followed, not the context
    loop = RuntimeError("loop")
    loop.__context__ = loop
    assert not _fenced(loop)


# ---------------------------------------------------------------- _to_the_end ---


async def test_to_the_end_returns_or_raises_what_the_step_does() -> None:
    async def fine() -> int:
        return 1

    async def fails() -> None:
        raise ValueError("step failed")

    async def cancels_itself() -> None:
        raise asyncio.CancelledError

    assert await _to_the_end(fine()) is None
    with pytest.raises(ValueError, match="step failed"):
        await _to_the_end(fails())
    with pytest.raises(asyncio.CancelledError):
        await _to_the_end(cancels_itself())


@pytest.mark.parametrize("fails", [False, True])
async def test_to_the_end_finishes_a_step_cancelled_twice(
    fails: bool, caplog: pytest.LogCaptureFixture
) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def step() -> None:
        started.set()
        await go_on.wait()
        done.append("recorded")
        if fails:
            raise ValueError("the database is gone")

    task = asyncio.create_task(_to_the_end(step()))
    await started.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["recorded"]
    warnings = [r for r in caplog.records if r.name == LOGGER]
    if not fails:
        assert warnings == []
    else:
        (warning,) = warnings
        assert (warning.levelname, warning.getMessage()) == (
            "WARNING",
            "cleanup after a cancellation failed",
        )
        assert warning.exc_info is not None and isinstance(warning.exc_info[1], ValueError)


# --------------------------------------------------------- order on the thread ---


async def test_older_active_and_admit_run(registry: RunRegistry) -> None:
    """Older = created before, or at the same instant with a smaller run id; active only;
    of the same thread; oldest first."""
    r0 = await at(registry, await registry.create_run("t", run_id="r0", status="success"), 0)
    r1 = await at(registry, await registry.create_run("t", run_id="r1", status="running"), 1)
    await at(registry, await registry.create_run("t", run_id="r2", status="pending"), 2)
    tie = await at(registry, await registry.create_run("t", run_id="r3a", status="pending"), 3)
    new = await at(registry, await registry.create_run("t", run_id="r3b", status="pending"), 3)
    await at(registry, await registry.create_run("t", run_id="r3c", status="running"), 3)
    await at(registry, await registry.create_run("t", run_id="r4", status="running"), 4)
    await at(registry, await registry.create_run("t", run_id="a5", status="running"), 5)
    await at(registry, await registry.create_run("u", run_id="u1", status="running"), 1)
    assert [r.run_id for r in await _older_active(registry, new)] == ["r1", "r2", "r3a"]
    assert await _older_active(registry, r1) == []
    assert [r.run_id for r in await _older_active(registry, r0)] == []

    asked: list[str] = []

    async def cancel(run_id: str) -> None:
        asked.append(run_id)

    await admit_run(registry, new, "enqueue", cancel)
    assert asked == []
    await admit_run(registry, new, "interrupt", cancel)
    assert asked == ["r1", "r2", "r3a"]
    await admit_run(registry, new, "rollback", cancel)
    assert asked == ["r1", "r2", "r3a"] * 2
    await admit_run(registry, r1, "reject", cancel)  # nothing older: admitted
    assert await registry.get_run("r1") is not None
    with pytest.raises(RunRejectedError) as rejected:
        await admit_run(registry, tie, "reject", cancel)
    assert str(rejected.value) == (
        "Thread is already running a task (run r1). Wait for it to finish or choose a "
        "different multitask strategy."
    )
    assert await registry.get_run("r3a") is None and asked == ["r1", "r2", "r3a"] * 2


async def test_newer_ended_is_a_later_run_of_the_thread_in_a_final_status(
    registry: RunRegistry,
) -> None:
    run = await at(registry, await registry.create_run("t", status="pending"), 1)
    await at(registry, await registry.create_run("t", status="success"), 0)  # older
    await at(registry, await registry.create_run("u", status="success"), 2)  # other thread
    for status in ("pending", "running"):
        await at(registry, await registry.create_run("t", status=status), 2)
    assert await _newer_ended(registry, run) is None
    for status in ("success", "error", "cancelled", "interrupted"):
        newer = await at(registry, await registry.create_run("t", status=status), 3)
        found = await _newer_ended(registry, run)
        assert found is not None and found.run_id == newer.run_id
        await registry.delete_run(newer.run_id)


async def test_newer_ended_breaks_a_same_instant_tie_by_run_id(registry: RunRegistry) -> None:
    """Two runs created at the same instant: the one with the larger run id is the newer
    (as for _older_active), so only the smaller one is superseded by it."""
    a = await at(registry, await registry.create_run("t", run_id="r5a", status="pending"), 5)
    b = await at(registry, await registry.create_run("t", run_id="r5b", status="success"), 5)
    c = await at(registry, await registry.create_run("t", run_id="r5c", status="pending"), 5)
    found = await _newer_ended(registry, a)
    assert found is not None and found.run_id == "r5b"
    assert await _newer_ended(registry, c) is None  # r5b is older than r5c
    assert await _newer_ended(registry, b) is None
    ended = await RunExecutor(registry).execute(a, never)
    assert ended is not None and (ended.run_id, ended.status, ended.error) == (
        "r5a",
        "cancelled",
        "superseded: run r5b of the thread, created later, already ended",
    )
    ran: list[str] = []

    async def body(ex: Execution) -> RunEnd:
        ran.append(ex.run_id)
        return RunEnd("success")

    done = await RunExecutor(registry).execute(c, body)
    assert ran == ["r5c"] and done is not None and (done.status, done.error) == ("success", None)


# -------------------------------------------------------------------- execute ---


async def test_executor_defaults_and_the_cancel_poll_bound(registry: RunRegistry) -> None:
    ex = RunExecutor(registry)
    assert (ex.heartbeat_interval, ex.stale_after, ex.cancel_poll, ex.lease_poll) == (
        5.0,
        30.0,
        1.0,
        0.5,
    )
    assert not ex.cancel_listening.is_set()  # until listen_for_cancels listens
    assert ex.running == {} and ex._waiting == {}
    assert RunExecutor(registry, heartbeat_interval=2, cancel_poll=5).cancel_poll == 2
    assert RunExecutor(registry, heartbeat_interval=9, cancel_poll=5).cancel_poll == 5


async def test_execute_holds_lease_and_run_while_the_body_runs(registry: RunRegistry) -> None:
    run = await registry.create_run("t", status="pending")
    executor = RunExecutor(registry)
    owner = Owner.new()
    seen: dict[str, Any] = {}

    async def body(ex: Execution) -> RunEnd:
        seen.update(
            ex=ex,
            thread=await registry.get_thread("t"),
            run=await registry.get_run(ex.run_id),
            running=dict(executor.running),
            tasks={t.get_name() for t in asyncio.all_tasks()},
        )
        assert ex.calls is not None
        await ex.calls.record(
            node="a1",
            kind="chat",
            task_id="task",
            seq=0,
            model="m",
            params={},
            request_hash="h",
            messages=None,
            response=None,
            usage=None,
            latency_ms=1.0,
            retries=0,
        )
        return RunEnd("success", answer="done", usage={"calls": 3})

    ended = await executor.execute(run.run_id, body, owner=owner)
    ex: Execution = seen["ex"]
    assert ended is not None
    assert (ended.status, ended.answer, ended.usage, ended.error) == (
        "success",
        "done",
        {"calls": 3},
        None,
    )
    assert ended.owner_token is None and ended.attempts == 1 and ended.finished_at is not None
    assert (ex.run_id, ex.thread_id, ex.owner, ex.epoch) == (run.run_id, "t", owner, 1)
    assert ex.run.status == "running" and ex.run.owner_token == owner.token
    held = seen["thread"]
    assert (held.lease_token, held.lease_epoch, held.lease_run_id) == (ex.token, 1, run.run_id)
    assert (held.lease_host, held.lease_pid) == (owner.host, owner.pid)
    assert seen["run"].status == "running" and seen["run"].owner_token == owner.token
    assert seen["running"] == {run.run_id: ex}
    assert f"lease-{run.run_id}" in seen["tasks"]
    assert ex.configurable() == {LEASE_KEY: ex.token, CALLS_KEY: ex.calls}
    assert ex.calls is not None
    assert (ex.calls.run_id, ex.calls.thread_id, ex.calls.attempt) == (run.run_id, "t", 1)
    (call,) = await CallLedger(registry.engine).list(run_id=run.run_id)  # flushed first
    assert (call.node, call.attempt) == ("a1", 1)
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None and thread.status == "idle"
    assert executor.running == {} and executor._waiting == {}


async def test_each_execution_without_an_owner_gets_its_own(registry: RunRegistry) -> None:
    owners: list[tuple[Owner, str | None]] = []

    async def body(ex: Execution) -> RunEnd:
        owners.append((ex.owner, ex.run.owner_token))
        return RunEnd("success")

    executor = RunExecutor(registry)
    for _ in range(2):
        await executor.execute(await registry.create_run("t", status="pending"), body)
    (a, a_token), (b, b_token) = owners
    assert a.token == a_token and b.token == b_token and a.token != b.token


async def test_execution_without_a_ledger_and_interrupt_reasons() -> None:
    now = dt.datetime(2026, 1, 1)
    record = RunRecord("r", "t", "running", now, now)
    ex = Execution(record, Owner.new(), "tok")
    assert ex.configurable() == {LEASE_KEY: "tok"} and ex.epoch == 0 and ex.stop is None
    ex.interrupt("lost")  # no task: nothing to cancel
    ex.interrupt("cancel")
    assert ex.stop == "lost"  # the first reason stands
    ex.task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    ex.interrupt("cancel")
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await ex.task
    assert cancelled.value.args == ("run cancel",)
    ex.interrupt("cancel")  # a task that is done: nothing happens
    assert ex.task.cancelled()


async def test_a_second_interrupt_does_not_cut_the_bodys_cleanup_short() -> None:
    now = dt.datetime(2026, 1, 1)
    ex = Execution(RunRecord("r", "t", "running", now, now), Owner.new(), "tok")
    stopping, flush, flushed = asyncio.Event(), asyncio.Event(), []

    async def body() -> None:  # as LangGraph's loop: on cancel, wait for its writes
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopping.set()
            await flush.wait()
            flushed.append("checkpoint")
            raise

    ex.task = asyncio.create_task(body())
    await asyncio.sleep(0)
    ex.interrupt("cancel")  # this process's cancel
    await stopping.wait()
    ex.interrupt("cancel")  # the heartbeat's poll sees the same request
    ex.interrupt("lost")
    flush.set()
    with pytest.raises(asyncio.CancelledError):
        await ex.task
    assert flushed == ["checkpoint"] and ex.stop == "cancel"


async def test_a_run_after_a_lost_lease_in_the_same_task_can_be_cancelled(
    registry: RunRegistry,
) -> None:
    """``MoA.ainvoke`` again in the caller's task after a LeaseLostError: the lost run's
    cancellation is not left on the task, and the next run still stops on request."""
    executor = RunExecutor(registry, heartbeat_interval=3600, cancel_poll=3600)  # no polls
    first = await registry.create_run("t1", status="pending")
    second = await registry.create_run("t2", status="pending")
    started = {first.run_id: asyncio.Event(), second.run_id: asyncio.Event()}
    stops: list[tuple[Any, ...]] = []

    async def body(execution: Execution) -> RunEnd:
        started[execution.run_id].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            stops.append(exc.args)  # the executor's, not a timeout's
            raise
        raise AssertionError("not reached")

    async def caller() -> tuple[int, RunRecord | None]:
        with pytest.raises(LeaseLostError):
            await executor.execute(first, body)
        current = asyncio.current_task()
        assert current is not None
        left = current.cancelling()
        return left, await executor.execute(second, body)

    task = asyncio.create_task(caller())
    await asyncio.wait_for(started[first.run_id].wait(), WAIT)
    executor.running[first.run_id].interrupt("lost")  # what the heartbeat does
    await asyncio.wait_for(started[second.run_id].wait(), WAIT)
    await executor.cancel(second.run_id)
    left, ended = await asyncio.wait_for(task, WAIT)
    assert left == 0 and stops == [("run lost",), ("run cancel",)]
    assert ended is not None and (ended.status, ended.error) == (
        "cancelled",
        "cancelled on request",
    )


async def test_a_cancel_the_caller_swallowed_before_the_run_is_not_the_runs(
    registry: RunRegistry,
) -> None:
    """A caller's task that caught a cancellation without ``uncancel()`` (its count stays
    1) still runs runs that stop on request."""
    executor = RunExecutor(registry, heartbeat_interval=3600, cancel_poll=3600)  # no polls
    run = await registry.create_run("t", status="pending")
    started = asyncio.Event()

    stops: list[tuple[Any, ...]] = []

    async def body(_: Execution) -> RunEnd:
        started.set()
        try:
            return await forever(_)
        except asyncio.CancelledError as exc:
            stops.append(exc.args)  # the executor's, not a timeout's
            raise

    async def caller() -> tuple[int, RunRecord | None]:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # swallowed: cancelling() stays 1
        assert current.cancelling() == 1
        ended = await executor.execute(run, body)
        return current.cancelling(), ended

    task = asyncio.create_task(caller())
    await asyncio.wait_for(started.wait(), WAIT)
    await executor.cancel(run.run_id)
    left, ended = await asyncio.wait_for(task, WAIT)
    assert left == 1 and stops == [("run cancel",)]  # the caller's own count, as it was
    assert ended is not None and (ended.status, ended.error) == (
        "cancelled",
        "cancelled on request",
    )


class Layer(TypedDict, total=False):
    proposals: Annotated[dict[str, str], operator.or_]


class HeldWrites(AsyncSQLAlchemySaver):
    """The real saver; a1's writes wait for ``release`` (a slow disk), so LangGraph's loop,
    once cancelled, is waiting for them on its way out."""

    writing: asyncio.Event
    release: asyncio.Event

    async def aput_writes(
        self, config: Any, writes: Any, task_id: str, task_path: str = ""
    ) -> None:
        if any(channel == "proposals" and "a1" in value for channel, value in writes):
            self.writing.set()
            await self.release.wait()
        await super().aput_writes(config, writes, task_id, task_path)


async def test_a_repeated_cancel_keeps_the_writes_of_the_finished_agent(
    registry: RunRegistry, sqlite_url: str
) -> None:
    """a1 answered while a2 works; the run is cancelled here and the same request is seen
    again (the heartbeat, NOTIFY, the server's keeper) while LangGraph's loop waits for
    a1's writes: that wait is not cut short (a second cancel would be forwarded to the
    loop's exit task), so the run is recorded cancelled with a1's answer stored."""
    a2_stopped = asyncio.Event()

    async def a1(_: Layer) -> Layer:
        return {"proposals": {"a1": "B-trees are shallow"}}

    async def a2(_: Layer) -> Layer:
        try:
            await asyncio.Event().wait()
        finally:
            a2_stopped.set()
        return {}

    builder = StateGraph(Layer)
    builder.add_node("a1", a1)
    builder.add_node("a2", a2)
    builder.add_edge(START, "a1")
    builder.add_edge(START, "a2")
    async with HeldWrites.from_url(sqlite_url) as saver:
        saver.writing, saver.release = asyncio.Event(), asyncio.Event()
        graph = builder.compile(checkpointer=saver)
        executor = RunExecutor(registry, heartbeat_interval=3600, cancel_poll=3600)  # no polls
        run = await registry.create_run("t", status="pending")

        async def body(execution: Execution) -> RunEnd:
            config: Any = {"configurable": {"thread_id": "t", LEASE_CONFIG_KEY: execution.token}}
            async for _ in graph.astream({"proposals": {}}, config, durability="async"):
                pass
            raise AssertionError("not reached")

        task = asyncio.create_task(executor.execute(run, body))
        await asyncio.wait_for(saver.writing.wait(), WAIT)
        await executor.cancel(run.run_id)
        await asyncio.wait_for(a2_stopped.wait(), WAIT)  # the loop is on its way out
        assert executor.cancel_local(run.run_id)  # the same request, seen again
        assert task.cancelling() == 1  # not passed on to the loop's wait for a1's writes
        saver.release.set()
        ended = await asyncio.wait_for(task, WAIT)
        assert ended is not None and ended.status == "cancelled"
        state = await graph.aget_state({"configurable": {"thread_id": "t"}})
        assert state.values["proposals"] == {"a1": "B-trees are shallow"}


async def test_ended_and_unknown_runs(registry: RunRegistry) -> None:
    run = await registry.create_run("t", status="pending")
    await registry.update_run(run.run_id, status="error", error="before")
    executor = RunExecutor(registry)
    left = await executor.execute(run.run_id, never)
    assert left is not None and (left.status, left.error, left.attempts) == ("error", "before", 0)

    async def again(_: Execution) -> RunEnd:
        return RunEnd("success", answer="resumed")

    resumed = await executor.execute(run.run_id, again, resume_ended=True)
    assert resumed is not None and (resumed.status, resumed.answer) == ("success", "resumed")
    assert resumed.attempts == 1
    with pytest.raises(RunNotFoundError, match="no run 'missing'"):
        await executor.execute("missing", never)


async def test_a_run_ended_while_it_waited_is_returned_and_the_lease_given_back(
    registry: RunRegistry,
) -> None:
    await registry.acquire_lease("t", "other")
    run = await registry.create_run("t", status="pending")
    executor = RunExecutor(registry, lease_poll=0.01)
    task = asyncio.create_task(executor.execute(run, never, wait=True))
    await waiting(executor, run.run_id, task)
    await registry.update_run(run.run_id, status="error", error="ended elsewhere")
    await registry.release_lease("t", "other")
    ended = await asyncio.wait_for(task, WAIT)
    assert ended is not None and (ended.status, ended.error) == ("error", "ended elsewhere")
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None
    assert executor.running == {} and executor._waiting == {}


async def test_a_run_superseded_while_it_waited_gives_the_lease_back(
    registry: RunRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    await registry.acquire_lease("t", "other")
    run = await registry.create_run("t", status="pending", queued_by=Owner.new())
    executor = RunExecutor(registry, lease_poll=0.01)
    task = asyncio.create_task(executor.execute(run, never, wait=True))
    await waiting(executor, run.run_id, task)
    newer = await registry.create_run("t", status="pending")
    await registry.update_run(newer.run_id, status="error", error="newer failed")
    await registry.release_lease("t", "other")
    ended = await asyncio.wait_for(task, WAIT)
    assert ended is not None and ended.status == "cancelled"
    assert ended.error == (
        f"superseded: run {newer.run_id} of the thread, created later, already ended"
    )
    assert ended.owner_token is None and ended.finished_at is not None
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None
    assert thread.status == "error"  # the newer run's: the old one does not touch the thread
    assert (
        "WARNING",
        f"run {run.run_id}: newer run {newer.run_id} already ended; not running it",
    ) in logged(caplog)


async def test_a_run_another_live_process_owns(registry: RacingRegistry) -> None:
    run = await registry.create_run("t", owner=Owner.new())
    with pytest.raises(RunOwnedError, match="is being run by pid"):
        await RunExecutor(registry).execute(run, never)
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None
    ended = await registry.get_run(run.run_id)
    assert ended is not None and ended.status == "running" and ended.attempts == 1


async def test_stale_after_decides_when_a_holder_is_dead(registry: RunRegistry) -> None:
    await registry.acquire_lease("t", "other")
    run = await registry.create_run("t", owner=Owner.new())

    async def body(_: Execution) -> RunEnd:
        return RunEnd("success", answer="taken over")

    with pytest.raises(LeaseHeldError):
        await RunExecutor(registry).execute(run, body)
    ended = await RunExecutor(registry, stale_after=0).execute(run, body)
    assert ended is not None and (ended.status, ended.answer) == ("success", "taken over")
    assert ended.attempts == 2


@pytest.mark.parametrize("resume_ended", [False, True])
async def test_a_run_ended_between_the_last_read_and_the_claim(
    registry: RacingRegistry, resume_ended: bool
) -> None:
    """The live process that owns the run ends it just before the claim: the executor
    returns the ended run, even when asked to resume an ended run (it was active when
    read, so it is not one to resume)."""
    run = await registry.create_run("t", owner=Owner.new())

    async def end_it(run_id: str) -> None:
        await registry.update_run(run_id, status="cancelled", error="cancelled elsewhere")

    registry.before_claim = end_it
    ended = await RunExecutor(registry).execute(run, never, resume_ended=resume_ended)
    assert ended is not None and (ended.status, ended.error) == ("cancelled", "cancelled elsewhere")
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None


@pytest.mark.parametrize("resume_ended", [False, True])
async def test_a_queued_run_cancelled_just_before_its_claim_is_not_run(
    registry: RacingRegistry, resume_ended: bool
) -> None:
    """A cancel request for a queued run nobody holds (``moa cancel``, ``RunQueue.cancel``)
    ends it at once; landing between the executor's last read and its claim, the claim must
    not take the ended run back (clearing its cancel): the body never runs. So too for a
    worker's retried job (``resume_ended``): the run it read was active, not one to resume."""
    run = await registry.create_run("t", status="pending")

    async def cancel(run_id: str) -> None:
        await registry.request_cancel(run_id)

    registry.before_claim = cancel
    ended = await RunExecutor(registry).execute(run, never, resume_ended=resume_ended)
    assert ended is not None and (ended.status, ended.error) == (
        "cancelled",
        "cancelled before it started",
    )
    assert ended.owner_token is None and ended.attempts == 0
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None


async def test_a_cancel_notified_before_the_run_is_registered_here_is_not_lost(
    registry: RacingRegistry,
) -> None:
    """With a LISTEN connection (``cancel_listening``) and polls an hour apart, a request
    made between the claim and the run's entry in ``running`` (its notification found
    nothing to stop) is still seen: the heartbeat looks once as the run starts."""
    owner = Owner.new()
    run = await registry.create_run("t", status="pending", queued_by=owner)

    async def cancel(run_id: str) -> None:
        asked = await registry.request_cancel(run_id)
        assert asked.status == "pending" and asked.cancel_requested_at is not None

    registry.before_claim = cancel
    executor = RunExecutor(registry, heartbeat_interval=3600, cancel_poll=3600)
    executor.cancel_listening.set()

    async def hold(_: Execution) -> RunEnd:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    ended = await asyncio.wait_for(executor.execute(run, hold, owner=owner), 60)
    assert ended is not None
    assert (ended.status, ended.error) == ("cancelled", "cancelled on request")


async def test_a_run_deleted_before_its_claim_gives_the_lease_back(
    registry: RacingRegistry,
) -> None:
    run = await registry.create_run("t", status="pending")

    async def delete(run_id: str) -> None:
        await registry.delete_run(run_id)

    registry.before_claim = delete
    with pytest.raises(RunNotFoundError):
        await RunExecutor(registry).execute(run, never)
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None


# ------------------------------------------------------------ how a body ends ---


async def test_a_failing_body_is_recorded_as_error(registry: RunRegistry) -> None:
    events: list[tuple[str, Any]] = []

    async def emit(event: str, data: Any) -> None:
        events.append((event, data))

    async def usage() -> dict[str, Any]:
        return {"total": {"calls": 2, "cost": 0.5}}

    async def body(_: Execution) -> RunEnd:
        raise ValueError("bad\nsecond line")

    run = await registry.create_run("t", status="pending")
    ended = await RunExecutor(registry).execute(run, body, emit=emit, usage_so_far=usage)
    assert ended is not None
    assert (ended.status, ended.error, ended.usage, ended.owner_token) == (
        "error",
        "ValueError: bad\nsecond line",
        {"calls": 2, "cost": 0.5},
        None,
    )
    assert events == [("error", {"error": "ValueError", "message": "bad\nsecond line"})]
    thread = await registry.get_thread("t")
    assert thread is not None and thread.status == "error" and thread.lease_token is None


async def test_error_naming_a_failing_emit_and_usage_and_reraise(registry: RunRegistry) -> None:
    async def emit(event: str, data: Any) -> None:
        raise RuntimeError("client gone")

    async def usage() -> dict[str, Any]:
        raise RuntimeError("no usage")

    async def body(_: Execution) -> RunEnd:
        raise KeyError("k")

    run = await registry.create_run("t", status="pending")
    executor = RunExecutor(registry)
    with pytest.raises(KeyError):
        await executor.execute(
            run,
            body,
            emit=emit,
            usage_so_far=usage,
            describe_error=lambda e: ("Boom", f"custom {type(e).__name__}"),
            reraise=True,
        )
    ended = await registry.get_run(run.run_id)
    assert ended is not None
    assert (ended.status, ended.error, ended.usage) == ("error", "Boom: custom KeyError", {})
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None


async def test_a_body_that_lost_ownership_records_nothing(registry: RunRegistry) -> None:
    async def body(_: Execution) -> RunEnd:
        raise OwnershipLostError("taken")

    run = await registry.create_run("t", status="pending")
    with pytest.raises(OwnershipLostError, match="taken"):
        await RunExecutor(registry).execute(run, body)
    ended = await registry.get_run(run.run_id)
    assert ended is not None and (ended.status, ended.error) == ("running", None)


async def test_a_fenced_write_is_a_lost_lease(registry: RunRegistry) -> None:
    async def body(_: Execution) -> RunEnd:
        try:
            raise conflict()
        except CheckpointConflictError as exc:
            raise RuntimeError("the graph failed") from exc

    run = await registry.create_run("t", status="pending")
    with pytest.raises(LeaseLostError) as lost:
        await RunExecutor(registry).execute(run, body)
    assert str(lost.value) == (
        f"run {run.run_id}: the checkpointer refused its write, another process holds "
        "thread t now; it stopped"
    )
    ended = await registry.get_run(run.run_id)
    assert ended is not None and (ended.status, ended.error) == ("running", None)


async def test_hand_back_gives_the_run_back_pending(registry: RunRegistry) -> None:
    class Later(Exception):
        pass

    async def body(_: Execution) -> RunEnd:
        raise Later("shutting down")

    run = await registry.create_run("t", status="pending")
    with pytest.raises(Later):
        await RunExecutor(registry).execute(run, body, hand_back=(Later,))
    back = await registry.get_run(run.run_id)
    assert back is not None and (back.status, back.owner_token, back.error) == (
        "pending",
        None,
        None,
    )
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None and thread.status == "busy"
    assert thread.updated_at >= back.updated_at  # the thread follows its run


@pytest.mark.parametrize("how", ["on_stop=None", "hand_back"])
async def test_a_run_taken_over_is_not_handed_back(registry: RunRegistry, how: str) -> None:
    """Giving a run back is fenced: a run another process took meanwhile stays its own,
    and the caller still gets its own cancellation or exception."""

    class Later(Exception):
        pass

    thief = Owner.new()
    started = asyncio.Event()

    async def body(ex: Execution) -> RunEnd:
        await registry.update_run(ex.run_id, owner_token=thief.token)
        if how == "hand_back":
            raise Later("shutting down")
        started.set()
        return await forever(ex)

    run = await registry.create_run("t", status="pending")
    task = asyncio.create_task(
        RunExecutor(registry).execute(run, body, on_stop=None, hand_back=(Later,))
    )
    if how == "hand_back":
        with pytest.raises(Later):
            await asyncio.wait_for(task, WAIT)
    else:
        await asyncio.wait_for(started.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    kept = await registry.get_run(run.run_id)
    assert kept is not None and (kept.status, kept.owner_token) == ("running", thief.token)
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None


async def test_a_failed_record_is_an_error_naming_why(
    registry: RunRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(_: Execution) -> RunEnd:
        return RunEnd("bogus", answer="a", usage={"calls": 1})

    run = await registry.create_run("t", status="pending")
    await registry.update_run(run.run_id, usage={"calls": 5})  # of an earlier attempt
    ended = await RunExecutor(registry).execute(run, body)
    assert ended is not None
    assert (ended.status, ended.answer, ended.usage, ended.owner_token) == ("error", None, {}, None)
    assert ended.error == (
        "cannot record the end of the run (bogus): ValueError: unknown run status 'bogus'; "
        f"use one of {', '.join(RUN_STATUSES)}"
    )
    assert logged(caplog) == [("ERROR", f"run {run.run_id}: cannot record its end (bogus)")]


async def test_a_failed_record_of_a_run_taken_over_records_nothing(
    registry: RunRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """The error that replaces a refused end is fenced too."""
    thief = Owner.new()

    async def body(ex: Execution) -> RunEnd:
        await registry.update_run(ex.run_id, owner_token=thief.token)
        return RunEnd("bogus")

    run = await registry.create_run("t", status="pending")
    assert await RunExecutor(registry).execute(run, body) is None
    kept = await registry.get_run(run.run_id)
    assert kept is not None
    assert (kept.status, kept.error, kept.owner_token) == ("running", None, thief.token)
    assert logged(caplog) == [
        ("ERROR", f"run {run.run_id}: cannot record its end (bogus)"),
        ("ERROR", f"run {run.run_id}: cannot record that its end failed"),
    ]


async def test_a_run_deleted_midway_records_nothing(
    registry: RunRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(ex: Execution) -> RunEnd:
        await registry.delete_run(ex.run_id)
        return RunEnd("success")

    run = await registry.create_run("t", status="pending")
    assert await RunExecutor(registry).execute(run, body) is None
    assert logged(caplog) == [
        ("ERROR", f"run {run.run_id}: cannot record its end (success)"),
        ("ERROR", f"run {run.run_id}: cannot record that its end failed"),
    ]
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token is None


async def test_a_run_taken_over_midway_is_not_recorded(
    registry: RunRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    thief = Owner.new()

    async def body(ex: Execution) -> RunEnd:
        await registry.update_run(ex.run_id, owner_token=thief.token)
        return RunEnd("success", answer="mine")

    run = await registry.create_run("t", status="pending")
    assert await RunExecutor(registry).execute(run, body) is None
    taken = await registry.get_run(run.run_id)
    assert taken is not None and (taken.status, taken.answer, taken.owner_token) == (
        "running",
        None,
        thief.token,
    )
    assert logged(caplog) == [
        ("WARNING", f"run {run.run_id}: another process owns it now; not recording its end")
    ]


# --------------------------------------------------------------- cancellation ---


async def test_caller_cancellation_records_on_stop(registry: RunRegistry) -> None:
    """Ctrl-C: ``on_stop`` (a status, or a function deciding it) is recorded with the usage
    so far; None gives the run back as it is (still active, no owner, lease free)."""

    async def usage() -> dict[str, Any]:
        return {"calls": 4}

    cases: list[Any] = ["interrupted", "cancelled", lambda: "error", lambda: None, None]
    for n, on_stop in enumerate(cases):
        run = await registry.create_run(f"t{n}", status="pending")
        started = asyncio.Event()

        async def body(_: Execution, started: asyncio.Event = started) -> RunEnd:
            started.set()
            return await forever(_)

        task = asyncio.create_task(
            RunExecutor(registry).execute(run, body, on_stop=on_stop, usage_so_far=usage)
        )
        await asyncio.wait_for(started.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ended = await registry.get_run(run.run_id)
        thread = await registry.get_thread(f"t{n}")
        assert ended is not None and thread is not None and thread.lease_token is None
        assert ended.owner_token is None
        stop = on_stop() if callable(on_stop) else on_stop
        if stop is None:
            assert (ended.status, ended.error, ended.usage, thread.status) == (
                "running",
                None,
                {},
                "busy",
            )
        else:
            assert (ended.status, ended.error, ended.usage) == (
                stop,
                "stopped before the end",
                {"calls": 4},
            )


async def test_cancel_of_a_running_run_is_recorded_and_the_caller_goes_on(
    registry: RunRegistry,
) -> None:
    run = await registry.create_run("t", status="pending")
    executor = RunExecutor(registry, heartbeat_interval=3600, cancel_poll=3600)  # no polls
    started = asyncio.Event()

    async def body(_: Execution) -> RunEnd:
        started.set()
        return await forever(_)

    async def usage() -> dict[str, Any]:
        return {"calls": 1}

    async def caller() -> tuple[RunRecord | None, int]:
        ended = await executor.execute(run, body, usage_so_far=usage)
        current = asyncio.current_task()
        assert current is not None
        return ended, current.cancelling()

    task = asyncio.create_task(caller())
    await asyncio.wait_for(started.wait(), WAIT)
    assert executor.cancel_local("unknown") is False
    asked = await executor.cancel(run.run_id)
    assert asked.cancel_requested_at is not None and asked.status == "running"
    ended, cancelling = await asyncio.wait_for(task, WAIT)
    assert cancelling == 0  # the caller's task is not left cancelled
    assert ended is not None and (ended.status, ended.error, ended.usage) == (
        "cancelled",
        "cancelled on request",
        {"calls": 1},
    )
    assert executor.cancel_local(run.run_id) is False  # no longer running here


async def test_a_queued_run_cancelled_elsewhere_does_not_start(registry: RunRegistry) -> None:
    """The thread is busy (another holder); the run is queued by a live process, so a
    cancel request leaves it pending for that process, which marks it cancelled."""
    await registry.acquire_lease("t", "other")
    run = await registry.create_run("t", status="pending", queued_by=Owner.new())
    executor = RunExecutor(registry, lease_poll=0.01)
    task = asyncio.create_task(executor.execute(run, never, wait=True))
    await waiting(executor, run.run_id, task)
    asked = await registry.request_cancel(run.run_id)
    assert asked.status == "pending"
    ended = await asyncio.wait_for(task, WAIT)
    assert ended is not None
    assert (ended.status, ended.error, ended.owner_token) == (
        "cancelled",
        "cancelled before it started",
        None,
    )
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token == "other" and thread.status == "busy"
    assert executor._waiting == {}


async def test_a_waiting_run_cancelled_here(registry: RunRegistry) -> None:
    await registry.acquire_lease("t", "other")
    run = await registry.create_run("t", status="pending")
    executor = RunExecutor(registry, lease_poll=WAIT)  # woken by the cancel, not a poll
    task = asyncio.create_task(executor.execute(run, never, wait=True))
    await waiting(executor, run.run_id, task)
    assert executor.cancel_local(run.run_id) is True
    ended = await asyncio.wait_for(task, WAIT)
    assert ended is not None and (ended.status, ended.error) == (
        "cancelled",
        "cancelled before it started",
    )


async def test_wait_means_after_the_older_runs_of_the_thread(registry: RacingRegistry) -> None:
    older = await at(registry, await registry.create_run("t", status="pending"), 1)
    run = await at(registry, await registry.create_run("t", status="pending"), 2)
    seen: list[str | None] = []

    async def body(_: Execution) -> RunEnd:
        before = await registry.get_run(older.run_id)
        seen.append(before.status if before else None)
        return RunEnd("success")

    ended = await RunExecutor(registry).execute(run, body)  # not waiting: runs at once
    assert ended is not None and ended.status == "success" and seen == ["pending"]
    later = await at(registry, await registry.create_run("t", status="pending"), 3)
    executor = RunExecutor(registry, lease_poll=0.01)
    registry.asked_for_cancels = asyncio.Event()
    task = asyncio.create_task(executor.execute(later, body, wait=True))
    asked = asyncio.create_task(registry.asked_for_cancels.wait())
    await asyncio.wait({task, asked}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    assert not task.done() and seen == ["pending"]  # it waits for the older run
    await registry.update_run(older.run_id, status="success")
    ended = await asyncio.wait_for(task, WAIT)
    assert ended is not None and ended.status == "success" and seen == ["pending", "success"]


# ------------------------------------------------------------------ heartbeat ---


async def test_heartbeat_polls_cancels_and_renews_every_interval(sqlite_url: str) -> None:
    """A cancel poll every ``cancel_poll``; the lease and the run's heartbeat renewed every
    ``heartbeat_interval`` (5 polls here): counted, not timed."""
    async with CountingRegistry.from_url(sqlite_url) as registry:
        await registry.setup()
        registry.renewed_twice = asyncio.Event()
        run = await registry.create_run("t", status="pending")
        first: dict[str, Any] = {}
        counts: list[int] = []

        async def body(ex: Execution) -> RunEnd:
            thread, me = await registry.get_thread("t"), await registry.get_run(ex.run_id)
            assert thread is not None and me is not None
            first.update(lease=thread.lease_heartbeat_at, run=me.heartbeat_at)
            await asyncio.wait_for(registry.renewed_twice.wait(), WAIT)
            counts.extend([registry.polls, registry.renewals])
            thread, me = await registry.get_thread("t"), await registry.get_run(ex.run_id)
            assert thread is not None and me is not None
            first.update(lease_now=thread.lease_heartbeat_at, run_now=me.heartbeat_at)
            return RunEnd("success")

        executor = RunExecutor(registry, heartbeat_interval=0.05, cancel_poll=0.01)
        ended = await executor.execute(run, body)
    assert ended is not None and ended.status == "success"
    assert counts == [10, 2]
    assert first["lease_now"] > first["lease"] and first["run_now"] > first["run"]


async def test_heartbeat_goes_on_after_a_failed_poll(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with CountingRegistry.from_url(sqlite_url) as registry:
        await registry.setup()
        registry.renewed_twice = asyncio.Event()
        registry.fail_first_poll = True
        run = await registry.create_run("t", status="pending")

        counts: list[int] = []

        async def body(_: Execution) -> RunEnd:
            await asyncio.wait_for(registry.renewed_twice.wait(), WAIT)
            counts.extend([registry.polls, registry.renewals])
            return RunEnd("success")

        executor = RunExecutor(registry, heartbeat_interval=0.05, cancel_poll=0.01)
        ended = await executor.execute(run, body)
    assert ended is not None and ended.status == "success" and counts == [10, 2]
    assert logged(caplog) == [
        ("WARNING", f"heartbeat of run {run.run_id} failed: database is locked")
    ]


async def test_heartbeat_sees_a_cancel_request_made_elsewhere(registry: RunRegistry) -> None:
    run = await registry.create_run("t", status="pending")
    started = asyncio.Event()

    async def body(_: Execution) -> RunEnd:
        started.set()
        return await forever(_)

    executor = RunExecutor(registry, heartbeat_interval=3600, cancel_poll=0.01)
    task = asyncio.create_task(executor.execute(run, body))
    await asyncio.wait_for(started.wait(), WAIT)
    await registry.request_cancel(run.run_id)  # as another process would
    ended = await asyncio.wait_for(task, WAIT)
    assert ended is not None and (ended.status, ended.error) == (
        "cancelled",
        "cancelled on request",
    )


@pytest.mark.parametrize("taken", ["lease", "run"])
async def test_heartbeat_stops_a_run_whose_lease_or_ownership_is_gone(
    registry: RunRegistry, taken: str
) -> None:
    run = await registry.create_run("t", status="pending")
    started = asyncio.Event()

    async def body(_: Execution) -> RunEnd:
        started.set()
        return await forever(_)

    executor = RunExecutor(registry, heartbeat_interval=0.01)
    task = asyncio.create_task(executor.execute(run, body))
    await asyncio.wait_for(started.wait(), WAIT)
    if taken == "lease":
        await registry.acquire_lease("t", "thief", stale_after=0)
    else:
        await registry.update_run(run.run_id, owner_token="thief")
    with pytest.raises(LeaseLostError) as lost:
        await asyncio.wait_for(task, WAIT)
    assert str(lost.value) == (
        f"run {run.run_id}: another process took thread t (this one was taken for dead); it stopped"
    )
    left = await registry.get_run(run.run_id)
    assert left is not None and (left.status, left.error, left.answer) == ("running", None, None)
    thread = await registry.get_thread("t")
    assert thread is not None
    assert thread.lease_token == ("thief" if taken == "lease" else None)


@pytest.mark.parametrize("end", ["success", "error", "cancelled"])
async def test_a_cancel_during_the_record_does_not_cut_it_short(
    registry: RacingRegistry, end: str
) -> None:
    """Once the body has ended, a cancel request (here, arriving while the end is being
    written) does not reach the caller's task: the end is recorded whole."""
    run = await registry.create_run("t", status="pending")
    executor = RunExecutor(registry)
    started = asyncio.Event()
    late: list[bool] = []

    def cancel_now(run_id: str, values: dict[str, Any]) -> None:
        if values.get("owner") is not None and values.get("release"):
            late.append(executor.cancel_local(run_id))

    registry.before_update = cancel_now

    async def body(_: Execution) -> RunEnd:
        if end == "error":
            raise ValueError("failed")
        if end == "cancelled":
            started.set()
            return await forever(_)
        return RunEnd("success", answer="whole")

    task = asyncio.create_task(executor.execute(run, body))
    if end == "cancelled":
        await asyncio.wait_for(started.wait(), WAIT)
        await executor.cancel(run.run_id)
    ended = await asyncio.wait_for(task, WAIT)
    assert late == [True]  # it was still running here, and asked
    assert ended is not None and ended.status == end and ended.owner_token is None
    assert ended.answer == ("whole" if end == "success" else None)


async def test_a_lease_that_cannot_be_given_back_is_logged(
    registry: RacingRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.fail_release = True

    async def body(_: Execution) -> RunEnd:
        return RunEnd("success", answer="kept")

    run = await registry.create_run("t", status="pending")
    ended = await RunExecutor(registry).execute(run, body)
    assert ended is not None and (ended.status, ended.answer) == ("success", "kept")
    (warning,) = [r for r in caplog.records if r.name == LOGGER]
    assert (warning.levelname, warning.getMessage()) == (
        "WARNING",
        "cannot release the lease of thread t",
    )
    assert warning.exc_info is not None and isinstance(warning.exc_info[1], ConnectionError)


async def test_a_superseded_run_is_ended_without_its_thread_lease(registry: RunRegistry) -> None:
    """A newer run already ended: the old run is cancelled at once, even while another
    holder has the thread's lease (it never asks for it)."""
    await registry.acquire_lease("t", "other")
    old = await at(registry, await registry.create_run("t", status="pending"), 1)
    newer = await at(registry, await registry.create_run("t", status="pending"), 2)
    await registry.update_run(newer.run_id, status="success")
    ended = await RunExecutor(registry).execute(old, never)
    assert ended is not None and ended.status == "cancelled"
    assert ended.error is not None and ended.error.startswith(f"superseded: run {newer.run_id}")
    thread = await registry.get_thread("t")
    assert thread is not None and thread.lease_token == "other"


async def test_a_resumed_run_records_its_calls_under_its_attempt(registry: RunRegistry) -> None:
    attempts: list[tuple[int, int | None]] = []

    async def body(ex: Execution) -> RunEnd:
        attempts.append((ex.run.attempts, ex.calls.attempt if ex.calls else None))
        return RunEnd("interrupted")

    run = await registry.create_run("t", status="pending")
    executor = RunExecutor(registry)
    await executor.execute(run, body)
    await executor.execute(run.run_id, body, resume_ended=True)
    assert attempts == [(1, 1), (2, 2)]
