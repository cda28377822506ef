"""The JS SDK's thread protocol on ``moa serve`` (``/threads/{id}/commands`` and
``/threads/{id}/stream/events``), over real HTTP: the answer arrives in the events, every
connection replays the same events with the same ids, ``since`` resumes, a stream follows
the runs started after it opened, an interrupt is answered by id, a failure says why.
(Shapes against the reference server: ``tests/test_server_contract.py``.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from langgraph_moa.persistence.registry._tables import runs_table
from langgraph_moa.testing import ModelServer
from tests.test_server_support import Served, moa_spec, serve, synthesis

pytestmark = pytest.mark.slow
ALL = ["lifecycle", "input", "values", "updates", "messages", "checkpoints", "tasks", "custom"]


@pytest.fixture(scope="module")
def srv() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, srv: ModelServer) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("protocol")
    specs = [moa_spec(srv), moa_spec(srv, name="approve", interrupt_before_synthesis=True)]
    yield from serve(tmp, specs, f"sqlite:///{tmp / 'moa.sqlite'}")


async def command(http: httpx.AsyncClient, tid: str, method: str, **params: Any) -> Any:
    r = await http.post(
        f"/threads/{tid}/commands", json={"id": 1, "method": method, "params": params}
    )
    assert r.status_code == 200, r.text
    return r.json()


async def events(
    http: httpx.AsyncClient, tid: str, *, ends: int = 1, **body: Any
) -> AsyncIterator[dict[str, Any]]:
    """The thread's protocol events up to the ``ends``-th terminal lifecycle event."""
    body.setdefault("channels", ALL)
    async with http.stream("POST", f"/threads/{tid}/stream/events", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            yield event
            data = event["params"]["data"]
            if event["method"] == "lifecycle" and data["event"] != "running":
                ends -= 1
                if ends == 0:
                    return


async def collect(http: httpx.AsyncClient, tid: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [e async for e in events(http, tid, **kwargs)]


def answer_of(stream: list[dict[str, Any]]) -> str:
    values = [e["params"]["data"] for e in stream if e["method"] == "values"]
    return str(values[-1]["answer"])


async def test_a_run_streams_its_answer_and_replays_identically(
    served: Served, srv: ModelServer
) -> None:
    tid = str(uuid.uuid4())  # the protocol creates the thread
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        started = await command(http, tid, "run.start", assistant_id="moa", input={"task": "T1"})
        assert started["type"] == "success" and uuid.UUID(started["result"]["run_id"])
        first = await collect(http, tid)
        again = await collect(http, tid)
        resumed = await collect(http, tid, since=5)

    assert first[0]["params"]["data"] == {"event": "running", "graph_name": "moa"}
    assert first[-1]["params"]["data"] == {"event": "completed", "graph_name": "moa"}
    assert answer_of(first) == synthesis(srv, "T1")
    # the synthesizer's streamed message, finished, says the same
    texts = [
        e["params"]["data"]["content"]["text"]
        for e in first
        if e["method"] == "messages" and e["params"]["data"]["event"] == "content-block-finish"
    ]
    assert texts[-1] == synthesis(srv, "T1") and len(texts) == 3  # two agents, one synthesis
    # every connection: the same events, ids and seqs; `since` starts after it
    ids = [(e["seq"], e["event_id"], e["method"]) for e in first]
    assert ids == [(e["seq"], e["event_id"], e["method"]) for e in again]
    assert [e["seq"] for e in first] == list(range(1, len(first) + 1))
    assert [(e["seq"], e["event_id"]) for e in resumed] == [(s, i) for s, i, _ in ids[5:]]
    assert len({e["event_id"] for e in first}) == len(first)


async def test_a_stream_follows_the_runs_started_after_it(served: Served, srv: ModelServer) -> None:
    tid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        await command(http, tid, "run.start", assistant_id="moa", input={"task": "A"})
        stream = events(http, tid, ends=2, channels=["lifecycle", "values"])
        seen = []
        async for event in stream:
            seen.append(event)
            if event["method"] == "lifecycle" and event["params"]["data"]["event"] == "completed":
                # the first run is over; the open stream must carry the next one
                await command(http, tid, "run.start", assistant_id="moa", input={"task": "B"})
    lifecycle = [e["params"]["data"]["event"] for e in seen if e["method"] == "lifecycle"]
    assert lifecycle == ["running", "completed", "running", "completed"]
    assert {e["method"] for e in seen} == {"lifecycle", "values"}
    assert answer_of(seen) == synthesis(srv, "B")


async def test_a_stream_follows_new_runs_after_a_thousand(served: Served, srv: ModelServer) -> None:
    """A thread with more than a thousand runs: a stream still sees the runs started after
    it opened (it reads the runs after the last one it saw, not a first page of all)."""
    tid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        await command(http, tid, "run.start", assistant_id="moa", input={"task": "first"})
        await collect(http, tid)  # the first run is over
        now = datetime.now(UTC).replace(tzinfo=None)
        engine = sa.create_engine(served.db_url)
        try:
            with engine.begin() as conn:  # a thousand earlier runs, e.g. of other clients
                conn.execute(
                    runs_table.insert(),
                    [
                        {
                            "run_id": str(uuid.uuid4()),
                            "thread_id": tid,
                            "status": "success",
                            "created_at": now,
                            "updated_at": now,
                            "attempts": 1,
                            "options": {},
                        }
                        for _ in range(1000)
                    ],
                )
        finally:
            engine.dispose()

        async def follow() -> list[dict[str, Any]]:
            seen = []
            async for event in events(http, tid, ends=2, channels=["lifecycle", "values"]):
                seen.append(event)
                data = event["params"]["data"]
                if event["method"] == "lifecycle" and data["event"] == "completed":
                    await command(http, tid, "run.start", assistant_id="moa", input={"task": "Z"})
            return seen

        seen = await asyncio.wait_for(follow(), 120)  # a bound on the wait only
    lifecycle = [e["params"]["data"]["event"] for e in seen if e["method"] == "lifecycle"]
    assert lifecycle == ["running", "completed", "running", "completed"]
    assert answer_of(seen) == synthesis(srv, "Z")


async def test_a_stream_ends_when_its_thread_is_deleted(served: Served) -> None:
    """Deleted, then created again under the same id: the stream of the old thread ends
    and does not carry the new thread's runs."""
    tid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        await command(http, tid, "run.start", assistant_id="moa", input={"task": "old"})

        async def follow() -> list[dict[str, Any]]:
            seen = []
            async for event in events(http, tid, ends=3, channels=["lifecycle"]):
                seen.append(event)
                if event["params"]["data"]["event"] == "completed":
                    assert (await http.delete(f"/threads/{tid}")).status_code == 204
                    assert (await http.post("/threads", json={"thread_id": tid})).is_success
                    await command(http, tid, "run.start", assistant_id="moa", input={"task": "new"})
            return seen

        seen = await asyncio.wait_for(follow(), 120)  # a bound on the wait only
        assert [e["params"]["data"]["event"] for e in seen] == ["running", "completed"]
        again = await collect(http, tid, channels=["lifecycle"])  # the new thread's stream
        assert [e["params"]["data"]["event"] for e in again] == ["running", "completed"]


async def test_an_interrupt_is_asked_and_answered_by_id(served: Served, srv: ModelServer) -> None:
    tid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        await command(http, tid, "run.start", assistant_id="approve", input={"task": "Q"})
        paused = await collect(http, tid)
        asked = [e for e in paused if e["method"] == "input.requested"]
        assert paused[-1]["params"]["data"]["event"] == "interrupted" and len(asked) == 1
        request = asked[0]["params"]["data"]
        # the stream says "interrupted" as the run pauses, a moment before the run has
        # checkpointed the interrupt: read the state once the run has ended
        (run,) = (await http.get(f"/threads/{tid}/runs")).json()
        await http.get(f"/threads/{tid}/runs/{run['run_id']}/join")
        state = (await http.get(f"/threads/{tid}/state")).json()
        assert request["interrupt_id"] == state["interrupts"][0]["id"]
        assert request["payload"]["kind"] == "approve_synthesis"

        wrong = await command(
            http, tid, "input.respond", interrupt_id="nope", namespace=[], response={}
        )
        assert wrong["type"] == "error" and wrong["error"] == "no_such_interrupt"
        answered = await command(
            http,
            tid,
            "input.respond",
            interrupt_id=request["interrupt_id"],
            namespace=[],
            response={"proposals": {"a1": "a1, edited"}},
        )
        assert answered == {"type": "success", "id": 1, "result": {}, "meta": answered["meta"]}
        both = await collect(http, tid, ends=2)
    assert [e["params"]["data"]["event"] for e in both if e["method"] == "lifecycle"] == [
        "running",
        "interrupted",
        "running",
        "completed",
    ]
    synth = [r for r in srv.requests if r.model == "synth" and r.last_user == "Q"]
    assert len(synth) == 1 and "a1, edited" in synth[0].system
    assert answer_of(both) == synthesis(srv, "Q")


async def test_a_failed_run_says_why(served: Served, srv: ModelServer) -> None:
    srv.add_rule(model="p[12]", fail=500)
    tid = str(uuid.uuid4())
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
            await command(http, tid, "run.start", assistant_id="moa", input={"task": "F"})
            stream = await collect(http, tid, channels=["lifecycle"])
    finally:
        srv.reset()
    end = stream[-1]["params"]["data"]
    assert end["event"] == "failed" and end["graph_name"] == "moa" and end["error"]


async def test_bad_commands_and_filters(served: Served) -> None:
    tid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        r = await http.post(f"/threads/{tid}/commands", json={"method": "run.start"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_argument"
        unknown = await command(http, tid, "state.get", namespace=[])
        assert unknown["error"] == "unknown_command"
        no_assistant = await command(http, tid, "run.start", input={"task": "x"})
        assert no_assistant["error"] == "invalid_argument"
        # nothing was created by those
        assert (await http.get(f"/threads/{tid}")).status_code == 404
        r = await http.post(f"/threads/{tid}/stream/events", json={"channels": ["debug"]})
        assert r.status_code == 400 and "debug" in r.json()["detail"]
        r = await http.post(f"/threads/{tid}/stream/events", json={"channels": []})
        assert r.status_code == 400
