"""Contract test: the same ``langgraph_sdk`` calls against the reference server
(``langgraph dev``, langgraph-api 0.16.7 with the in-memory runtime, a test-only
dependency) and against ``moa serve`` give the same shapes: status codes, headers, SSE
event names, and the key sets of threads, runs, states and assistants.

Known, deliberate differences are listed in ``REFERENCE_ONLY``/``OURS_ONLY``: LangSmith
and platform fields we have no use for, and free-form metadata the reference fills with
its own host details.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from langgraph_sdk import get_client

from langgraph_moa.testing import ModelServer
from tests.test_server_support import Served, free_port, moa_spec

pytestmark = pytest.mark.slow

LANGGRAPH = str(Path(sys.executable).with_name("langgraph"))
REFERENCE_ONLY = {"langsmith_session_name"}
"""Keys only the reference has (LangSmith)."""
OURS_ONLY = {"compat"}
"""Keys only we have (``/info`` names the wire version we follow)."""
FREE_FORM = {"metadata", "values", "configurable", "kwargs.config", "detail"}
"""Fields compared as "present, of this type" only: their content is the caller's or the
host's (the reference puts its host and version into checkpoint metadata)."""

GRAPH_PY = """
from pathlib import Path
from langgraph_moa.graphs import compile_graph
from langgraph_moa.spec import load_spec
here = Path(__file__).parent
moa = compile_graph(load_spec(here / "moa.yaml"))
approve = compile_graph(load_spec(here / "approve.yaml"))
"""


def shape(value: Any, path: str = "") -> Any:
    """The structure of a JSON value: dict keys (recursively), list item shape, types."""
    leaf = path.rsplit(".", 1)[-1]
    if leaf in FREE_FORM or path in FREE_FORM:
        return type(value).__name__
    if isinstance(value, dict):
        keys = set(value) - REFERENCE_ONLY - OURS_ONLY
        return {k: shape(value[k], f"{path}.{k}".lstrip(".")) for k in sorted(keys)}
    if isinstance(value, list):
        return ["list", shape(value[0], path) if value else None]
    return type(value).__name__


def names(parts: list[Any]) -> list[str]:
    """SSE event names, consecutive repeats merged."""
    out: list[str] = []
    for part in parts:
        if not out or out[-1] != part.event:
            out.append(part.event)
    return out


async def scenario(url: str, srv: ModelServer) -> dict[str, Any]:
    """The SDK calls of the contract, and what each returned."""
    out: dict[str, Any] = {}
    client = get_client(url=url, api_key=None)
    assistants = await client.assistants.search()
    out["assistants"] = sorted(a["graph_id"] for a in assistants)
    moa = next(a for a in assistants if a["graph_id"] == "moa")
    out["assistant"] = shape(moa)
    out["assistant_id"] = moa["assistant_id"]
    out["schemas"] = sorted(await client.assistants.get_schemas(moa["assistant_id"]))
    out["graph"] = sorted(await client.assistants.get_graph(moa["assistant_id"]))

    thread = await client.threads.create(metadata={"k": "v"})
    tid = thread["thread_id"]
    out["thread.new"] = shape(thread)
    out["state.new"] = shape(await client.threads.get_state(tid))

    out["wait"] = shape(await client.runs.wait(tid, "moa", input={"task": "hello"}))
    parts = [
        p
        async for p in client.runs.stream(
            tid, "moa", input={"task": "again"}, stream_mode=["values", "updates"]
        )
    ]
    out["stream.names"] = names(parts)
    out["stream.metadata"] = shape(parts[0].data)
    out["stream.values"] = shape(next(p.data for p in parts if p.event == "values"))
    out["stream.updates"] = shape(next(p.data for p in parts if p.event == "updates"))
    modes = [
        p
        async for p in client.runs.stream(
            tid, "moa", input={"task": "modes"}, stream_mode=["messages-tuple", "debug", "custom"]
        )
    ]
    out["stream.modes"] = sorted({p.event for p in modes})
    v1 = [
        p
        async for p in client.runs.stream(tid, "moa", input={"task": "v1"}, stream_mode="messages")
    ]
    out["stream.messages"] = sorted({p.event for p in v1})

    state = await client.threads.get_state(tid)
    out["state"] = shape(state)
    history = await client.threads.get_history(tid, limit=3)
    out["history"] = [len(history), shape(history[0])]
    run = await client.runs.create(tid, "moa", input={"task": "background"})
    out["run"] = shape(run)
    out["join"] = shape(await client.runs.join(tid, run["run_id"]))
    out["run.done"] = (await client.runs.get(tid, run["run_id"]))["status"]
    out["runs"] = [shape(r) for r in await client.runs.list(tid)][:1]
    out["thread.used"] = shape(await client.threads.get(tid))
    out["thread.status"] = (await client.threads.get(tid))["status"]
    out["search"] = shape((await client.threads.search(metadata={"k": "v"}))[0])
    out["patch"] = shape(await client.threads.update(tid, metadata={"z": 1}))

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        body = {"assistant_id": "moa", "input": {"task": "x"}}
        r = await http.post(f"/threads/{tid}/runs/wait", json=body)
        out["wait.headers"] = _locations(r, tid)
        r = await http.post(f"/threads/{tid}/runs", json=body)
        out["create.headers"] = _locations(r, tid)
        await client.runs.join(tid, r.json()["run_id"])
        async with http.stream("POST", f"/threads/{tid}/runs/stream", json=body) as r:
            raw = (await r.aread()).decode()
            out["stream.headers"] = _locations(r, tid)
            out["stream.content_type"] = r.headers["content-type"].split(";")[0]
        out["stream.first_frame"] = raw.split("\r\n")[0]
        missing = "00000000-0000-4000-8000-000000000000"
        r = await http.post(f"/threads/{missing}/runs/wait", json=body)
        out["missing_thread"] = [r.status_code, sorted(r.json())]
        r = await http.get(f"/threads/{missing}")
        out["missing_thread.get"] = [r.status_code, sorted(r.json())]
        r = await http.post(f"/threads/{tid}/runs", json={**body, "assistant_id": "nope"})
        out["missing_assistant"] = [r.status_code, r.json()["detail"].split("\n")[0]]
        r = await http.post("/threads", json={"thread_id": tid})
        out["duplicate_thread"] = r.status_code
        out["info"] = sorted(set((await http.get("/info")).json()) - OURS_ONLY)
        out["ok"] = (await http.get("/ok")).status_code

    # human approval: update_state after interrupt_before, then continue with input=None
    t2 = (await client.threads.create())["thread_id"]
    paused = await client.runs.wait(
        t2, "moa", input={"task": "i"}, interrupt_before=["L1_synthesizer"]
    )
    out["paused"] = shape(paused)
    out["paused.next"] = (await client.threads.get_state(t2))["next"]
    out["paused.status"] = (await client.threads.get(t2))["status"]
    out["update_state"] = shape(
        await client.threads.update_state(t2, {"task": "i"}, as_node="L1_a1")
    )
    out["continued"] = shape(await client.runs.wait(t2, "moa", input=None))

    # an interrupt() answered with a Command
    t3 = (await client.threads.create())["thread_id"]
    asked = await client.runs.wait(t3, "approve", input={"task": "ok?"})
    out["interrupt"] = shape(asked)
    out["interrupt.state"] = shape(await client.threads.get_state(t3))
    answered = await client.runs.wait(t3, "approve", command={"resume": {"proposals": {}}})
    out["resumed"] = shape(answered)

    out["stateless.wait"] = shape(await client.runs.wait(None, "moa", input={"task": "s"}))
    stateless = [p async for p in client.runs.stream(None, "moa", input={"task": "s"})]
    out["stateless.stream"] = names(stateless)

    # cancel a run whose synthesizer hangs
    srv.add_rule(model="synth", fail="stall", stall=60, times=1)
    t4 = (await client.threads.create())["thread_id"]
    calls = srv.calls("synth")
    slow = await client.runs.create(t4, "moa", input={"task": "slow"})
    while srv.calls("synth") == calls:
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(f"/threads/{t4}/runs/{slow['run_id']}/cancel?wait=0&action=interrupt")
        out["cancel"] = [r.status_code, r.content]
    await client.runs.join(t4, slow["run_id"])
    out["cancelled"] = (await client.runs.get(t4, slow["run_id"]))["status"]
    srv.reset()

    # a failing run: every agent errors
    srv.add_rule(model="p[12]", fail=500)
    t5 = (await client.threads.create())["thread_id"]
    failed = [p async for p in client.runs.stream(t5, "moa", input={"task": "fail"})]
    out["error.names"] = names(failed)
    out["error.event"] = shape(failed[-1].data)
    out["error.wait"] = shape(
        await client.runs.wait(t5, "moa", input={"task": "f"}, raise_error=False)
    )
    srv.reset()
    return out


