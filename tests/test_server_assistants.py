"""Assistants with versions through the official ``langgraph_sdk`` against ``moa serve`` on
PostgreSQL: create (``if_exists``), update (a new version each time), versions, set_latest,
search/count, delete; an assistant's config applied to its runs; another tenant sees 404."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from langgraph_moa.testing import ModelServer
from tests.test_server_support import KEY_A, KEY_B, Served, moa_spec, serve, synthesis

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def srv() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture
def served(tmp_path: Path, srv: ModelServer, pg_url: str) -> Iterator[Served]:
    yield from serve(tmp_path, [moa_spec(srv)], pg_url, keys=[KEY_A, KEY_B])


async def test_assistant_versions_round_trip(served: Served) -> None:
    client = get_client(url=served.url, api_key=KEY_A)
    created = await client.assistants.create(
        "moa", name="night shift", metadata={"team": "ops"}, config={"tags": ["night"]}
    )
    aid = created["assistant_id"]
    assert created["version"] == 1 and created["graph_id"] == "moa"
    assert (created["name"], created["metadata"]) == ("night shift", {"team": "ops"})

    # the same id again: 409, or the existing assistant with if_exists="do_nothing"
    with pytest.raises(ConflictError):
        await client.assistants.create("moa", assistant_id=aid)
    same = await client.assistants.create("moa", assistant_id=aid, if_exists="do_nothing")
    assert (same["assistant_id"], same["version"], same["name"]) == (aid, 1, "night shift")

    second = await client.assistants.update(aid, name="day shift", metadata={"shift": "day"})
    assert second["version"] == 2 and second["name"] == "day shift"
    assert second["metadata"] == {"team": "ops", "shift": "day"}  # merged
    assert second["config"] == {"tags": ["night"]}  # kept
    third = await client.assistants.update(aid, config={"tags": ["late"]})
    assert third["version"] == 3 and third["name"] == "day shift"

    versions = await client.assistants.get_versions(aid)
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert [v["name"] for v in versions] == ["day shift", "day shift", "night shift"]
    assert [v["config"]["tags"] for v in versions] == [["late"], ["night"], ["night"]]
    only = await client.assistants.get_versions(aid, metadata={"shift": "day"})
    assert [v["version"] for v in only] == [3, 2]
    assert [v["version"] for v in await client.assistants.get_versions(aid, limit=1, offset=1)] == [
        2
    ]

    back = await client.assistants.set_latest(aid, 1)
    assert (back["version"], back["name"], back["metadata"]) == (1, "night shift", {"team": "ops"})
    got = await client.assistants.get(aid)
    assert (got["version"], got["name"]) == (1, "night shift")
    with pytest.raises(NotFoundError):
        await client.assistants.set_latest(aid, 9)
    # a new update after going back numbers on from the highest version
    fourth = await client.assistants.update(aid, description="rota")
    assert fourth["version"] == 4 and fourth["name"] == "night shift"

    found = await client.assistants.search(metadata={"team": "ops"})
    assert [a["assistant_id"] for a in found] == [aid]
    everything = await client.assistants.search(limit=100)
    assert {a["graph_id"] for a in everything} == {"moa"}
    assert len(everything) == 2  # the spec's system assistant and ours
    assert await client.assistants.count(graph_id="moa") == 2
    assert await client.assistants.count(metadata={"team": "ops"}) == 1

    # the spec's own assistant is read-only
    system = next(a for a in everything if a["assistant_id"] != aid)
    with pytest.raises(ConflictError):
        await client.assistants.update(system["assistant_id"], name="x")
    assert [v["version"] for v in await client.assistants.get_versions(system["assistant_id"])] == [
        1
    ]

    await client.assistants.delete(aid)
    with pytest.raises(NotFoundError):
        await client.assistants.get(aid)
    with pytest.raises(NotFoundError):
        await client.assistants.get_versions(aid)
    with pytest.raises(NotFoundError):
        await client.assistants.delete(aid)
    assert await client.assistants.count() == 1


async def test_an_assistants_config_is_applied_to_its_runs(
    served: Served, srv: ModelServer
) -> None:
    client = get_client(url=served.url, api_key=KEY_A)
    # one superstep only: a MoA round needs several, so the run must stop on the limit
    tight = await client.assistants.create("moa", config={"recursion_limit": 1})
    thread = await client.threads.create()
    failed = await client.runs.wait(
        thread["thread_id"], tight["assistant_id"], input={"task": "t1"}, raise_error=False
    )
    assert failed["__error__"]["error"] == "GraphRecursionError", failed
    runs = await client.runs.list(thread["thread_id"])
    assert runs[0]["assistant_id"] == tight["assistant_id"]
    assert runs[0]["kwargs"]["config"]["recursion_limit"] == 1

    # the run's own config wins over the assistant's; then the same assistant answers
    loose = await client.assistants.update(tight["assistant_id"], config={"recursion_limit": 50})
    assert loose["version"] == 2
    other = await client.threads.create()
    done = await client.runs.wait(other["thread_id"], tight["assistant_id"], input={"task": "t2"})
    assert done["answer"] == synthesis(srv, "t2")
    await client.assistants.set_latest(tight["assistant_id"], 1)  # the tight one again
    third = await client.threads.create()
    overridden = await client.runs.wait(
        third["thread_id"],
        tight["assistant_id"],
        input={"task": "t3"},
        config={"recursion_limit": 50},
    )
    assert overridden["answer"] == synthesis(srv, "t3")

    # deleting it with delete_threads deletes the threads that ran it, and only those
    unrelated = await client.threads.create()
    await client.assistants.delete(tight["assistant_id"], delete_threads=True)
    for gone in (thread, other, third):
        with pytest.raises(NotFoundError):
            await client.threads.get(gone["thread_id"])
    assert (await client.threads.get(unrelated["thread_id"]))["thread_id"] == unrelated["thread_id"]


async def test_another_tenants_assistant_is_missing(served: Served) -> None:
    a = get_client(url=served.url, api_key=KEY_A)
    b = get_client(url=served.url, api_key=KEY_B)
    mine = await a.assistants.create("moa", name="private", metadata={"who": "a"})
    aid = mine["assistant_id"]
    for call in (
        b.assistants.get(aid),
        b.assistants.update(aid, name="stolen"),
        b.assistants.delete(aid),
        b.assistants.get_versions(aid),
        b.assistants.set_latest(aid, 1),
        b.assistants.get_graph(aid),
        b.assistants.get_schemas(aid),
    ):
        with pytest.raises(NotFoundError):
            await call
    thread = await b.threads.create()
    with pytest.raises(UnprocessableEntityError):  # as an unknown assistant
        await b.runs.create(thread["thread_id"], aid, input={"task": "x"})
    assert await b.assistants.search(metadata={"who": "a"}) == []
    assert await b.assistants.count() == 1  # the spec's only
    # B may use the same id for an assistant of its own: ids are per tenant
    theirs = await b.assistants.create("moa", assistant_id=aid, name="b's")
    assert theirs["name"] == "b's"
    assert (await a.assistants.get(aid))["name"] == "private"
    # unknown graphs and malformed ids
    with pytest.raises(NotFoundError):
        await a.assistants.create("no-such-graph")
    with pytest.raises(UnprocessableEntityError):
        await a.assistants.create("moa", assistant_id="not-a-uuid")
    with pytest.raises(NotFoundError):
        await a.assistants.get(str(uuid.uuid4()))
