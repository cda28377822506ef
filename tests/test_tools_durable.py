"""Tool calls run exactly once across a crash: a `moa run` killed with SIGKILL after a tool
ran, while the model writes its next message, is finished by `moa resume` without running
the tool again; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from langgraph_moa.runtime.workers import RunQueue
from langgraph_moa.testing import ModelServer
from tests.durable_helpers import moa, start_moa, wait_for, write_spec
from tests.helpers import served_models
from tests.test_workers_support import Workers, finished, queue, until, workers

pytestmark = pytest.mark.slow
__all__ = ["queue", "workers"]  # fixtures


def tool_spec(srv: ModelServer, **tool: object) -> dict:
    return {
        "name": "tooly",
        "models": served_models(srv, "coder", "synth", timeout=120),
        "tools": {"add": {"function": "tests.tool_fixtures:add", **tool}},
        "agents": [{"name": "coder", "model": "coder", "tools": ["add"]}],
        "layers": [{"agents": ["coder"], "synthesizer": {"model": "synth"}}],
    }


def answer_with_tool_result(req: object) -> str:
    tool = [m for m in req.messages if m.get("role") == "tool"]  # type: ignore[attr-defined]
    return "the sum is " + tool[-1]["content"]


def tool_result_saved(db_url: str, thread_id: str) -> bool:
    """Whether a checkpoint of the thread (any namespace) holds the tool's result."""
    from langgraph_moa.runtime.store import open_checkpointer

    async def read() -> bool:
        async with open_checkpointer(db_url) as saver:
            async for item in saver.alist({"configurable": {"thread_id": thread_id}}):
                writes = [v for _, c, v in item.pending_writes or [] if c == "messages"]
                values = item.checkpoint["channel_values"].get("messages") or []
                for message in [*values, *(m for w in writes for m in w)]:
                    if getattr(message, "type", "") == "tool":
                        return True
        return False

    return asyncio.run(read())


