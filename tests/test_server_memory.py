"""Runs of ``moa serve`` get the long-term memory of their tenant: the agents of a run
read and write (through tools calling ``get_store()``) the items its tenant sees through
``/store``, across threads, in process and in a worker, never another tenant's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from langgraph_moa.testing import ChatRequest, ModelServer, Reply
from tests.test_server_support import KEY_A, KEY_B, serve
from tests.test_workers_support import Workers, workers

__all__ = ["workers"]  # fixture


def memory_spec(srv: ModelServer) -> dict[str, Any]:
    """One agent (model ``mem``) with the ``remember``/``recall`` tools, a synthesizer."""
    models = {n: {"model": n, "base_url": srv.base_url, "max_retries": 0} for n in ("mem", "syn")}
    return {
        "name": "moa",
        "models": models,
        "tools": {
            "remember": {"function": "tests.tool_fixtures:remember"},
            "recall": {"function": "tests.tool_fixtures:recall"},
        },
        "agents": [{"name": "a1", "model": "mem", "tools": ["remember", "recall"]}],
        "layers": [{"agents": ["a1"], "synthesizer": {"model": "syn"}}],
    }


def agent(req: ChatRequest) -> Reply:
    """``remember: X`` saves X, anything else recalls; then says what the tool said."""
    last = req.messages[-1]
    if last.get("role") == "tool":
        return Reply(content=f"memory: {last.get('content')}")
    told = re.search(r"remember: (\w[\w ]*)", req.last_user)
    if told:
        return Reply(tool_calls=[{"name": "remember", "arguments": {"fact": told.group(1)}}])
    return Reply(tool_calls=[{"name": "recall", "arguments": {}}])


def synthesizer(req: ChatRequest) -> str:
    """The agent's ``memory: ...`` line, word for word."""
    found = re.search(r"memory: [^\n]*", req.prompt)
    return found.group(0) if found else "no memory line"


def scripted(srv: ModelServer) -> None:
    srv.add_rule(model="mem", reply=agent)
    srv.add_rule(model="syn", reply=synthesizer)


RUNS: list[str] = []
"""The ids of the runs :func:`ask` made (the worker test checks who executed them)."""


async def ask(client: LangGraphClient, task: str) -> str:
    """The answer of a run of ``task`` on a new thread."""
    thread = await client.threads.create()
    state = await client.runs.wait(thread["thread_id"], "moa", input={"task": task})
    assert isinstance(state, dict) and "answer" in state, state
    RUNS.extend(r["run_id"] for r in await client.runs.list(thread["thread_id"]))
    return str(state["answer"])


async def check_tenants(url: str) -> None:
    a = get_client(url=url, api_key=KEY_A)
    b = get_client(url=url, api_key=KEY_B)
    await a.store.put_item(["memory"], "colour", {"text": "likes blue"})
    # A's run reads the item A put through /store
    assert await ask(a, "what do you recall?") == "memory: colour=likes blue"
    # A's run writes a memory on one thread, A's run on another thread reads it
    assert await ask(a, "remember: drinks tea") == "memory: saved drinks tea"
    assert await ask(a, "what now?") == "memory: colour=likes blue; fact=drinks tea"
    # the run's item is where /store shows it to A
    item = await a.store.get_item(["memory"], "fact")
    assert item is not None and item["value"] == {"text": "drinks tea"}
    assert (await a.store.list_namespaces())["namespaces"] == [["memory"]]

    # B sees none of it, in its runs or through /store, and its own memory stays its own
    assert await ask(b, "what do you recall?") == "memory: nothing remembered"
    assert (await b.store.search_items(["memory"]))["items"] == []
    assert await b.store.get_item(["memory"], "fact") is None
    assert await ask(b, "remember: secret plan") == "memory: saved secret plan"
    assert (await b.store.get_item(["memory"], "fact"))["value"] == {"text": "secret plan"}
    assert await ask(a, "and now?") == "memory: colour=likes blue; fact=drinks tea"
    assert (await a.store.get_item(["memory"], "fact"))["value"] == {"text": "drinks tea"}
    await a.store.delete_item(["memory"], "colour")
    assert await ask(a, "left?") == "memory: fact=drinks tea"
    assert await ask(b, "yours?") == "memory: fact=secret plan"


@pytest.mark.parametrize("db", ["sqlite_url", "pg_url"])
async def test_server_runs_get_their_tenants_memory(
    db: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db_url = str(request.getfixturevalue(db))
    with ModelServer() as srv:
        scripted(srv)
        for served in serve(tmp_path, [memory_spec(srv)], db_url, keys=[KEY_A, KEY_B]):
            await check_tenants(served.url)


@pytest.mark.postgres
@pytest.mark.slow
async def test_worker_runs_get_their_tenants_memory(
    pg_url: str, workers: Workers, tmp_path: Path
) -> None:
    with ModelServer() as srv:
        scripted(srv)
        served = serve(
            tmp_path, [memory_spec(srv)], pg_url, keys=[KEY_A, KEY_B], extra=["--workers"]
        )
        for url in (s.url for s in served):
            workers.start()
            await workers.ready(1)
            RUNS.clear()
            await check_tenants(url)
            assert len(RUNS) == 8
            for run_id in RUNS:  # the worker, not the server, executed each run
                assert f"run_id='{run_id}'" in workers.logs(), workers.logs()
