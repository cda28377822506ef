"""The rest of the LangGraph Server API on ``moa serve``, through the official
``langgraph_sdk`` client and LangGraph's ``RemoteGraph``: stateless and batch runs, thread
copies, the thread-level stream with ``Last-Event-ID`` replay, ``stream_mode="events"``,
history ``before``/``select``, and a paused remote subgraph resumed from its parent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any, TypedDict

import httpx
import pytest
import sqlalchemy as sa
from langgraph.graph import END, START, StateGraph
from langgraph.pregel.remote import RemoteGraph
from langgraph.types import Command
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

from langgraph_moa.persistence import AsyncSQLAlchemySaver
from langgraph_moa.persistence.events import thread_event_key
from langgraph_moa.server import serde
from langgraph_moa.server.schemas import RunCreate, StateUpdate, ThreadCreate
from langgraph_moa.server.service import MoAServer, ServerOptions
from langgraph_moa.spec import GraphSpec
from langgraph_moa.testing import ModelServer
from tests.test_server_support import (
    KEY_A,
    KEY_B,
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
    """Each test's own scripted model server, on the module's port."""
    with ModelServer(port=srv_port) as server:
        try:
            yield server
        finally:
            release_holds()


@pytest.fixture(scope="module")
def served_module(tmp_path_factory: pytest.TempPathFactory, srv_port: int) -> Iterator[Served]:
    """Assistants ``moa`` and ``moa-approve`` (pauses before its synthesizer), two tenants."""
    tmp = tmp_path_factory.mktemp("served-api")
    at = ModelServer(port=srv_port)  # not started: only its URL goes into the specs
    specs = [moa_spec(at), moa_spec(at, name="moa-approve", interrupt_before_synthesis=True)]
    yield from serve(tmp, specs, f"sqlite:///{tmp / 'moa.sqlite'}", keys=[KEY_A, KEY_B])


@pytest.fixture
def served(served_module: Served, srv: ModelServer) -> Served:
    return served_module


def client(served: Served, key: str = KEY_A) -> Any:
    return get_client(url=served.url, api_key=key)


class Parent(TypedDict, total=False):
    task: str
    answer: str
    before: str


async def test_remote_graph_paused_in_a_parent_resumes(
    served: Served, srv: ModelServer, sqlite_url: str
) -> None:
    """A HITL ``RemoteGraph`` as a node of a local parent graph: it pauses the parent; the
    parent's resume (keyed by the remote interrupt's id) reaches the remote run, which
    continues from its checkpoint with the edit and finishes."""
    remote = RemoteGraph("moa-approve", url=served.url, api_key=KEY_A)

    def before(state: Parent) -> Parent:
        return {"before": "ran"}

    builder = StateGraph(Parent)
    builder.add_node("before", before)
    builder.add_node("remote", remote)
    builder.add_edge(START, "before")
    builder.add_edge("before", "remote")
    builder.add_edge("remote", END)
    async with AsyncSQLAlchemySaver.from_url(sqlite_url) as saver:
        await remote_in_parent(builder.compile(checkpointer=saver), served, srv)


async def remote_in_parent(parent: Any, served: Served, srv: ModelServer) -> None:
    thread_id = str(uuid.uuid4())
    config: Any = {"configurable": {"thread_id": thread_id}}

    paused = await parent.ainvoke({"task": "remote approve"}, config)
    interrupts = paused["__interrupt__"]
    assert len(interrupts) == 1 and interrupts[0].value["kind"] == "approve_synthesis"
    assert srv.calls("synth") == 0
    remote_state = await client(served).threads.get_state(thread_id)
    assert remote_state["next"] == ["L1_synthesizer"]
    assert remote_state["interrupts"][0]["id"] == interrupts[0].id

    edit = {"proposals": {"a1": "EDITED through the parent"}}
    done = await parent.ainvoke(Command(resume={interrupts[0].id: edit}), config)
    assert done["answer"] == synthesis(srv, "remote approve") and done["before"] == "ran"
    assert "EDITED through the parent" in [r.prompt for r in srv.requests if r.model == "synth"][-1]
    assert srv.calls("p1") == 1 and srv.calls("p2") == 1, "the remote run continued, not restarted"
    remote_state = await client(served).threads.get_state(thread_id)
    assert remote_state["next"] == [] and remote_state["values"]["answer"] == done["answer"]
    assert (await parent.aget_state(config)).next == ()


async def test_reserved_configurable_keys_still_refused(served: Served) -> None:
    thread = await client(served).threads.create()
    tid = thread["thread_id"]
    headers = {"x-api-key": KEY_A}
    async with httpx.AsyncClient(base_url=served.url, headers=headers) as http:
        for configurable in (
            {"thread_id": "x"},
            {"checkpoint_ns": "a"},
            {"__moa_lease__": "stolen"},
            {"__anything": 1},
            {"__pregel_resuming": "yes"},
            {"__pregel_resume_map": [1]},
        ):
            r = await http.post(
                f"/threads/{tid}/runs",
                json={"assistant_id": "moa", "input": {}, "config": {"configurable": configurable}},
            )
            assert r.status_code == 422, (configurable, r.text)
            assert next(iter(configurable)) in r.json()["detail"]
        r = await http.post(
            f"/threads/{tid}/runs/wait",
            json={
                "assistant_id": "moa",
                "input": {"task": "dropped keys"},
                "config": {"configurable": {"__pregel_durability": "exit", "user": "u"}},
            },
        )
        assert r.status_code == 200 and r.json()["answer"]


def rows_of(db_url: str, thread_id: str, run_ids: list[str]) -> dict[str, int]:
    """Rows a thread (and its runs) holds in each table."""
    engine = sa.create_engine(db_url)
    counts = {}
    try:
        with engine.connect() as conn:
            for table in (
                "moa_threads",
                "moa_runs",
                "moa_checkpoints",
                "moa_checkpoint_blobs",
                "moa_checkpoint_writes",
                "moa_checkpoint_heads",
            ):
                counts[table] = conn.execute(
                    sa.text(f"SELECT count(*) FROM {table} WHERE thread_id = :t"), {"t": thread_id}
                ).scalar_one()
            counts["moa_run_events"] = conn.execute(
                sa.text("SELECT count(*) FROM moa_run_events WHERE run_id IN :r").bindparams(
                    sa.bindparam("r", expanding=True)
                ),
                {"r": run_ids},
            ).scalar_one()
    finally:
        engine.dispose()
    return counts


def logged(db_url: str, run_id: str) -> list[tuple[int, str]]:
    """(id, event) of a run's logged events, its end as the thread stream shows it."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, event FROM moa_run_events WHERE run_id = :r ORDER BY id"),
                {"r": run_id},
            ).all()
    finally:
        engine.dispose()
    return [(int(i), "metadata" if e == "end" else str(e)) for i, e in rows]


