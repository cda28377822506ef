"""The call ledger (`moa_calls`): every model call of a run is a row, whoever runs it (`moa
run`, `moa serve`, `moa worker`), on SQLite, PostgreSQL and MariaDB; a resume answers a call
from the ledger instead of sending it again; `ledger: hashes` keeps no text."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa

from langgraph_moa.persistence.calls import CallLedger, CallRow
from langgraph_moa.runtime.workers import RunQueue, conninfo_of
from langgraph_moa.testing import ModelServer
from langgraph_moa.testing.rules import ChatRequest
from tests.durable_helpers import moa, start_moa, wait_for, write_spec
from tests.helpers import layered_spec, served_models
from tests.test_server_support import serve
from tests.test_workers_support import Workers, finished, queue, workers

__all__ = ["queue", "workers"]  # fixtures

PLAN = {"plan": [{"agent": "a1", "subtask": "part one"}, {"agent": "coder", "subtask": "sum"}]}


def ledger_spec(srv: ModelServer, **extra: Any) -> dict[str, Any]:
    """A router layer of a plain agent (model p1) and an agent with a tool (model coder),
    then a synthesizer: every kind of call."""
    return {
        "name": "ledgered",
        "models": served_models(srv, "router", "p1", "coder", "synth", timeout=120),
        "tools": {"add": {"function": "tests.tool_fixtures:add"}},
        "agents": [
            {"name": "a1", "model": "p1"},
            {"name": "coder", "model": "coder", "tools": ["add"]},
        ],
        "layers": [
            {
                "agents": ["a1", "coder"],
                "routing": {"mode": "router", "model": "router", "structured_output": True},
                "synthesizer": {"model": "synth"},
            }
        ],
        **extra,
    }


def script(srv: ModelServer) -> None:
    srv.add_rule(model="router", json=PLAN)
    srv.add_rule(
        model="coder", times=1, tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3}}]
    )
    srv.add_rule(model="coder", reply=answer_with_tool_result)


def answer_with_tool_result(req: ChatRequest) -> str:
    tool = [m for m in req.messages if m.get("role") == "tool"]
    return "the sum is " + tool[-1]["content"]


async def rows_of(db_url: str, **where: str) -> list[CallRow]:
    async with CallLedger.from_url(db_url) as ledger:
        return await ledger.list(**where)


def content_of(row: CallRow) -> Any:
    assert row.response is not None
    return row.response["message"]["data"]["content"]


def check_rows(rows: list[CallRow], srv: ModelServer, run_id: str, thread_id: str) -> None:
    """One row per request the server answered, each matching that request and its reply."""
    answered = [r for r in srv.requests if r.status == 200]
    assert len(rows) == len(answered) == 5  # router, a1, coder x2 (tool loop), synth
    assert [r.kind for r in rows if r.node == "L1_coder"] == ["tool_step", "tool_step"]
    kinds = {(r.node, r.kind, r.model) for r in rows}
    assert kinds == {
        ("L1_router", "router", "router"),
        ("L1_a1", "agent", "p1"),
        ("L1_coder", "tool_step", "coder"),
        ("L1_synthesizer", "synthesizer", "synth"),
    }
    unmatched = list(answered)
    for row in rows:
        assert (row.run_id, row.thread_id, row.status, row.error) == (run_id, thread_id, "ok", None)
        assert row.task_id and row.attempt == 1 and row.retries == 0 and row.latency_ms > 0
        assert len(row.request_hash) == 64 and row.seq == 0
        sent = next(
            r
            for r in unmatched
            if r.model == row.model
            and [m.get("content") or "" for m in r.messages]
            == [m["content"] for m in row.messages or []]
        )
        unmatched.remove(sent)
        assert sent.usage is not None and row.usage is not None
        assert row.usage["input_tokens"] == sent.usage["prompt_tokens"]
        assert row.usage["output_tokens"] == sent.usage["completion_tokens"]
        assert row.params["max_tokens"] == sent.body["max_tokens"]
        if row.kind == "tool_step":
            assert [t["function"]["name"] for t in row.params["tools"]] == ["add"]
    assert unmatched == []
    synth = next(r for r in rows if r.kind == "synthesizer")
    assert content_of(synth).startswith("synth answer ")
    steps = [r for r in rows if r.kind == "tool_step"]
    first = steps[0].response
    assert first is not None and first["message"]["data"]["tool_calls"][0]["args"] == {
        "a": 2,
        "b": 3,
    }
    assert content_of(steps[1]) == "the sum is 5"
    router = next(r for r in rows if r.kind == "router")
    assert router.response is not None and router.response["parsed"] == PLAN
    assert "schema" in router.params


def test_cli_run_records_every_call(
    db_url: str, model_server: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(tmp_path / "calls.txt"))
    srv = model_server
    script(srv)
    spec_file = write_spec(tmp_path / "spec.json", ledger_spec(srv))
    result = json.loads(
        moa("run", "What is 2+3?", "-s", str(spec_file), "--db", db_url, "--json").stdout
    )
    assert result["status"] == "success"
    rows = asyncio.run(rows_of(db_url, run_id=result["run_id"]))
    check_rows(rows, srv, result["run_id"], result["thread_id"])

    listed = json.loads(moa("calls", result["thread_id"], "--db", db_url, "--json").stdout)
    assert [c["id"] for c in listed] == [r.id for r in rows]
    assert listed[0]["messages"] == rows[0].messages
    table = moa("calls", result["run_id"], "--db", db_url).stdout
    assert all(r.request_hash[:12] in table for r in rows)
    assert "L1_synthesizer" in table and "tool_step" in table
    missing = moa("calls", "no-such-thread", "--db", db_url, check=False)
    assert missing.returncode == 1 and "no run or thread 'no-such-thread'" in missing.stderr


def test_retries_and_errors_are_recorded(sqlite_url: str, model_server: ModelServer) -> None:
    """A 500 then a success is one row with one retry; a call that fails is a row too."""
    from langgraph_moa.runtime.api import arun

    srv = model_server
    spec = {
        "name": "flaky",
        "models": {
            "p1": {"model": "p1", "base_url": srv.base_url, "max_retries": 1},
            "p2": {"model": "p2", "base_url": srv.base_url, "max_retries": 0},
            "synth": {"model": "synth", "base_url": srv.base_url, "max_retries": 0},
        },
        "agents": [{"name": "a1", "model": "p1"}, {"name": "a2", "model": "p2"}],
        "layers": [{"agents": ["a1", "a2"], "synthesizer": {"model": "synth"}}],
    }
    srv.add_rule(model="p1", fail=500, times=1)
    srv.add_rule(model="p2", fail=400)
    result = asyncio.run(arun(spec, "task", db_url=sqlite_url))
    assert result.status == "success"
    rows = {r.node: r for r in asyncio.run(rows_of(sqlite_url, run_id=result.run_id))}
    assert srv.calls("p1") == 2
    assert (rows["L1_a1"].status, rows["L1_a1"].retries) == ("ok", 1)
    assert rows["L1_a2"].status == "error" and rows["L1_a2"].response is None
    assert "Error code: 400" in (rows["L1_a2"].error or "")
    assert rows["L1_synthesizer"].status == "ok"


def test_hashes_only_keeps_no_text(
    sqlite_url: str, model_server: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(tmp_path / "calls.txt"))
    srv = model_server
    script(srv)
    srv.add_rule(model="p1", reply="secret-reply-walrus")
    spec_file = write_spec(tmp_path / "spec.json", ledger_spec(srv, ledger="hashes"))
    task = "secret-task-zebra-quartz"
    result = json.loads(moa("run", task, "-s", str(spec_file), "--db", sqlite_url, "--json").stdout)
    assert result["status"] == "success"
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        dump = [dict(r) for r in conn.execute(sa.text("SELECT * FROM moa_calls")).mappings()]
    engine.dispose()
    assert len(dump) == 5
    text = json.dumps(dump, default=str)
    for secret in (task, "secret-reply-walrus", "the sum is 5", "synth answer", "part one"):
        assert secret not in text
    a1 = next(r for r in dump if r["node"] == "L1_a1")
    messages = json.loads(a1["messages"])
    assert [set(m) for m in messages] == [{"role", "hash"}] * len(messages)
    assert set(json.loads(a1["response"])) == {"hash", "tool_calls"}
    assert json.loads(a1["usage"])["output_tokens"] > 0


def test_server_run_records_every_call(
    sqlite_url: str, model_server: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(tmp_path / "calls.txt"))
    srv = model_server
    script(srv)
    for served in serve(tmp_path, [ledger_spec(srv)], sqlite_url):
        with httpx.Client(base_url=served.url, timeout=120) as client:
            thread = client.post("/threads", json={}).json()["thread_id"]
            response = client.post(
                f"/threads/{thread}/runs/wait",
                json={"assistant_id": "ledgered", "input": {"task": "What is 2+3?"}},
            )
            assert response.status_code == 200, response.text
            runs = client.get(f"/threads/{thread}/runs").json()
    (run,) = runs
    assert run["status"] == "success"
    check_rows(asyncio.run(rows_of(sqlite_url, thread_id=thread)), srv, run["run_id"], thread)


@pytest.mark.postgres
@pytest.mark.slow
async def test_worker_run_records_every_call(
    pg_url: str,
    model_server: ModelServer,
    workers: Workers,
    queue: RunQueue,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(tmp_path / "calls.txt"))
    srv = model_server
    script(srv)
    workers.start()
    await workers.ready(1)
    submitted = await queue.submit(ledger_spec(srv), "What is 2+3?")
    record = await finished(queue, submitted.run_id, workers)
    assert record.status == "success", workers.logs()
    rows = await rows_of(pg_url, run_id=submitted.run_id)
    check_rows(rows, srv, submitted.run_id, submitted.thread_id)


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_after_a_model_call_does_not_send_it_again(
    pg_url: str, model_server: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coder's first call (it asks for the tool) is answered and recorded, but the
    checkpoint of its reply cannot be written (the test holds a lock on the checkpoint
    tables): SIGKILL `moa run` (and end its database session, whose write was waiting).
    `moa resume` takes that reply from the ledger: the model server gets only the coder's
    second call, and the tool runs once."""
    counter = tmp_path / "calls.txt"
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(counter))
    srv = model_server
    spec = ledger_spec(srv)
    spec["layers"][0]["routing"] = {"mode": "broadcast"}
    spec["agents"], spec["layers"][0]["agents"] = spec["agents"][1:], ["coder"]
    spec_file = write_spec(tmp_path / "spec.json", spec)
    locker = psycopg.connect(conninfo_of(pg_url))
    locked = threading.Event()

    def lock_then_ask_for_the_tool(req: ChatRequest) -> dict[str, Any]:
        locker.execute(
            "LOCK TABLE moa_checkpoints, moa_checkpoint_blobs, moa_checkpoint_writes, "
            "moa_checkpoint_heads IN SHARE MODE"
        )
        locked.set()
        return {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}

    srv.add_rule(model="coder", times=1, reply=lock_then_ask_for_the_tool)
    proc = start_moa(
        "run", "What is 2+3?", "-s", str(spec_file), "--db", pg_url, "--thread", "t1", "--json"
    )
    watcher = psycopg.connect(conninfo_of(pg_url), autocommit=True)
    waiting = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> %s"
    )

    def blocked() -> list[int]:
        return [row[0] for row in watcher.execute(waiting, (locker.info.backend_pid,))]

    try:
        wait_for(
            "the coder's first call to be recorded and its checkpoint write to wait",
            lambda: (
                locked.is_set()
                and len(asyncio.run(rows_of(pg_url, thread_id="t1"))) == 1
                and bool(blocked())
            ),
            proc,
        )
        assert not counter.exists()  # the tool did not run: its request was never saved
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        for pid in blocked():  # the dead process's waiting write dies with it
            watcher.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
    finally:
        locker.rollback()
        locker.close()
        watcher.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]

    srv.reset()
    srv.add_rule(model="coder", reply=answer_with_tool_result)
    resumed = json.loads(moa("resume", "t1", "--db", pg_url, "--json").stdout)
    assert resumed["status"] == "success"
    assert counter.read_text() == "add 2 3\n"
    coder = [r for r in srv.requests if r.model == "coder"]
    assert len(coder) == 1  # the first call came from the ledger
    assert coder[0].messages[-1]["content"] == "5"
    rows = asyncio.run(rows_of(pg_url, thread_id="t1"))
    assert [(r.kind, r.attempt) for r in rows] == [
        ("tool_step", 1),
        ("tool_step", 2),
        ("synthesizer", 2),
    ]
    assert rows[0].task_id != rows[1].task_id


