"""``moa serve`` driven by the official ``langgraph_sdk`` client over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from langgraph_moa.testing import ModelServer
from tests.test_server_support import (
    WAIT,
    Held,
    Served,
    free_port,
    moa_spec,
    release_holds,
    serve,
    synthesis,
    until,
)


@pytest.fixture(scope="module")
def srv_port() -> int:
    """The port of the module's model server (the module's ``moa serve`` calls it there)."""
    return free_port()


@pytest.fixture
def srv(srv_port: int) -> Iterator[ModelServer]:
    """Each test's own scripted model server (rules, counts, held calls), on the module's
    port: nothing a test scripted or left in flight reaches the next one."""
    with ModelServer(port=srv_port) as server:
        try:
            yield server
        finally:
            release_holds()


@pytest.fixture(scope="module")
def served_module(tmp_path_factory: pytest.TempPathFactory, srv_port: int) -> Iterator[Served]:
    """One server for the module: assistants ``moa`` and ``moa-approve`` (which pauses
    before its synthesizer)."""
    tmp = tmp_path_factory.mktemp("served")
    at = ModelServer(port=srv_port)  # not started: only its URL goes into the specs
    specs = [moa_spec(at), moa_spec(at, name="moa-approve", interrupt_before_synthesis=True)]
    yield from serve(tmp, specs, f"sqlite:///{tmp / 'moa.sqlite'}")


@pytest.fixture
def served(served_module: Served, srv: ModelServer) -> Served:
    if served_module.proc is None:  # a test stopped it
        served_module.start()
    return served_module


def run_status(served: Served, thread_id: str, run_id: str) -> str:
    r = httpx.get(f"{served.url}/threads/{thread_id}/runs/{run_id}", timeout=WAIT)
    return str(r.json()["status"])


async def test_sdk_flow(served: Served, srv: ModelServer) -> None:
    client = get_client(url=served.url)
    thread = await client.threads.create(metadata={"user": "ann"})
    assert thread["status"] == "idle" and thread["metadata"] == {"user": "ann"}

    values = await client.runs.wait(thread["thread_id"], "moa", input={"task": "B-trees?"})
    assert isinstance(values, dict)
    assert values["answer"] == synthesis(srv, "B-trees?")
    assert [m["type"] for m in values["messages"]] == ["human", "ai"]

    created: list[Any] = []
    parts = [
        part
        async for part in client.runs.stream(
            thread["thread_id"],
            "moa",
            input={"messages": [{"role": "user", "content": "LSM-trees?"}]},
            stream_mode=["values", "updates", "messages-tuple", "debug", "custom"],
            on_run_created=created.append,
        )
    ]
    assert parts[0].event == "metadata"
    run_id = parts[0].data["run_id"]
    assert created[0]["run_id"] == run_id and created[0]["thread_id"] == thread["thread_id"]
    events = {p.event for p in parts}
    assert {"values", "updates", "messages", "debug"} <= events
    assert "error" not in events and "end" not in events
    updates = [p.data for p in parts if p.event == "updates"]
    assert any("L1_a1" in u for u in updates) and any("L1_synthesizer" in u for u in updates)
    assert parts[[p.event for p in parts].index("values")].data["messages"][-1]["type"] == "human"
    # status is final the moment the stream closes
    assert run_status(served, thread["thread_id"], run_id) == "success"

    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == [] and state["values"]["answer"] == synthesis(srv, "LSM-trees?")
    assert state["checkpoint"]["thread_id"] == thread["thread_id"]
    assert state["checkpoint"]["checkpoint_id"]
    history = await client.threads.get_history(thread["thread_id"], limit=50)
    assert len(history) > 4 and history[0]["checkpoint"] == state["checkpoint"]
    older = await client.threads.get_history(
        thread["thread_id"], limit=2, before=history[0]["checkpoint"]
    )
    assert older[0]["checkpoint"] == history[1]["checkpoint"]
    past = history[3]["checkpoint"]
    at_id = await client.threads.get_state(thread["thread_id"], checkpoint_id=past["checkpoint_id"])
    at_checkpoint = await client.threads.get_state(thread["thread_id"], checkpoint=past)
    assert at_id["checkpoint"] == at_checkpoint["checkpoint"] == past
    assert at_id["values"] == history[3]["values"]

    run = await client.runs.create(thread["thread_id"], "moa", input={"task": "Hash indexes?"})
    assert run["status"] in ("pending", "running") and run["assistant_id"]
    joined = await client.runs.join(thread["thread_id"], run["run_id"])
    assert joined["answer"] == synthesis(srv, "Hash indexes?")
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"
    runs = await client.runs.list(thread["thread_id"])
    assert [r["status"] for r in runs] == ["success"] * 3
    found = await client.threads.search(metadata={"user": "ann"})
    assert [t["thread_id"] for t in found] == [thread["thread_id"]]
    assert (await client.threads.get(thread["thread_id"]))["status"] == "idle"


async def test_stream_modes_messages_v1_and_headers(served: Served) -> None:
    client = get_client(url=served.url)
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "moa", input={"task": "x"}, stream_mode="messages"
        )
    ]
    names = [p.event for p in parts]
    assert names[0] == "metadata"
    assert "messages/metadata" in names and "messages/partial" in names
    assert "messages/complete" in names
    complete = [p.data for p in parts if p.event == "messages/complete"]
    assert complete[-1][0]["type"] == "ai"
    # raw wire: headers and frame format
    async with (
        httpx.AsyncClient(base_url=served.url) as http,
        http.stream(
            "POST",
            f"/threads/{thread['thread_id']}/runs/stream",
            json={"assistant_id": "moa", "input": {"task": "y"}, "stream_mode": ["updates"]},
        ) as response,
    ):
        body = (await response.aread()).decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    run_path = response.headers["content-location"]
    assert run_path.startswith(f"/threads/{thread['thread_id']}/runs/")
    assert response.headers["location"] == run_path + "/stream"
    assert response.headers["cache-control"] == "no-store"
    assert body.startswith("event: metadata\r\ndata: {")
    assert "\r\nid:" not in body  # ids only for resumable streams


async def test_wait_headers_and_unknowns(served: Served, srv: ModelServer) -> None:
    client = get_client(url=served.url)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    async with httpx.AsyncClient(base_url=served.url) as http:
        r = await http.post(
            f"/threads/{tid}/runs/wait", json={"assistant_id": "moa", "input": {"task": "z"}}
        )
        assert r.status_code == 200 and json.loads(r.text)["answer"] == synthesis(srv, "z")
        assert r.headers["location"] == r.headers["content-location"] + "/join"
        r = await http.post(
            f"/threads/{tid}/runs", json={"assistant_id": "moa", "input": {"task": "z"}}
        )
        assert r.headers["content-location"] == f"/threads/{tid}/runs/{r.json()['run_id']}"
        assert "location" not in r.headers
        r = await http.post(f"/threads/{tid}/runs", json={"assistant_id": "nope", "input": {}})
        assert r.status_code == 422 and "Invalid assistant: 'nope'" in r.json()["detail"]
        for field, value in [
            ("webhook", "http://example.com/hook"),
            ("context", {"a": 1}),
            ("after_seconds", 5),
            ("multitask_strategy", "rollback"),
            ("no_such_field", 1),
            ("stream_mode", "lifecycle"),
        ]:
            r = await http.post(
                f"/threads/{tid}/runs",
                json={"assistant_id": "moa", "input": {"task": "q"}, field: value},
            )
            assert r.status_code == 422, (field, r.text)
            assert field in r.text or "rollback" in r.text
        r = await http.post(
            f"/threads/{tid}/runs",
            json={
                "assistant_id": "moa",
                "input": {},
                "config": {"configurable": {"thread_id": "x"}},
            },
        )
        assert r.status_code == 422 and "thread_id" in r.json()["detail"]
        r = await http.post(f"/threads/{tid}/runs/{tid}/cancel?action=rollback")
        assert r.status_code in (404, 422)
    with pytest.raises(NotFoundError):
        await client.threads.get("2b1f3c4d-0000-4000-8000-000000000000")
    with pytest.raises(httpx.HTTPStatusError) as missing:  # runs.wait raises httpx's error
        await client.runs.wait("2b1f3c4d-0000-4000-8000-000000000000", "moa", input={"task": "q"})
    assert missing.value.response.status_code == 404
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        await client.runs.wait(tid, "no-such-graph", input={"task": "q"})
    assert unknown.value.response.status_code == 422
    created = await client.runs.wait(
        "2b1f3c4d-0000-4000-8000-00000000abcd", "moa", input={"task": "q"}, if_not_exists="create"
    )
    assert created["answer"] == synthesis(srv, "q")


async def test_assistants(served: Served) -> None:
    client = get_client(url=served.url)
    found = await client.assistants.search()
    assert sorted(a["graph_id"] for a in found) == ["moa", "moa-approve"]
    assistant = next(a for a in found if a["graph_id"] == "moa")
    assert assistant["assistant_id"] == "e7ff9cb7-2ee2-5e06-9e85-5deaafac8928"
    assert await client.assistants.get("moa") == assistant
    assert await client.assistants.get(assistant["assistant_id"]) == assistant
    graph = await client.assistants.get_graph("moa")
    assert {n["id"] for n in graph["nodes"]} >= {"prepare", "L1_a1", "L1_synthesizer"}
    schemas = await client.assistants.get_schemas("moa")
    assert schemas["graph_id"] == "moa" and "config_schema" in schemas
    assert {"task", "messages"} <= set(schemas["input_schema"]["properties"])
    assert "answer" in schemas["output_schema"]["properties"]
    assert "proposals" in schemas["state_schema"]["properties"]
    with pytest.raises(NotFoundError):
        await client.assistants.get("nope")
    async with httpx.AsyncClient(base_url=served.url) as http:
        assert (await http.get("/ok")).json() == {"ok": True}
        info = (await http.get("/info")).json()
        assert info["flags"]["assistants"] is True
        spec = (await http.get("/openapi.json")).json()
        assert "/threads/{thread_id}/runs/stream" in spec["paths"]
        assert (await http.get("/docs")).status_code == 200


async def test_thread_crud(served: Served) -> None:
    client = get_client(url=served.url)
    tid = "11111111-2222-4333-8444-555555555555"
    thread = await client.threads.create(thread_id=tid, metadata={"a": 1})
    assert thread["thread_id"] == tid
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=tid)
    same = await client.threads.create(thread_id=tid, if_exists="do_nothing")
    assert same["metadata"] == {"a": 1}
    patched = await client.threads.update(tid, metadata={"b": 2})
    assert patched["metadata"] == {"a": 1, "b": 2}
    assert [t["thread_id"] for t in await client.threads.search(metadata={"b": 2})] == [tid]
    await client.runs.wait(tid, "moa", input={"task": "q"})
    await client.threads.delete(tid)
    with pytest.raises(NotFoundError):
        await client.threads.get(tid)
    with pytest.raises(NotFoundError):
        await client.threads.get_state(tid)


async def test_stateless_runs(served: Served, srv: ModelServer) -> None:
    client = get_client(url=served.url)
    before = await client.threads.count()
    orphaned = orphans(served.db_url)
    values = await client.runs.wait(None, "moa", input={"task": "stateless"})
    assert values["answer"] == synthesis(srv, "stateless")
    parts = [
        p
        async for p in client.runs.stream(None, "moa", input={"task": "s2"}, stream_mode="updates")
    ]
    assert parts[0].event == "metadata" and any(p.event == "updates" for p in parts)
    assert await client.threads.count() == before  # their threads are deleted afterwards
    assert orphans(served.db_url) == orphaned  # and so are their checkpoints
    kept = await client.runs.wait(
        None, "moa", input={"task": "kept"}, on_completion="keep", raise_error=False
    )
    assert kept["answer"] == synthesis(srv, "kept")
    assert await client.threads.count() == before + 1
    assert orphans(served.db_url) == orphaned


def orphans(db_url: str) -> set[str]:
    """Thread ids with checkpoint rows (any checkpoint table) or model calls (the call
    ledger) but no thread row."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            threads = set(conn.execute(sa.text("SELECT thread_id FROM moa_threads")).scalars())
            held: set[str] = set()
            for table in (
                "checkpoints",
                "checkpoint_blobs",
                "checkpoint_writes",
                "checkpoint_heads",
                "calls",
            ):
                held |= set(conn.execute(sa.text(f"SELECT thread_id FROM moa_{table}")).scalars())
    finally:
        engine.dispose()
    return held - threads