async def test_stateless_background_and_batch(served: Served, srv: ModelServer) -> None:
    a = client(served)
    before = await a.threads.count()
    held = Held(srv)
    try:
        run = await a.runs.create(None, "moa", input={"task": "background"})
        assert run["status"] == "pending" and run["thread_id"] and run["kwargs"]["temporary"]
        await held.arrived()
        assert (await a.runs.get(run["thread_id"], run["run_id"]))["status"] == "running"
        with pytest.raises(NotFoundError):  # another tenant sees nothing of it
            await client(served, KEY_B).runs.get(run["thread_id"], run["run_id"])
    finally:
        held.release()
    tid, rid = run["thread_id"], run["run_id"]

    async def gone() -> bool:
        return not any(rows_of(served.db_url, tid, [rid]).values())

    await until(gone, "the thread to go")
    assert srv.calls("synth") == 1
    assert await a.threads.count() == before

    kept = await a.runs.create_batch(
        [
            {"assistant_id": "moa", "input": {"task": "batch one"}, "on_completion": "keep"},
            {"assistant_id": "moa", "input": {"task": "batch two"}, "on_completion": "keep"},
        ]
    )
    assert len({r["thread_id"] for r in kept}) == 2
    answers = [(await a.runs.join(r["thread_id"], r["run_id"]))["answer"] for r in kept]
    assert answers == [synthesis(srv, "batch one"), synthesis(srv, "batch two")]
    assert await a.threads.count() == before + 2
    assert await client(served, KEY_B).threads.count() == 0
    async with httpx.AsyncClient(base_url=served.url, headers={"x-api-key": KEY_A}) as http:
        bad = [
            {"assistant_id": "moa", "input": {"task": "never"}},
            {"assistant_id": "moa", "input": {}, "interrupt_before": ["nope"]},
        ]
        r = await http.post("/runs/batch", json=bad)
        assert r.status_code == 422 and "nope" in r.text
        r = await http.post("/runs/batch", json=[])
        assert r.status_code == 422
    assert await a.threads.count() == before + 2, "a refused batch starts no run"
    assert not any(r.last_user == "never" for r in srv.requests)


