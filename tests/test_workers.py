"""Scale-out with procrastinate: real `moa worker` processes on the machine's PostgreSQL.

The model server lives in the test process; workers reach it over HTTP (the spec's
base_url). Worker timings are shortened for tests (heartbeat 1 s, dead after 8 s of silence);
every wait is on an event or a condition, bounded by WAIT as a last guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from langgraph_moa.graphs import compile_graph
from langgraph_moa.persistence.events import EventLog
from langgraph_moa.persistence.registry import Owner, RunRegistry
from langgraph_moa.runtime.executor import LeaseLostError, RunExecutor
from langgraph_moa.runtime.store import open_checkpointer
from langgraph_moa.runtime.worker_runs import RunBusy
from langgraph_moa.runtime.workers import (
    RunQueue,
    WorkerConfigError,
    WorkerRuntime,
    WorkerSettings,
    conninfo_of,
    setup,
)
from langgraph_moa.server.service import MoAServer
from langgraph_moa.spec import load_spec
from langgraph_moa.testing import ModelServer
from langgraph_moa.testing.rules import default_reply
from tests.test_workers_support import (
    HEARTBEAT,
    REAP_INTERVAL,
    STALLED_AFTER,
    WAIT,
    Workers,
    calls,
    finished,
    queue,
    spec_for,
    until,
    workers,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
__all__ = ["queue", "workers"]  # fixtures


async def test_killed_worker_run_is_finished_by_the_other_worker(
    pg_url: str, model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """SIGKILL the worker holding a run in the middle of layer 2 (b1 and b2 answered,
    b3 still thinking): the other worker finishes it, and only b3 is asked again."""
    model_server.add_rule(model="b3", prompt="victim", delay=600, times=1)
    spec = spec_for(model_server)
    first = workers.start("--concurrency", "2")
    second = workers.start("--concurrency", "2")
    await workers.ready(2)

    victim = await queue.submit(spec, "the victim task")
    others = [await queue.submit(spec, f"other task {i}") for i in range(3)]

    async with open_checkpointer(pg_url) as saver:
        graph = compile_graph(load_spec(spec), checkpointer=saver)
        config = {"configurable": {"thread_id": victim.thread_id}}

        async def b1_b2_saved() -> bool:
            state = await graph.aget_state(config)  # type: ignore[arg-type]
            saved = {t.name for t in state.tasks if t.result is not None}
            return {"L2_b1", "L2_b2"} <= saved and "L2_b3" not in saved

        await until(b1_b2_saved, "b1 and b2 of layer 2 to be checkpointed", workers)
    await until(lambda: model_server.in_flight("b3") >= 1, "b3 to be called", workers)
    run = await queue.get(victim.run_id)
    assert run is not None and run.status == "running" and run.owner_pid is not None
    holder = next(p for p in (first, second) if p.pid == run.owner_pid)
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    record = await finished(queue, victim.run_id, workers)
    assert record.status == "success", workers.logs()
    assert record.answer and record.answer.startswith("s answer")
    assert calls(model_server, "victim") == {"a1": 1, "a2": 1, "b1": 1, "b2": 1, "b3": 2, "s": 1}

    events = await queue.events.read(victim.run_id)
    starts = [e.data for e in events if e.event == "metadata"]
    assert [s["resumed"] for s in starts] == [False, True]
    assert starts[0]["worker"].endswith(f":{holder.pid}")
    survivor = first if holder is second else second
    assert starts[1]["worker"].endswith(f":{survivor.pid}")
    assert record.attempts == 2
    for other in others:
        done = await finished(queue, other.run_id, workers)
        assert done.status == "success"


async def test_run_longer_than_the_dead_worker_threshold_runs_once(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """Agents held past the dead-worker threshold (plus two reaper sweeps): the live workers
    keep their runs (heartbeats), so every agent is called once and no run is re-queued."""
    gate = threading.Event()
    model_server.add_rule(
        model="a[12]", reply=lambda req: default_reply(req) if gate.wait(WAIT) else "late"
    )
    spec = spec_for(model_server)
    spec["layers"] = spec["layers"][:1]
    spec["layers"][0]["synthesizer"] = "concat"
    workers.start("--concurrency", "1")
    workers.start("--concurrency", "1")
    await workers.ready(2)
    runs = [await queue.submit(spec, f"long task {i}") for i in range(2)]
    try:
        await until(lambda: model_server.in_flight() >= 4, "both runs to call", workers)
        held_for = timedelta(seconds=STALLED_AFTER + 2 * REAP_INTERVAL)

        async def held_past_the_threshold() -> bool:
            records = [await queue.get(sub.run_id) for sub in runs]
            now = datetime.now(UTC).replace(tzinfo=None)  # the registry's naive UTC times
            return all(r and r.started_at and now - r.started_at > held_for for r in records)

        await until(held_past_the_threshold, "the runs to outlive the threshold", workers)
    finally:
        gate.set()
    for i, sub in enumerate(runs):
        record = await finished(queue, sub.run_id, workers)
        assert record.status == "success", workers.logs()
        assert record.attempts == 1
        assert calls(model_server, f"long task {i}") == {"a1": 1, "a2": 1}
        events = await queue.events.read(sub.run_id)
        assert [e.event for e in events].count("metadata") == 1
    assert "re-queued" not in workers.logs()


async def test_sigterm_hands_the_run_back_at_a_checkpoint(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """SIGTERM while layer 1 is running: the worker lets the layer finish, stops at the
    checkpoint, exits, and the other worker does layer 2; nothing is asked twice."""
    gate = threading.Event()
    model_server.add_rule(
        model="a[12]", reply=lambda req: f"{req.model} answer" if gate.wait(WAIT) else "late"
    )
    spec = spec_for(model_server)
    leaving = workers.start("--grace", "60")
    await workers.ready(1)
    sub = await queue.submit(spec, "the drained task")
    await until(lambda: model_server.in_flight() >= 2, "layer 1 to start", workers)
    staying = workers.start()
    await workers.ready(2)
    leaving.send_signal(signal.SIGTERM)
    await until(lambda: "draining" in workers.logs(), "the worker to drain", workers)
    gate.set()
    record = await finished(queue, sub.run_id, workers)
    assert leaving.wait(timeout=WAIT) == 0, workers.logs()
    assert record.status == "success", workers.logs()
    assert calls(model_server, "drained") == {"a1": 1, "a2": 1, "b1": 1, "b2": 1, "b3": 1, "s": 1}
    starts = [e.data for e in await queue.events.read(sub.run_id) if e.event == "metadata"]
    assert [s["worker"].rsplit(":", 1)[1] for s in starts] == [str(leaving.pid), str(staying.pid)]
    assert [s["resumed"] for s in starts] == [False, True]


async def test_runs_of_one_thread_never_overlap(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """Two runs queued on one thread with two idle workers: procrastinate's lock on the
    thread id makes the second wait for the first, and it sees the first's messages."""
    model_server.set_latency(None, 0.3)
    spec = spec_for(model_server)
    workers.start()
    workers.start()
    await workers.ready(2)
    one = await queue.submit(spec, "first question", thread_id="shared-thread")
    two = await queue.submit(spec, "second question", thread_id="shared-thread")
    first = await finished(queue, one.run_id, workers)
    second = await finished(queue, two.run_id, workers)
    assert first.status == second.status == "success"
    assert first.finished_at is not None and second.started_at is not None
    assert second.started_at >= first.finished_at
    assert model_server.max_in_flight("s") == 1