async def test_failed_run_reports_error(served: Served, srv: ModelServer) -> None:
    srv.add_rule(model="p[12]", fail=500)
    client = get_client(url=served.url)
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "moa", input={"task": "q"})]
    errors = [p.data for p in parts if p.event == "error"]
    assert errors and errors[0]["error"] == "QuorumError"
    assert "Traceback" not in json.dumps(errors)
    run_id = parts[0].data["run_id"]
    assert run_status(served, thread["thread_id"], run_id) == "error"
    assert (await client.threads.get(thread["thread_id"]))["status"] == "error"
    result = await client.runs.wait(
        thread["thread_id"], "moa", input={"task": "q"}, raise_error=False
    )
    assert result["__error__"]["error"] == "QuorumError"
    with pytest.raises(Exception, match="QuorumError"):
        await client.runs.wait(thread["thread_id"], "moa", input={"task": "q"})


async def test_cancel_and_multitask(served: Served, srv: ModelServer) -> None:
    holds: list[Held] = []

    async def held_run(task: str, **kwargs: Any) -> Any:
        holds.append(Held(srv))
        run = await client.runs.create(tid, "moa", input={"task": task}, **kwargs)
        await holds[-1].arrived()
        return run

    client = get_client(url=served.url)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    try:
        run = await held_run("slow")
        assert (await client.threads.get(tid))["status"] == "busy"
        with pytest.raises(ConflictError):
            await client.runs.create(tid, "moa", input={"task": "x"}, multitask_strategy="reject")
        queued = await client.runs.create(tid, "moa", input={"task": "queued"})  # enqueue
        assert (await client.runs.get(tid, queued["run_id"]))["status"] == "pending"
        await client.runs.cancel(tid, run["run_id"])
        assert (await client.runs.join(tid, queued["run_id"]))["answer"] == synthesis(srv, "queued")
        assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"
        assert (await client.runs.get(tid, queued["run_id"]))["status"] == "success"

        slow = await held_run("slow again")
        newer = await client.runs.create(
            tid, "moa", input={"task": "x"}, multitask_strategy="interrupt"
        )
        assert (await client.runs.join(tid, newer["run_id"]))["answer"] == synthesis(srv, "x")
        assert (await client.runs.get(tid, slow["run_id"]))["status"] == "interrupted"

        last = await held_run("x")
        await client.runs.cancel(tid, last["run_id"], wait=True)
        assert (await client.runs.get(tid, last["run_id"]))["status"] == "interrupted"
    finally:
        for hold in holds:
            hold.release()
    assert all(h.came.is_set() for h in holds)