async def test_copy_thread(served: Served, srv: ModelServer) -> None:
    a = client(served)
    thread = await a.threads.create(metadata={"owner": "ann"})
    tid = thread["thread_id"]
    await a.runs.wait(tid, "moa", input={"task": "first turn"})
    original = await a.threads.get_state(tid)
    copy = await a.threads.copy(tid)
    assert copy["thread_id"] != tid and copy["metadata"]["owner"] == "ann"
    assert copy["status"] == "idle" and copy["values"] == original["values"]
    copied = await a.threads.get_state(copy["thread_id"])
    assert copied["values"] == original["values"] and copied["next"] == []
    assert copied["checkpoint"]["checkpoint_id"] == original["checkpoint"]["checkpoint_id"]
    assert len(await a.threads.get_history(copy["thread_id"], limit=100)) == len(
        await a.threads.get_history(tid, limit=100)
    )
    assert await a.runs.list(copy["thread_id"]) == []  # runs are not copied
    # the copy goes on by itself: a second turn there leaves the original as it was
    more = await a.runs.wait(copy["thread_id"], "moa", input={"task": "second turn"})
    assert more["answer"] == synthesis(srv, "second turn")
    assert [m["type"] for m in more["messages"]] == ["human", "ai", "human", "ai"]
    assert (await a.threads.get_state(tid))["values"] == original["values"]
    b = client(served, KEY_B)
    with pytest.raises(NotFoundError):
        await b.threads.copy(tid)
    with pytest.raises(NotFoundError):
        await a.threads.copy(str(uuid.uuid4()))
    # a paused thread's copy is paused too and can be approved on its own
    paused = await a.threads.create()
    await a.runs.wait(paused["thread_id"], "moa-approve", input={"task": "pause me"})
    paused_copy = await a.threads.copy(paused["thread_id"])
    assert paused_copy["status"] == "interrupted"
    done = await a.runs.wait(paused_copy["thread_id"], "moa-approve", command={"resume": True})
    assert done["answer"] == synthesis(srv, "pause me")
    assert (await a.threads.get(paused["thread_id"]))["status"] == "interrupted"


async def collect_until_done(stream: Any, run_id: str) -> list[Any]:
    """Parts of a thread stream up to the end of ``run_id`` (bounded: a missing end fails)."""

    async def read() -> list[Any]:
        parts = []
        async for part in stream:
            parts.append(part)
            if part.event == "metadata" and part.data == {"status": "run_done", "run_id": run_id}:
                return parts
        raise AssertionError(f"the thread stream ended before {run_id} did")

    return await asyncio.wait_for(read(), 120)