def kill_after_tool(
    srv: ModelServer, spec_file: Path, db_url: str, counter: Path, thread: str
) -> None:
    """Start `moa run`, wait until the tool ran and its result is saved while the model's
    next call is held, then SIGKILL it."""
    srv.add_rule(
        model="coder", times=1, tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3}}]
    )
    srv.add_rule(model="coder", delay=120, times=1)  # held: the kill comes first
    proc = start_moa(
        "run", "What is 2+3?", "-s", str(spec_file), "--db", db_url, "--thread", thread, "--json"
    )
    try:
        wait_for(
            "the tool to run and the model's next call to be held",
            lambda: srv.in_flight("coder") == 1 and srv.calls("coder") == 2,
            proc,
        )
        assert counter.read_text() == "add 2 3\n"
        wait_for("the tool's result to be saved", lambda: tool_result_saved(db_url, thread), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("db", ["sqlite_url", "pg_url"])
def test_sigkill_after_tool_then_resume_runs_it_once(
    db: str,
    request: pytest.FixtureRequest,
    model_server: ModelServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db_url = str(request.getfixturevalue(db))
    srv = model_server
    counter = tmp_path / "calls.txt"
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(counter))
    spec_file = write_spec(tmp_path / "spec.json", tool_spec(srv))
    kill_after_tool(srv, spec_file, db_url, counter, "t1")

    srv.reset()
    srv.add_rule(model="coder", reply=answer_with_tool_result)
    resumed = json.loads(moa("resume", "t1", "--db", db_url, "--json").stdout)

    assert counter.read_text() == "add 2 3\n"  # the tool ran once, before the crash
    assert resumed["status"] == "success"
    coder = [r for r in srv.requests if r.model == "coder"]
    assert len(coder) == 1  # the resume asked the model once, with the saved tool result
    assert coder[0].messages[-1] == {
        "role": "tool",
        "content": "5",
        "tool_call_id": coder[0].messages[-2]["tool_calls"][0]["id"],
    }
    synth = next(r for r in srv.requests if r.model == "synth")
    assert "(tools used: add)\nthe sum is 5" in synth.system
    assert resumed["usage"]["by_agent"]["coder"]["tool_calls"] == 1


@pytest.mark.parametrize("decision", ["approve", "decline"])
def test_non_idempotent_call_in_flight_asks_a_person(
    decision: str,
    sqlite_url: str,
    model_server: ModelServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = model_server
    counter, release = tmp_path / "calls.txt", tmp_path / "release"
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(counter))
    monkeypatch.setenv("MOA_TOOL_RELEASE", str(release))
    spec = tool_spec(srv)
    spec["tools"] = {"charge": {"function": "tests.tool_fixtures:charge", "idempotent": False}}
    spec["agents"][0]["tools"] = ["charge"]
    spec_file = write_spec(tmp_path / "spec.json", spec)
    srv.add_rule(
        model="coder", times=1, tool_calls=[{"name": "charge", "arguments": {"amount": 7}}]
    )
    srv.add_rule(model="coder", reply=answer_with_tool_result)
    proc = start_moa(
        "run", "Pay", "-s", str(spec_file), "--db", sqlite_url, "--thread", "t1", "--json"
    )
    try:  # the tool is in flight (it waits for `release`): kill
        wait_for("the tool to start", lambda: counter.exists() and counter.read_text() != "", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    release.touch()

    paused = json.loads(moa("resume", "t1", "--db", sqlite_url, "--json", check=False).stdout)
    assert counter.read_text() == "charge 7\n"  # not run again
    assert paused["status"] == "interrupted"
    (asked,) = paused["interrupts"]
    assert (asked["kind"], asked["tool"], asked["args"]) == (
        "tool_call_in_flight",
        "charge",
        {"amount": 7},
    )

    if decision == "decline":
        from langgraph.types import Command

        from langgraph_moa.runtime.api import aresume

        done = asyncio.run(aresume("t1", db_url=sqlite_url, resume=Command(resume=False)))
        assert done.status == "success"
        assert counter.read_text() == "charge 7\n"  # still once
        said = "[1] coder\nthe sum is not run: a person declined to run it again after a crash"
    else:
        out = moa("resume", "t1", "--approve", "--db", sqlite_url, "--json").stdout
        assert json.loads(out)["status"] == "success"
        assert counter.read_text() == "charge 7\ncharge 7\n"  # a person said: run it again
        said = "[1] coder\n(tools used: charge)\nthe sum is charged 7"
    synth = next(r for r in srv.requests if r.model == "synth")
    assert synth.system.endswith(said)


@pytest.mark.postgres
async def test_worker_hand_over_after_a_tool_ran_runs_it_once(
    pg_url: str,
    model_server: ModelServer,
    workers: Workers,
    queue: RunQueue,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL the worker holding a run after its tool ran, while the model writes its next
    message: the other worker finishes the run without running the tool again."""
    srv = model_server
    counter = tmp_path / "calls.txt"
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(counter))
    srv.add_rule(
        model="coder", times=1, tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3}}]
    )
    srv.add_rule(model="coder", delay=600, times=1)  # the holder's next call: held
    srv.add_rule(model="coder", reply=answer_with_tool_result)
    first, second = workers.start(), workers.start()
    await workers.ready(2)
    submitted = await queue.submit(tool_spec(srv), "What is 2+3?")

    def held() -> bool:
        return srv.calls("coder") == 2 and srv.in_flight("coder") == 1

    await until(held, "the tool to run and the next model call to be held", workers)
    assert counter.read_text() == "add 2 3\n"
    await until(
        lambda: asyncio.to_thread(tool_result_saved, pg_url, submitted.thread_id),
        "the tool's result to be saved",
        workers,
    )
    run = await queue.get(submitted.run_id)
    assert run is not None and run.owner_pid is not None
    holder = next(p for p in (first, second) if p.pid == run.owner_pid)
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    record = await finished(queue, submitted.run_id, workers)
    assert record.status == "success", workers.logs()
    assert counter.read_text() == "add 2 3\n"  # once, by the dead worker
    assert srv.calls("coder") == 3  # the survivor asked the model once, with the saved result
    synth = next(r for r in srv.requests if r.model == "synth")
    assert "(tools used: add)\nthe sum is 5" in synth.system
    assert record.attempts == 2