async def test_interrupt_approved_with_command(served: Served, srv: ModelServer) -> None:
    client = get_client(url=served.url)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    paused = await client.runs.wait(tid, "moa-approve", input={"task": "approve me"})
    interrupt = paused["__interrupt__"][0]
    assert interrupt["value"]["kind"] == "approve_synthesis" and interrupt["id"]
    assert (await client.threads.get(tid))["status"] == "interrupted"
    state = await client.threads.get_state(tid)
    assert state["next"] == ["L1_synthesizer"]
    assert state["interrupts"][0]["id"] == interrupt["id"]
    parts = [
        p
        async for p in client.runs.stream(
            tid,
            "moa-approve",
            command={"resume": {"proposals": {"a1": "EDITED by a person"}}},
            stream_mode="updates",
        )
    ]
    assert not [p for p in parts if p.event == "error"]
    synth_prompts = [r.prompt for r in srv.requests if r.model == "synth"]
    assert "EDITED by a person" in synth_prompts[-1]
    final = await client.threads.get_state(tid)
    assert final["next"] == [] and final["values"]["answer"] == synthesis(srv, "approve me")
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_interrupt_approved_with_update_state(served: Served, srv: ModelServer) -> None:
    client = get_client(url=served.url)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    await client.runs.wait(
        tid, "moa", input={"task": "review"}, interrupt_before=["L1_synthesizer"]
    )
    state = await client.threads.get_state(tid)
    assert state["next"] == ["L1_synthesizer"]
    assert (await client.threads.get(tid))["status"] == "interrupted"
    proposal = state["values"]["proposals"]["1"]["a1"]
    edited = {**proposal, "content": "REVISED proposal"}
    update = await client.threads.update_state(
        tid, {"proposals": {"1": {"a1": edited}}}, as_node="L1_a1"
    )
    assert update["checkpoint"]["checkpoint_id"] != state["checkpoint"]["checkpoint_id"]
    values = await client.runs.wait(tid, "moa", input=None)
    assert values["answer"] == synthesis(srv)
    synth_prompts = [r.prompt for r in srv.requests if r.model == "synth"]
    assert "REVISED proposal" in synth_prompts[-1]