async def test_thread_stream_and_last_event_id_replay(served: Served, srv: ModelServer) -> None:
    a = client(served)
    tid = (await a.threads.create())["thread_id"]
    r1 = await a.runs.create(tid, "moa", input={"task": "one"})
    await a.runs.join(tid, r1["run_id"])

    stream = await a.threads.join_stream(tid, last_event_id="0")  # from the thread's first event
    first = await collect_until_done(stream, r1["run_id"])
    assert [(int(p.id), p.event) for p in first] == logged(served.db_url, r1["run_id"])
    assert first[0].data == {"run_id": r1["run_id"], "attempt": 1}
    values = [p.data for p in first if p.event == "values"]
    assert values[-1]["answer"] == synthesis(srv, "one")
    r2 = await a.runs.create(tid, "moa", input={"task": "two"})  # followed live
    second = await collect_until_done(stream, r2["run_id"])
    assert [(int(p.id), p.event) for p in second] == logged(served.db_url, r2["run_id"])
    await stream.aclose()
    last_seen = second[-1].id

    r3 = await a.runs.create(tid, "moa", input={"task": "three"})  # nobody listens
    assert (await a.runs.join(tid, r3["run_id"]))["answer"] == synthesis(srv, "three")
    r4 = await a.runs.create(tid, "moa", input={"task": "four"})
    await a.runs.join(tid, r4["run_id"])
    missed = await collect_until_done(
        await a.threads.join_stream(tid, last_event_id=last_seen), r4["run_id"]
    )
    expected = logged(served.db_url, r3["run_id"]) + logged(served.db_url, r4["run_id"])
    assert [(int(p.id), p.event) for p in missed] == expected, "exactly the missed events"
    assert [p.data["answer"] for p in missed if p.event == "values"][-1] == synthesis(srv, "four")

    lifecycle = await collect_until_done(
        await a.threads.join_stream(tid, last_event_id="0", stream_mode="lifecycle"), r4["run_id"]
    )
    assert {p.event for p in lifecycle} == {"metadata"}
    assert [p.data.get("run_id") for p in lifecycle] == [
        r["run_id"] for r in (r1, r1, r2, r2, r3, r3, r4, r4)
    ]
    async with httpx.AsyncClient(base_url=served.url, headers={"x-api-key": KEY_B}) as http:
        r = await http.get(f"/threads/{tid}/stream")
        assert r.status_code == 404
        r = await http.get(
            f"/threads/{tid}/stream", headers={"x-api-key": KEY_A, "Last-Event-ID": "x"}
        )
        assert r.status_code == 422


async def test_a_thread_stream_ends_when_its_thread_is_deleted(
    db_url: str, srv: ModelServer
) -> None:
    """A thread's stream follows that thread, not its id: when the thread is deleted and
    created again under the same id, the stream ends and does not carry the new thread's
    runs (as a stream of a deleted thread ends; the new thread has its own streams). The
    follower is opened before the delete and read after the new thread's run ended, so
    what it sends does not depend on timing."""
    spec = GraphSpec.model_validate(moa_spec(srv))
    options = ServerOptions(crons=False)
    async with MoAServer([spec], db_url=db_url, options=options) as server:
        tid = str(uuid.uuid4())

        async def run(task: str) -> str:
            body = RunCreate.model_validate({"assistant_id": "moa", "input": {"task": task}})
            record, _ = await server.create_run("a", tid, body, subscribe=False)
            await server.wait_run(record.run_id)
            return record.run_id

        await server.create_thread("a", ThreadCreate(thread_id=tid))
        old_run = await run("old")
        following = await server.follow_thread("a", tid, 0)
        old_events = [e.seq for e in await server.streams.logged(old_run)]
        seen = [(await anext(following)).seq for _ in old_events]
        assert seen == old_events

        await server.delete_thread("a", tid)
        await server.create_thread("a", ThreadCreate(thread_id=tid))
        new_run = await run("new")
        assert await server.streams.logged(new_run)  # the new thread's run has events...

        async def rest() -> list[Any]:
            return [e async for e in following]

        assert await asyncio.wait_for(rest(), 60) == []  # ...and the old stream ends
        again = await server.follow_thread("a", tid, 0)  # the new thread's own stream
        assert serde.loads((await anext(again)).data) == {"run_id": new_run, "attempt": 1}
        await again.aclose()