def test_replay_with_the_model_server_stopped_gives_the_same_answer(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Two turns of a thread on a 2-layer spec; with the model server stopped, each run
    replays from the ledger to its recorded answer (the second one from the state the
    first left)."""
    with ModelServer() as srv:
        spec_file = write_spec(tmp_path / "spec.json", layered_spec(srv))
        args = ("-s", str(spec_file), "--db", sqlite_url, "--thread", "t1", "--json")
        first = json.loads(moa("run", "first question", *args).stdout)
        second = json.loads(moa("run", "and a follow-up", *args).stdout)
        sent = srv.calls()
    assert sent == 16 and first["answer"] != second["answer"]

    replayed = json.loads(moa("replay", "t1", "--db", sqlite_url, "--json").stdout)
    assert (replayed["run_id"], replayed["same"]) == (second["run_id"], True)
    assert replayed["answer"] == second["answer"]
    assert (replayed["replayed_calls"], replayed["live_calls"], replayed["missing"]) == (8, [], [])
    again = moa("replay", "t1", "--run", first["run_id"], "--db", sqlite_url)
    assert again.stdout.strip() == first["answer"]
    assert "the answer is the recorded one" in again.stderr

    offline = moa("replay", "t1", "--live", "synthesizer", "--db", sqlite_url, check=False)
    assert offline.returncode != 0 or "differs" in offline.stderr  # live needs the server


def test_replay_live_synthesizer_calls_only_the_synthesizer(
    sqlite_url: str, model_server: ModelServer, tmp_path: Path
) -> None:
    srv = model_server
    spec = layered_spec(srv)
    spec_file = write_spec(tmp_path / "spec.json", spec)
    run = json.loads(
        moa("run", "a question", "-s", str(spec_file), "--db", sqlite_url, "--json").stdout
    )
    srv.reset_counts()

    live = json.loads(
        moa(
            "replay", run["thread_id"], "--live", "synthesizer", "--db", sqlite_url, "--json"
        ).stdout
    )
    assert [r.model for r in srv.requests] == ["synth", "synth"]
    assert live["live_calls"] == ["L1_synthesizer", "L2_synthesizer"]
    assert live["replayed_calls"] == 6 and live["same"] is True  # the scripted synth repeats

    srv.reset_counts()
    spec["layers"][1]["synthesizer"]["prompt"] = "Pick the best one.\n\n{proposals}"
    new_spec = write_spec(tmp_path / "new.json", spec)
    tried = moa(
        "replay",
        run["thread_id"],
        "--live",
        "L2_synthesizer",
        "--spec",
        str(new_spec),
        "--db",
        sqlite_url,
        "--json",
    )
    result = json.loads(tried.stdout)
    (sent,) = srv.requests
    assert sent.model == "synth" and sent.system.startswith("Pick the best one.")
    assert result["same"] is False and result["answer"] == f"synth answer {sent.digest}"
    assert result["recorded_answer"] == run["answer"] and result["missing"] == []


async def test_an_unreadable_ledger_resends_the_call_and_recovers(pg_url: str) -> None:
    """On a resume, a ledger that cannot be read (the failover that caused the hand-over)
    makes the call go out again instead of failing it; once readable, it answers."""
    from langgraph_moa.persistence.calls import RunCalls

    async with CallLedger.from_url(pg_url) as ledger:
        row = CallRow(
            run_id="r", thread_id="t", node="L1_a", kind="agent", task_id="task", seq=0,
            attempt=1, model="m", params={}, request_hash="h", messages=None,
            response={"message": {"content": "recorded"}}, usage=None, latency_ms=1.0, retries=0,
        )  # fmt: skip
        await ledger.record(row)
        async with ledger.engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE moa_calls RENAME TO moa_calls_away"))
        resumed = RunCalls(ledger, "r", "t", attempt=2)
        assert await resumed.lookup("L1_a", "task", "h") == (0, None)  # sent again
        async with ledger.engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE moa_calls_away RENAME TO moa_calls"))
        again = RunCalls(ledger, "r", "t", attempt=2)
        seq, found = await again.lookup("L1_a", "task", "h")
        assert seq == 0 and found == {"message": {"content": "recorded"}}
        # the failed execution asks again too (its failed read is not kept)
        assert (await resumed.lookup("L1_a", "task", "h"))[0] == 1


async def test_a_ledger_of_version_1_gets_the_request_index(db_url: str) -> None:
    """Step 2 of the `calls` component indexes request hashes (what `moa eval --reuse`
    looks calls up by) on a table made before it; `reusable` finds a row by hash and server."""
    from langgraph_moa.persistence import migrations
    from langgraph_moa.persistence.calls import calls

    def indexes(conn: sa.Connection) -> set[str]:
        return {str(i["name"]) for i in sa.inspect(conn).get_indexes("moa_calls")}

    def back_to_1(conn: sa.Connection) -> None:
        next(i for i in calls.indexes if i.name == "moa_calls_request_idx").drop(conn)
        conn.execute(
            migrations.table.delete().where(
                migrations.table.c.component == "calls", migrations.table.c.version >= 2
            )
        )

    async with CallLedger.from_url(db_url) as ledger:
        async with ledger.engine.begin() as conn:
            assert "moa_calls_request_idx" in await conn.run_sync(indexes)
            await conn.run_sync(back_to_1)
            assert "moa_calls_request_idx" not in await conn.run_sync(indexes)
        for endpoint, answer in ((None, "provider"), ("http://h:1/v1", "server")):
            await ledger.record(
                CallRow(
                    run_id="r",
                    thread_id="t",
                    node="L1_a",
                    kind="agent",
                    task_id="k",
                    seq=0,
                    attempt=1,
                    model="m",
                    params={"endpoint": endpoint} if endpoint else {},
                    request_hash="h" * 64,
                    messages=[],
                    response={"message": {"type": "ai", "data": {"content": answer}}},
                    usage=None,
                    latency_ms=1.0,
                    retries=0,
                )
            )
    async with CallLedger.from_url(db_url) as ledger:
        assert await ledger.setup() == 3
        async with ledger.engine.connect() as conn:
            assert "moa_calls_request_idx" in await conn.run_sync(indexes)
        for endpoint, answer in ((None, "provider"), ("http://h:1/v1", "server")):
            found = await ledger.reusable("h" * 64, endpoint)
            assert found is not None and content_of(found) == answer
        assert await ledger.reusable("h" * 64, "http://elsewhere/v1") is None
        assert await ledger.reusable("x" * 64) is None
        # read a row at a time: the server's row, past the first page, is still found
        found = await ledger.reusable("h" * 64, "http://h:1/v1", scan=1)
        assert found is not None and content_of(found) == "server"
        assert await ledger.reusable("h" * 64, "http://elsewhere/v1", scan=1) is None