def _locations(response: httpx.Response, thread_id: str) -> dict[str, str]:
    """Location headers with the ids replaced by placeholders."""
    out = {}
    for name in ("location", "content-location"):
        value = response.headers.get(name)
        if value is not None:
            out[name] = "/".join(
                "{thread}" if p == thread_id else ("{run}" if len(p) == 36 else p)
                for p in value.split("/")
            )
    return out


@pytest.fixture
def reference(tmp_path: Path, model_server: ModelServer) -> Iterator[str]:
    if importlib.util.find_spec("langgraph_api") is None:
        if os.environ.get("MOA_REQUIRE_SERVICES") == "1":
            pytest.fail("langgraph-api is not installed: pip install -e '.[dev]'")
        pytest.skip("the reference server (langgraph-api, a dev dependency) is not installed")
    project = tmp_path / "reference"
    project.mkdir()
    (project / "moa.yaml").write_text(yaml.safe_dump(moa_spec(model_server)))
    approve = moa_spec(model_server, name="approve", interrupt_before_synthesis=True)
    (project / "approve.yaml").write_text(yaml.safe_dump(approve))
    (project / "graph.py").write_text(GRAPH_PY)
    graphs = {"moa": "./graph.py:moa", "approve": "./graph.py:approve"}
    (project / "langgraph.json").write_text(json.dumps({"dependencies": ["."], "graphs": graphs}))
    port = free_port()
    log = (tmp_path / "reference.log").open("wb")
    proc = subprocess.Popen(
        [
            LANGGRAPH,
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LANGSMITH_TRACING": "false", "LANGGRAPH_API_KEY": ""},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"langgraph dev did not start:\n{(tmp_path / 'reference.log').read_text()}"
                )
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def test_same_shapes_as_the_reference_server(
    reference: str, tmp_path: Path, model_server: ModelServer
) -> None:
    expected = await scenario(reference, model_server)
    specs = [
        moa_spec(model_server),
        moa_spec(model_server, name="approve", interrupt_before_synthesis=True),
    ]
    served = Served(tmp_path, specs, f"sqlite:///{tmp_path / 'moa.sqlite'}").start()
    try:
        actual = await scenario(served.url, model_server)
    finally:
        served.stop()
    # the assistant id is derived from the graph name the same way
    assert actual.pop("assistant_id") == expected.pop("assistant_id")
    differences = {
        key: {"reference": expected.get(key), "moa": actual.get(key)}
        for key in sorted(set(expected) | set(actual))
        if expected.get(key) != actual.get(key)
    }
    assert not differences, yaml.safe_dump(differences, sort_keys=False)