async def test_a_thread_created_again_does_not_replay_the_old_threads_state_updates(
    db_url: str, srv: ModelServer
) -> None:
    """Tenant a's thread gets a ``state_update``, is deleted (its events with it), and a
    ``state_update`` of it is logged late (what an update racing the delete wrote); tenant
    b creates a thread under the same id: its ``state_update`` stream from ``Last-Event-ID``
    0 carries b's update only (a's rows were logged first: they would come first)."""
    spec = GraphSpec.model_validate(moa_spec(srv))
    options = ServerOptions(crons=False)
    async with MoAServer([spec], db_url=db_url, options=options) as server:
        tid = str(uuid.uuid4())
        log = server.streams.event_log

        def update(task: str) -> StateUpdate:
            return StateUpdate.model_validate({"values": {"task": task}, "as_node": "L1_a1"})

        old = await server.create_thread("a", ThreadCreate(thread_id=tid))
        await server.update_state("a", tid, update("secret of a"))
        old_key = thread_event_key(tid, old.created_at)
        assert [e.data["state"]["values"]["task"] for e in await log.read(old_key)] == [
            "secret of a"
        ]
        await server.delete_thread("a", tid)
        assert await log.read(old_key) == []  # deleted with the thread
        late = {"state": {"values": {"task": "late secret of a"}}, "thread_id": tid}
        await log.append(old_key, "state_update", late)

        new = await server.create_thread("b", ThreadCreate(thread_id=tid))
        await server.update_state("b", tid, update("of b"))
        assert thread_event_key(tid, new.created_at) != old_key
        rows = await server.registry.thread_events(tid, new.created_at, 0)
        assert [r.data["state"]["values"]["task"] for r in rows] == ["of b"]
        following = await server.follow_thread("b", tid, 0, ("state_update",))
        first = await asyncio.wait_for(anext(following), 60)
        await following.aclose()
        assert first.event == "state_update"
        assert serde.loads(first.data)["state"]["values"]["task"] == "of b"
        assert b"secret" not in first.data