async def test_reconnect_replays_with_last_event_id(served: Served, srv: ModelServer) -> None:
    held = Held(srv)  # the run stays running until its first events have been read
    client = get_client(url=served.url)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    first: list[Any] = []
    stream = client.runs.stream(
        tid,
        "moa",
        input={"task": "resumable"},
        stream_mode=["updates", "values"],
        stream_resumable=True,
    )
    async for part in stream:
        first.append(part)
        if (part.event == "updates" and "L1_a1" in part.data) or len(first) > 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    run_id = first[0].data["run_id"]
    assert all(p.id is not None for p in first)
    assert run_status(served, tid, run_id) == "running"
    held.release()
    rest = [p async for p in client.runs.join_stream(tid, run_id, last_event_id=first[-1].id)]
    ids = [int(p.id) for p in first + rest]
    assert ids == sorted(set(ids)), "events are replayed once each, in order"
    assert any(p.event == "updates" and "L1_synthesizer" in p.data for p in rest)
    assert run_status(served, tid, run_id) == "success"
    # a non-resumable run: join_stream follows it from now on
    run = await client.runs.create(tid, "moa", input={"task": "bg"}, stream_mode=["updates"])
    live = [p async for p in client.runs.join_stream(tid, run["run_id"], stream_mode="updates")]
    assert all(p.event in ("updates", "metadata") for p in live)
    assert any("L1_synthesizer" in p.data for p in live if p.event == "updates")