async def test_follow_replays_from_an_event_id(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    spec = spec_for(model_server)
    workers.start()
    await workers.ready(1)
    sub = await queue.submit(spec, "stream me", stream_mode=["updates"])
    live = [e async for e in queue.follow(sub.run_id)]
    assert live[0].event == "metadata" and live[-1].event == "end"
    nodes = [next(iter(e.data)) for e in live if e.event == "updates"]
    assert nodes[0] == "prepare" and nodes[-1] == "L2_synthesizer"
    middle = live[len(live) // 2]
    replay = [e async for e in queue.follow(sub.run_id, after=middle.id)]
    assert replay == live[live.index(middle) + 1 :]


async def test_cancel_a_queued_run(pg_url: str, model_server: ModelServer, queue: RunQueue) -> None:
    sub = await queue.submit(spec_for(model_server), "never runs", queue="nobody-listens")
    assert await queue.cancel(sub.run_id)
    record = await queue.wait(sub.run_id)
    assert record.status == "cancelled"
    assert not await queue.cancel(sub.run_id)


@pytest.mark.parametrize("end_logged", [False, True])
async def test_cancel_a_queued_run_whose_job_is_gone(
    pg_url: str, model_server: ModelServer, queue: RunQueue, end_logged: bool
) -> None:
    """A queued run whose job was lost (deleted by hand, say) is ended by the cancel
    request itself: ``cancel`` says it cancelled it, and its followers get one end, also
    when one is logged already (a worker that took the job and saw the cancel)."""
    sub = await queue.submit(spec_for(model_server), "job gone", queue="nobody-listens")
    async with await psycopg.AsyncConnection.connect(conninfo_of(pg_url), autocommit=True) as db:
        deleted = await db.execute(
            "DELETE FROM procrastinate_jobs WHERE queueing_lock = %s", (sub.run_id,)
        )
        assert deleted.rowcount == 1
    if end_logged:
        await queue.events.append(sub.run_id, "end", None)
    assert await queue.cancel(sub.run_id)
    record = await asyncio.wait_for(queue.wait(sub.run_id), WAIT)
    assert (record.status, record.error) == ("cancelled", "cancelled before it started")
    assert [e.event for e in await queue.events.read(sub.run_id)].count("end") == 1
    assert not await queue.cancel(sub.run_id)


def test_cli_submit_and_wait(pg_url: str, model_server: ModelServer, workers: Workers) -> None:
    spec_file = workers.tmp / "spec.json"
    spec_file.write_text(json.dumps(spec_for(model_server)))
    asyncio.run(_start_one(workers))
    cli = [sys.executable, "-m", "langgraph_moa.cli", "run", "--db", pg_url, "-s", str(spec_file)]
    queued = subprocess.run([*cli, "cli task", "--submit", "--json"], capture_output=True)
    assert queued.returncode == 0, queued.stderr.decode()
    ids = json.loads(queued.stdout)
    assert ids["status"] == "pending" and ids["queue"] == "moa"
    waited = subprocess.run(
        [*cli, "cli task 2", "--submit", "--wait", "--json"], capture_output=True
    )
    assert waited.returncode == 0, waited.stderr.decode() + workers.logs()
    result = json.loads(waited.stdout)
    assert result["status"] == "success" and result["answer"].startswith("s answer")
    assert result["usage"]["total"]["total_tokens"] > 0
    assert result["aggregation"]["1"]["mode"] == "concat"
    assert result["aggregation"]["2"]["cited"] == 0
    claim = {"text": result["answer"], "agents": [], "proposals": [], "inferred": True}
    assert result["attribution"] == [claim]  # its words are in no proposal


async def _start_one(workers: Workers) -> None:
    workers.start()
    await workers.ready(1)


def test_worker_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(WorkerConfigError, match="need PostgreSQL"):
        conninfo_of(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(WorkerConfigError, match="at least twice the heartbeat"):
        WorkerSettings(heartbeat_interval=5, stalled_after=6)
    with pytest.raises(WorkerConfigError, match="--concurrency"):
        WorkerSettings(concurrency=0)
    with pytest.raises(WorkerConfigError, match="cancel_poll must be positive, got 0"):
        WorkerSettings(cancel_poll=0)
    done = subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", "worker", "--db", f"sqlite:///{tmp_path}/x"],
        capture_output=True,
    )
    assert done.returncode == 2 and b"need PostgreSQL" in done.stderr
    assert conninfo_of("postgresql+psycopg://u:p@h:5433/db?sslmode=require") == (
        "postgresql://u:p@h:5433/db?sslmode=require"
    )


async def test_paused_run_is_continued_by_a_new_queued_run(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """A run queued with a pause after layer 1's agents ends ``interrupted``; a run queued
    with no task on the same thread continues it, without asking layer 1 again."""
    spec = spec_for(model_server)
    workers.start()
    await workers.ready(1)
    paused = await queue.submit(spec, "pause me", interrupt_after=["a1", "a2"])
    record = await finished(queue, paused.run_id, workers)
    assert record.status == "interrupted", workers.logs()
    assert record.waiting_for == [{"kind": "paused", "next": ["L1_synthesizer"]}]
    assert calls(model_server, "pause me") == {"a1": 1, "a2": 1}
    going_on = await queue.submit(spec, None, thread_id=paused.thread_id)
    record = await finished(queue, going_on.run_id, workers)
    assert record.status == "success" and record.answer
    assert calls(model_server, "pause me") == {"a1": 1, "a2": 1, "b1": 1, "b2": 1, "b3": 1, "s": 1}


def test_workers_bench_runs(tmp_path: Path) -> None:
    """bench/workers.py still works (tiny arguments; its timings are not checked)."""
    out = tmp_path / "workers.json"
    bench = Path(__file__).resolve().parents[1] / "bench"
    done = subprocess.run(
        [
            sys.executable,
            "workers.py",
            "--levels",
            "1",
            "--concurrency",
            "2",
            "--rounds",
            "1",
            "--latency",
            "0.01",
            "--out",
            str(out),
        ],
        cwd=bench,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["workers"] == 1 and row["runs"] == 2 and row["max_attempts"] == 1
    assert "runs/s" in done.stdout


async def test_cancel_a_running_run(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """Cancelling a run a worker is executing stops it there through the run's executor,
    which cancels it once (procrastinate's abort, a second cancel, could cut LangGraph's
    last writes short): the job ends normally; the worker goes on with the next run."""
    model_server.add_rule(model="a1", prompt="stop me", delay=600)
    spec = spec_for(model_server)
    workers.start("--concurrency", "1")
    await workers.ready(1)
    doomed = await queue.submit(spec, "stop me")
    await until(lambda: model_server.in_flight("a1") >= 1, "the run to start", workers)
    assert await queue.cancel(doomed.run_id)
    record = await finished(queue, doomed.run_id, workers)
    assert record.status == "cancelled", workers.logs()
    assert record.error == "cancelled on request"  # by the run's executor, not an abort
    after = await queue.submit(spec, "next one")
    assert (await finished(queue, after.run_id, workers)).status == "success"


async def test_a_worker_acts_on_a_cancel_as_it_is_made(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """The worker's LISTEN connection passes a cancel request on at once: with the run's
    own registry poll an hour apart, the run still ends cancelled well within the wait."""
    model_server.add_rule(model="a1", prompt="stop me now", delay=600)
    hour = ("--heartbeat", "3600", "--stalled-after", "7200", "--cancel-poll", "3600")
    workers.start("--concurrency", "1", *hour)
    await workers.ready(1)
    doomed = await queue.submit(spec_for(model_server), "stop me now")
    await until(lambda: model_server.in_flight("a1") >= 1, "the run to start", workers)
    assert await queue.cancel(doomed.run_id)
    record = await finished(queue, doomed.run_id, workers)
    assert (record.status, record.error) == ("cancelled", "cancelled on request"), workers.logs()


async def test_one_listener_passes_cancels_to_each_handler_of_a_worker(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's one LISTEN connection hands a request for a run its moa handler does not
    hold to the HTTP server's handler opened in the worker, whose runs also look for a
    missed request as they start; both poll on ``cancel_poll``, and the server's runs beat
    no slower than ``moa serve``'s default (10 s)."""
    settings = WorkerSettings(
        db_url=pg_url, heartbeat_interval=30, stalled_after=90, cancel_poll=0.25
    )
    await setup(pg_url)
    async with EventLog.from_url(pg_url) as events, RunRegistry.from_url(pg_url) as registry:
        runtime = await WorkerRuntime(settings, events, registry).__aenter__()
        listener: asyncio.Task[None] | None = None
        try:
            opened = await asyncio.gather(*(runtime.handler("server") for _ in range(3)))
            server = opened[0]  # concurrent first jobs open one handler
            assert isinstance(server, MoAServer) and opened == [server] * 3
            moa = runtime._moa().executor
            assert (moa.heartbeat_interval, moa.cancel_poll) == (30, 0.25)
            assert (server.runner.heartbeat_interval, server.runner.cancel_poll) == (10, 0.25)
            assert server.runner.cancel_listening is runtime.cancel_listening
            asked: list[str] = []
            seen = asyncio.Event()

            def cancel_local(run_id: str) -> bool:
                asked.append(run_id)
                seen.set()
                return True

            monkeypatch.setattr(server.runner, "cancel_local", cancel_local)
            listener = asyncio.create_task(runtime.listen_for_cancels())
            await asyncio.wait_for(runtime.cancel_listening.wait(), WAIT)
            run = await registry.create_run("listened", status="pending", queued_by=Owner.new())
            await registry.request_cancel(run.run_id)
            await asyncio.wait_for(seen.wait(), WAIT)
            assert asked == [run.run_id]
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            await runtime.__aexit__(None, None, None)


async def test_a_server_run_on_a_thread_another_host_holds_is_retried(pg_url: str) -> None:
    """A run the HTTP server queued, whose thread's lease a live process on another host
    still holds (say a dead worker's, not yet stale when its job was queued again): the
    job raises RunBusy, which procrastinate retries, rather than ending with the run left
    ``pending`` and no job to run it."""
    await setup(pg_url)
    async with EventLog.from_url(pg_url) as events, RunRegistry.from_url(pg_url) as registry:
        runtime = await WorkerRuntime(WorkerSettings(db_url=pg_url), events, registry).__aenter__()
        try:
            thread_id = f"held-{uuid.uuid4().hex}"
            elsewhere = Owner(host="another-host", pid=4242, token=uuid.uuid4().hex)
            await registry.acquire_lease(thread_id, "its-token", owner=elsewhere)
            run = await registry.create_run(thread_id, status="pending")
            context = SimpleNamespace(job=SimpleNamespace(attempts=1))
            job = {"run_id": run.run_id, "thread_id": thread_id, "handler": "server"}
            with pytest.raises(RunBusy, match="another-host"):
                await runtime.execute(context, job)  # type: ignore[arg-type]
            after = await registry.get_run(run.run_id)
            assert after is not None and (after.status, after.owner_token) == ("pending", None)
            assert await events.last(run.run_id, "end") is None
        finally:
            await runtime.__aexit__(None, None, None)


async def test_a_server_job_ends_its_run_once_and_lets_a_takeover_finish(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP server's handler in a worker: a run cancelled before its job ran gets the
    end its followers wait for (once); a run whose lease another worker took over raises,
    so the worker waits for that one (RunTakenOver) instead of finishing the job under it."""
    await setup(pg_url)
    async with EventLog.from_url(pg_url) as events, RunRegistry.from_url(pg_url) as registry:
        runtime = await WorkerRuntime(WorkerSettings(db_url=pg_url), events, registry).__aenter__()
        try:
            server = await runtime.handler("server")
            ended = await registry.create_run(f"ended-{uuid.uuid4().hex}", status="pending")
            await registry.request_cancel(ended.run_id)  # nobody holds it: it ends here
            for _ in range(2):
                await server.execute(ended.run_id, resume=True)
            assert [e.event for e in await events.read(ended.run_id)] == ["end"]

            async def taken_over(*args: Any, **kwargs: Any) -> None:
                raise LeaseLostError("another worker took the thread")

            assert isinstance(server, MoAServer)
            monkeypatch.setattr(server.runner, "execute", taken_over)
            lost = await registry.create_run(f"lost-{uuid.uuid4().hex}", status="pending")
            with pytest.raises(LeaseLostError):
                await server.execute(lost.run_id, resume=False)
            assert lost.run_id not in server._live
            assert await events.last(lost.run_id, "end") is None
        finally:
            await runtime.__aexit__(None, None, None)


async def test_a_run_cancelled_in_the_queue_ends_when_a_worker_takes_its_job(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """`moa cancel` of a queued run (a registry request: the run nobody holds ends at once,
    its job stays queued; as when RunQueue.cancel's request beats it to a worker): the worker
    taking the job runs nothing and logs the run's end, so its followers return. Fails
    without the ``end`` of MoARunHandler's early return (``queue.wait`` never returns)."""
    sub = await queue.submit(spec_for(model_server), "cancelled in the queue")
    cancelled = await RunExecutor(queue.registry).cancel(sub.run_id)
    assert (cancelled.status, cancelled.error) == ("cancelled", "cancelled before it started")
    workers.start()
    await workers.ready(1)
    record = await finished(queue, sub.run_id, workers)
    assert (record.status, record.attempts) == ("cancelled", 0)
    assert [e.event for e in await queue.events.read(sub.run_id)] == ["end"]
    assert calls(model_server, "cancelled in the queue") == {}


@contextlib.asynccontextmanager
async def held_elsewhere(queue: RunQueue, thread_id: str) -> AsyncIterator[None]:
    """The thread's lease held by another live process (kept fresh) until the block ends."""
    token = "lease-of-another-process"
    await queue.registry.acquire_lease(thread_id, token, owner=Owner.new())

    async def hold() -> None:  # the holder is alive: its lease stays fresh
        while await queue.registry.renew_lease(thread_id, token):
            await asyncio.sleep(HEARTBEAT)

    holder = asyncio.create_task(hold())
    try:
        yield
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        await queue.registry.release_lease(thread_id, token)


async def test_a_run_cancelled_while_its_job_waits_to_retry_is_not_run(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """Another process holds the thread: the worker retries the job (RunBusy). A cancel made
    meanwhile ends the run; the retried job (attempt 2, which may resume an ended run) must
    not take it back once the thread is free. Fails with the retry resuming every ended
    run (the run then answers: status success, six calls)."""
    workers.start()
    await workers.ready(1)
    thread_id = "held-elsewhere"
    async with held_elsewhere(queue, thread_id):
        sub = await queue.submit(spec_for(model_server), "busy thread", thread_id=thread_id)

        async def retrying() -> bool:
            jobs = await queue.app.job_manager.list_jobs_async(queueing_lock=sub.run_id)
            return any(j.status == "todo" and j.attempts >= 1 for j in jobs)

        await until(retrying, "the job to be retried (RunBusy)", workers)
        cancelled = await RunExecutor(queue.registry).cancel(sub.run_id)
        assert cancelled.status == "cancelled"
    record = await finished(queue, sub.run_id, workers)
    assert (record.status, record.error) == ("cancelled", "cancelled before it started")
    assert calls(model_server, "busy thread") == {}

    async def job_done() -> bool:
        jobs = await queue.app.job_manager.list_jobs_async(queueing_lock=sub.run_id)
        return not any(j.status in ("todo", "doing") for j in jobs)

    await until(job_done, "the retried job to end", workers)
    again = await queue.get(sub.run_id)
    assert again is not None and (again.status, again.attempts) == ("cancelled", 0)


async def test_waits_for_a_busy_thread_do_not_count_as_attempts(
    model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """--max-attempts 2: the job waits for a thread another process holds (RunBusy retries
    raise its procrastinate attempts), then runs, and its worker is SIGKILLed. The run was
    started once, so the reaper re-queues it and the other worker finishes it. Fails with
    the reaper counting the job's attempts (the run then ends in an error: "queued 3 times
    and its worker died; giving up")."""
    model_server.add_rule(model="a1", prompt="busy, then killed", delay=600, times=1)
    first, second = workers.start("--max-attempts", "2"), workers.start("--max-attempts", "2")
    await workers.ready(2)
    thread_id = "held-then-free"
    async with held_elsewhere(queue, thread_id):
        sub = await queue.submit(spec_for(model_server), "busy, then killed", thread_id=thread_id)

        async def retried_twice() -> bool:
            jobs = await queue.app.job_manager.list_jobs_async(queueing_lock=sub.run_id)
            return any(j.attempts >= 2 for j in jobs)

        await until(retried_twice, "the job to wait for the thread twice (RunBusy)", workers)
    await until(lambda: model_server.in_flight("a1") >= 1, "a1 to be called", workers)
    run = await queue.get(sub.run_id)
    assert run is not None and run.attempts == 1 and run.owner_pid is not None
    victim = next(p for p in (first, second) if p.pid == run.owner_pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    record = await finished(queue, sub.run_id, workers)
    assert (record.status, record.error) == ("success", None), workers.logs()
    assert record.attempts == 2
    assert calls(model_server, "busy, then killed")["a1"] == 2
    starts = [e.data for e in await queue.events.read(sub.run_id) if e.event == "metadata"]
    assert [s["attempt"] for s in starts] == [1, 2]  # its starts, not the busy waits


async def test_frozen_worker_is_fenced_out_when_it_wakes(
    pg_url: str, model_server: ModelServer, workers: Workers, queue: RunQueue
) -> None:
    """SIGSTOP the worker holding a run (no heartbeat at all, as a paused VM): the other
    worker takes the run over. When the first one wakes up it stops, writes nothing, and
    leaves the job (and the thread's lock) to the worker that has it now."""
    gate = threading.Event()
    model_server.add_rule(model="b3", prompt="frozen", delay=600, times=1)
    model_server.add_rule(
        model="b3", prompt="frozen", reply=lambda r: "b3 late" if gate.wait(WAIT) else "timed out"
    )
    spec = spec_for(model_server)
    first = workers.start()  # TIMINGS: dead after 8 s of silence
    second = workers.start()
    await workers.ready(2)
    sub = await queue.submit(spec, "the frozen task")
    await until(lambda: model_server.in_flight("b3") >= 1, "b3 to be called", workers)
    run = await queue.get(sub.run_id)
    assert run is not None and run.owner_pid is not None
    frozen = first if first.pid == run.owner_pid else second
    other = second if frozen is first else first
    frozen.send_signal(signal.SIGSTOP)
    try:
        await until(lambda: model_server.in_flight("b3") >= 2, "b3 asked again", workers)
    finally:
        frozen.send_signal(signal.SIGCONT)
    await until(lambda: "taken over" in workers.log_of(frozen), "the fence", workers)
    jobs = await queue.app.job_manager.list_jobs_async(queueing_lock=sub.run_id)
    assert [j.status for j in jobs] == ["doing"]  # still the other worker's
    gate.set()
    record = await finished(queue, sub.run_id, workers)
    assert record.status == "success" and record.answer, workers.logs()
    starts = [e.data for e in await queue.events.read(sub.run_id) if e.event == "metadata"]
    assert [s["worker"].rsplit(":", 1)[1] for s in starts] == [str(frozen.pid), str(other.pid)]
    assert frozen.poll() is None and other.poll() is None