async def test_state_update_is_kept_when_its_event_cannot_be_logged(
    db_url: str, srv: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The events table is gone (renamed away) when a thread's state is updated: the update
    is written and answered all the same, and the lost ``state_update`` event is logged as
    an error naming the thread; once the table is back, the next update is logged again."""
    spec = GraphSpec.model_validate(moa_spec(srv))
    async with MoAServer([spec], db_url=db_url, options=ServerOptions(crons=False)) as server:
        tid = str(uuid.uuid4())
        record = await server.create_thread("a", ThreadCreate(thread_id=tid))
        key = thread_event_key(tid, record.created_at)

        def update(task: str) -> StateUpdate:
            return StateUpdate.model_validate({"values": {"task": task}, "as_node": "L1_a1"})

        engine = sa.create_engine(db_url)

        def rename(old: str, new: str) -> None:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")

        # In a thread: the server's own tasks (the event pruner at start-up) may be inside a
        # transaction that needs this event loop to commit (on SQLite any write transaction
        # holds the database's lock); blocking the loop here deadlocks ("database is locked"
        # on SQLite, a lock wait until the test's timeout on PostgreSQL and MariaDB).
        try:
            await asyncio.to_thread(rename, "moa_run_events", "moa_run_events_away")
            try:
                with caplog.at_level("ERROR", logger="langgraph_moa"):
                    written = await server.update_state("a", tid, update("kept"))
            finally:
                await asyncio.to_thread(rename, "moa_run_events_away", "moa_run_events")
        finally:
            engine.dispose()
        state = await server.get_state("a", tid)
        assert state["values"]["task"] == "kept"
        assert state["checkpoint"]["checkpoint_id"] == written["checkpoint_id"]
        lost = [r for r in caplog.records if "state_update event was not logged" in r.message]
        assert [r.getMessage() for r in lost] == [
            f"thread {tid}: the state_update event was not logged"
        ]
        assert await server.streams.event_log.read(key) == []

        await server.update_state("a", tid, update("logged"))
        assert [
            e.data["state"]["values"]["task"] for e in await server.streams.event_log.read(key)
        ] == ["logged"]


async def test_thread_stream_state_update(served: Served, srv: ModelServer) -> None:
    """``stream_mode="state_update"``: an event for each update of the thread's state, with
    the state it wrote (``{"state", "thread_id"}``, as langgraph-api 0.16.7 sends it);
    ``run_modes`` and ``lifecycle`` streams do not carry it."""
    a = client(served)
    tid = (await a.threads.create())["thread_id"]
    await a.runs.wait(tid, "moa", input={"task": "s"}, interrupt_before=["L1_synthesizer"])
    update = await a.threads.update_state(tid, {"task": "edited"}, as_node="L1_a1")
    r2 = await a.runs.create(tid, "moa", input={"task": "after"})
    await a.runs.join(tid, r2["run_id"])

    updates = await a.threads.join_stream(tid, last_event_id="0", stream_mode="state_update")
    first = await asyncio.wait_for(anext(updates), 60)
    await updates.aclose()
    assert first.event == "state_update"  # what the reference sends: the new ThreadState
    assert set(first.data) == {"state", "thread_id"} and first.data["thread_id"] == tid
    state = await a.threads.get_state(tid, checkpoint_id=update["checkpoint"]["checkpoint_id"])
    assert first.data["state"] == state and state["values"]["task"] == "edited"
    assert state["checkpoint"]["checkpoint_id"] == update["checkpoint"]["checkpoint_id"]
    assert state["metadata"]["source"] == "update"

    everything = await collect_until_done(
        await a.threads.join_stream(tid, last_event_id="0"), r2["run_id"]
    )
    assert "state_update" not in {p.event for p in everything}
    lifecycle = await collect_until_done(
        await a.threads.join_stream(tid, last_event_id="0", stream_mode="lifecycle"),
        r2["run_id"],
    )
    assert {p.event for p in lifecycle} == {"metadata"}
    both = await collect_until_done(
        await a.threads.join_stream(
            tid, last_event_id="0", stream_mode=["lifecycle", "state_update"]
        ),
        r2["run_id"],
    )
    assert [p.event for p in both].count("state_update") == 1
    assert [int(p.id) for p in both] == sorted(int(p.id) for p in both)


async def test_stream_mode_events(served: Served, srv: ModelServer) -> None:
    a = client(served)
    tid = (await a.threads.create())["thread_id"]
    parts = [
        p
        async for p in a.runs.stream(
            tid, "moa", input={"task": "events"}, stream_mode=["events", "values"]
        )
    ]
    assert parts[0].event == "metadata"
    run_id = parts[0].data["run_id"]
    kinds = [p.data["event"] for p in parts if p.event == "events"]
    assert {"on_chain_start", "on_chain_end", "on_chat_model_start", "on_chat_model_end"} <= set(
        kinds
    )
    ends = [p.data for p in parts if p.event == "events" and p.data["event"] == "on_chat_model_end"]
    replies = [e["data"]["output"]["content"] for e in ends]
    assert synthesis(srv, "events") in replies
    assert all(e["metadata"]["thread_id"] == tid for e in ends)
    roots = [p.data for p in parts if p.event == "events" and p.data["run_id"] == run_id]
    assert roots and "on_chain_stream" not in {e["event"] for e in roots}  # those are `values`
    assert [p.data for p in parts if p.event == "values"][-1]["answer"] == synthesis(srv, "events")


async def test_history_before_config_and_select(served: Served) -> None:
    a = client(served)
    tid = (await a.threads.create())["thread_id"]
    await a.runs.wait(tid, "moa", input={"task": "history"})
    history = await a.threads.get_history(tid, limit=100)
    pivot = history[2]["checkpoint"]
    by_id = await a.threads.get_history(tid, limit=3, before=pivot["checkpoint_id"])
    by_checkpoint = await a.threads.get_history(tid, limit=3, before=pivot)
    by_config: Any = {"configurable": {"checkpoint_id": pivot["checkpoint_id"]}}
    by_config_state = await a.threads.get_history(tid, limit=3, before=by_config)
    assert by_id == by_checkpoint == by_config_state == history[3:6]
    nexts = await a.threads.get_history(tid, limit=100, select=["next"])
    assert nexts == [{"next": h["next"]} for h in history]
    answers = await a.threads.get_history(tid, limit=2, select=["values.answer", "checkpoint"])
    assert answers[0] == {
        "values": {"answer": history[0]["values"]["answer"]},
        "checkpoint": history[0]["checkpoint"],
    }
    async with httpx.AsyncClient(base_url=served.url, headers={"x-api-key": KEY_A}) as http:
        r = await http.post(f"/threads/{tid}/history", json={"select": ["nope"]})
        assert r.status_code == 422 and "nope" in r.text
        r = await http.post(
            f"/threads/{tid}/history", json={"before": {"configurable": {"checkpoint_id": "zz"}}}
        )
        assert r.status_code == 404