async def test_wait_keeps_connection_alive(served: Served, srv: ModelServer) -> None:
    """While the run works (its synthesizer held), /runs/wait sends only newlines (the
    server's 0.5 s heartbeat); once released, the answer follows on the same response."""
    held = Held(srv)
    thread = await get_client(url=served.url).threads.create()
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=WAIT) as http,
        http.stream(
            "POST",
            f"/threads/{thread['thread_id']}/runs/wait",
            json={"assistant_id": "moa", "input": {"task": "slow"}},
        ) as response,
    ):
        chunks = response.aiter_bytes()
        first = await anext(chunks)
        await held.arrived()
        assert first and first.strip() == b"", f"a heartbeat before the answer, got {first!r}"
        held.release()
        body = first + b"".join([c async for c in chunks])
    assert body.startswith(b"\n"), "newlines are sent while the run works (heartbeat 0.5 s)"
    assert json.loads(body)["answer"] == synthesis(srv, "slow")


async def test_request_limits(served: Served) -> None:
    thread = await get_client(url=served.url).threads.create()
    async with httpx.AsyncClient(base_url=served.url) as http:
        big = {"assistant_id": "moa", "input": {"task": "x" * (2 * 1024 * 1024)}}
        r = await http.post(f"/threads/{thread['thread_id']}/runs", json=big)
        assert r.status_code == 413
        r = await http.post("/threads", json={"metadata": {"k": "v" * 70_000}})
        assert r.status_code == 422 and "metadata" in r.text
        r = await http.post("/threads/search", json={"limit": 100_000})
        assert r.status_code == 422
        r = await http.post(
            "/threads", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and "Traceback" not in r.text


@pytest.mark.slow
async def test_crash_resumes_running_run(served: Served, srv: ModelServer) -> None:
    held = Held(srv)  # never released before the crash: the first synthesizer call is lost
    client = get_client(url=served.url)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "moa", input={"task": "survive a crash"})
    await held.arrived()

    async def agents_saved() -> bool:  # the synthesizer may start before this is written
        return bool((await client.threads.get_state(tid))["next"] == ["L1_synthesizer"])

    await until(agents_saved, "the checkpoint of the agents' answers")
    served.kill()  # SIGKILL: the run's owner is gone without a trace
    served.start()
    client = get_client(url=served.url)
    values = await client.runs.join(tid, run["run_id"])
    assert values["answer"] == synthesis(srv, "survive a crash")
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
    assert srv.calls("p1") == 1 and srv.calls("p2") == 1, "finished agents are not re-run"
    assert srv.calls("synth") == 2


async def test_graceful_restart_resumes(served: Served, srv: ModelServer) -> None:
    held = Held(srv)  # held through the restart: the new process asks again
    client = get_client(url=served.url)
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "moa", input={"task": "restart"})
    await held.arrived()
    served.restart()
    values = await get_client(url=served.url).runs.join(thread["thread_id"], run["run_id"])
    assert values["answer"] == synthesis(srv, "restart")


@pytest.mark.parametrize("database", ["postgres", "mysql"])
async def test_on_server_databases(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, srv: ModelServer
) -> None:
    """The same service on PostgreSQL and MariaDB: runs, resumable streams, cancel, state."""
    db_url = str(request.getfixturevalue({"postgres": "pg_url", "mysql": "mysql_url"}[database]))
    for served in serve(tmp_path, [moa_spec(srv)], db_url):
        client = get_client(url=served.url)
        thread = await client.threads.create(metadata={"db": database})
        tid = thread["thread_id"]
        assert (await client.runs.wait(tid, "moa", input={"task": "one"}))["answer"] == synthesis(
            srv, "one"
        )
        held = Held(srv)  # "two" is still running when its stream is left
        stream = client.runs.stream(
            tid, "moa", input={"task": "two"}, stream_mode="updates", stream_resumable=True
        )
        first = [await anext(stream), await anext(stream)]
        await stream.aclose()  # type: ignore[attr-defined]
        run_id = first[0].data["run_id"]
        held.release()
        rest = [p async for p in client.runs.join_stream(tid, run_id, last_event_id=first[-1].id)]
        assert any(p.event == "updates" and "L1_synthesizer" in p.data for p in rest)
        ids = [int(p.id) for p in first + rest]
        assert ids == sorted(set(ids))
        held = Held(srv)
        run = await client.runs.create(tid, "moa", input={"task": "three"})
        await held.arrived()
        await client.runs.cancel(tid, run["run_id"], wait=True)
        assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"
        history = await client.threads.get_history(tid, limit=100)
        assert len(history) > 8
        found = await client.threads.search(metadata={"db": database})
        assert [t["thread_id"] for t in found] == [tid]


async def test_disconnect_cancels_when_asked_and_strict_resume(
    served: Served, srv: ModelServer
) -> None:
    client = get_client(url=served.url)
    tid = (await client.threads.create())["thread_id"]
    held = Held(srv)
    stream = client.runs.stream(
        tid, "moa", input={"task": "bye"}, stream_mode="updates", on_disconnect="cancel"
    )
    first = await anext(stream)
    await held.arrived()
    await stream.aclose()  # type: ignore[attr-defined]
    run_id = first.data["run_id"]
    await client.runs.join(tid, run_id)  # returns when the run has ended
    assert run_status(served, tid, run_id) == "interrupted"
    # continue (the default): the run outlives its stream
    stream = client.runs.stream(tid, "moa", input={"task": "stay"}, stream_mode="updates")
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert (await client.runs.join(tid, first.data["run_id"]))["answer"] == synthesis(srv, "stay")
    # strict_resume: answering an interrupt nobody waits on fails the run
    result = await client.runs.wait(
        tid, "moa", command={"resume": "yes"}, strict_resume=True, raise_error=False
    )
    assert result["__error__"]["error"] == "UnknownInterruptError"
