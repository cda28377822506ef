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
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml
from langgraph_sdk import get_client

from langgraph_moa.state import MoAOutput, MoAState
from langgraph_moa.testing import ModelServer
from tests.contract_support import (
    Call,
    Ctx,
    Outcome,
    events,
    failed,
    items,
    keys,
    ok,
    run_js,
    run_python,
    shape_of,
)
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


# ---------------------------------------------------------------------------
# Every call of issue #15 with the Python SDK, the JS SDK and raw HTTP: one table row
# per call (tests/contract_support.py runs them), against both servers.
# ---------------------------------------------------------------------------

MISSING = "00000000-0000-4000-8000-000000000000"
MOA_ID = "e7ff9cb7-2ee2-5e06-9e85-5deaafac8928"
"""The default assistant of graph ``moa`` (uuid5 of the graph name, on both servers)."""
ASSISTANT = keys(
    "assistant_id", "config", "context", "created_at", "description", "graph_id", "metadata",
    "name", "updated_at", "version",
)  # fmt: skip
THREAD = keys(
    "config", "created_at", "error", "interrupts", "metadata", "state_updated_at", "status",
    "thread_id", "updated_at", "values",
)  # fmt: skip
RUN = keys(
    "assistant_id", "created_at", "kwargs", "metadata", "multitask_strategy", "run_id",
    "status", "thread_id", "updated_at",
)  # fmt: skip
STATE = keys(
    "checkpoint", "checkpoint_id", "created_at", "interrupts", "metadata", "next",
    "parent_checkpoint", "parent_checkpoint_id", "tasks", "values",
)  # fmt: skip
ANSWER = keys(*MoAOutput.__annotations__)
"""A run's final values: the graph's output keys."""
FULL_STATE = keys(*MoAState.__annotations__)
"""The whole state of a finished MoA run (the protocol's values)."""
SCHEMAS = keys(
    "config_schema", "context_schema", "graph_id", "input_schema", "output_schema", "state_schema"
)  # fmt: skip
NEW_THREAD = keys(
    "config", "created_at", "metadata", "state_updated_at", "status", "thread_id", "updated_at",
    "values",
)  # fmt: skip
BY_NAME = (
    "moa takes the graph name wherever an assistant id goes (GET /assistants/moa); the "
    "reference takes it only in run bodies"
)
NS = ["contract", "memories"]


async def v2_run(c: Ctx) -> Any:
    """The commands + events protocol: start a run, await its output."""
    async with c.client.threads.stream(assistant_id="moa") as thread:
        await thread.run.start(input={"task": "v2"})
        c["v2"] = thread.thread_id
        return await thread.output


async def v2_respond(c: Ctx) -> Any:
    """Start a run that pauses on an interrupt, answer it, await the final output."""
    async with c.client.threads.stream(assistant_id="approve") as thread:
        await thread.run.start(input={"task": "ok?"})
        async for _event in thread.subscribe(["input"]):
            break  # the interrupt is asked
        async with asyncio.timeout(60):  # the SDK's own watcher records it too
            while not thread.interrupts:
                await asyncio.sleep(0.01)
        asked = list(thread.interrupts)
        await thread.run.respond({"proposals": {}})
        runs = await c.client.runs.list(thread.thread_id)
        answer = await c.client.runs.join(thread.thread_id, runs[0]["run_id"])
        return {"asked": asked[0], "answer": answer}


CRON_KEYS = keys(
    "assistant_id",
    "created_at",
    "cron_id",
    "enabled",
    "end_time",
    "metadata",
    "next_run_date",
    "on_run_completed",
    "payload",
    "schedule",
    "thread_id",
    "timezone",
    "updated_at",
    "user_id",
)
VERSION = keys(
    "assistant_id",
    "config",
    "context",
    "created_at",
    "description",
    "graph_id",
    "metadata",
    "name",
    "version",
)
CRON = "0 0 1 1 *"
"""A schedule that does not fire during the test (New Year's midnight)."""


async def until_run_done(stream: Awaitable[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """A thread stream's parts up to its first run's end (the stream stays open)."""
    async for part in await stream:
        yield part
        if part.event == "metadata" and part.data.get("status") == "run_done":
            return


JS_UNTIL_RUN_DONE = """(async function* () {
  for await (const part of client.threads.joinStream(ctx.v2, { lastEventId: "0" })) {
    yield part;
    if (part.event === "metadata" && part.data?.status === "run_done") return;
  } })()"""
SELECT = "moa applies history's `select` (here: only `next`); the reference ignores it"
COPY = (
    "moa answers a copy like GET /threads/{id} (with the copied values and interrupts); the "
    "reference answers the new thread's row"
)
JOIN_STREAM = (
    "a protocol run (threads.stream) also streams `updates`, `checkpoints` and `tasks`, the "
    "modes its protocol events are made from (see stream.events.updates)"
)


async def command(c: Ctx, tid: str, body: Any) -> httpx.Response:
    return await c.http.post(f"/threads/{tid}/commands", json=body)


async def thread_events(c: Ctx, tid: str, body: Any, *, runs: int = 1) -> Outcome:
    """``/stream/events`` of a thread whose runs ended, read up to the terminal
    lifecycle event of its ``runs``-th run (the stream stays open for later runs);
    ``runs=0``: only the status and content type."""
    async with c.http.stream("POST", f"/threads/{tid}/stream/events", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"status": r.status_code, "shape": shape_of(r.json())}
        if not runs:
            return {"status": r.status_code, "shape": r.headers["content-type"].split(";")[0]}
        names: dict[str, list[str]] = {}
        event, terminal = "", 0
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                names[event] = sorted(data)
                names[f"{event}.params"] = sorted(data["params"])
                if event == "lifecycle" and data["params"]["data"]["event"] != "running":
                    terminal += 1
                    if terminal == runs:
                        break
        return {"status": r.status_code, "shape": {"events": names}}


SDK_CHANNELS = ["lifecycle", "input", "values", "messages"]
"""The channels the SDKs' projections subscribe to."""
MORE_CHANNELS = ["lifecycle", "updates", "checkpoints", "tasks"]


def protocol_events(*methods: str) -> dict[str, list[str]]:
    """What :func:`thread_events` makes of protocol events of these methods."""
    out: dict[str, list[str]] = {}
    for method in methods:
        out[method] = ["event_id", "method", "params", "seq", "type"]
        node = ["node"] if method == "updates" else []
        out[f"{method}.params"] = sorted(["data", "namespace", "timestamp", *node])
    return out


JS_V2_RUN = """(async () => {
  const t = client.threads.stream({ assistantId: "moa" });
  await t.run.start({ input: { task: "v2 js" } });
  const values = await t.output; ctx.v2 = t.threadId; await t.close(); return values; })()"""
JS_V2_RESPOND = """(async () => {
  const t = client.threads.stream({ assistantId: "approve" });
  await t.run.start({ input: { task: "ok? js" } });
  for await (const e of await t.subscribe(["input"])) break;
  const asked = t.interrupts[0];
  await t.input.respond({ interrupt_id: asked.interruptId, namespace: [],
    response: { proposals: {} } });
  const runs = await client.runs.list(t.threadId);
  const answer = await client.runs.join(t.threadId, runs[0].run_id);
  await t.close(); return { asked, answer }; })()"""

CALLS: list[Call] = [
    # assistants
    Call(
        "assistants.search",
        "py",
        lambda c: c.client.assistants.search(),
        expect=ok(items(ASSISTANT)),
    ),
    Call("assistants.get", "py", lambda c: c.client.assistants.get(MOA_ID), expect=ok(ASSISTANT)),
    Call(
        "assistants.get.by_graph_name",
        "py",
        lambda c: c.client.assistants.get("moa"),
        expect=failed(422),
        ours=ok(ASSISTANT),
        why=BY_NAME,
    ),
    Call(
        "assistants.get_schemas",
        "py",
        lambda c: c.client.assistants.get_schemas(MOA_ID),
        expect=ok(SCHEMAS),
    ),
    Call(
        "assistants.get_graph",
        "py",
        lambda c: c.client.assistants.get_graph(MOA_ID),
        expect=ok(keys("edges", "nodes")),
    ),
    Call(
        "assistants.get_subgraphs",
        "py",
        lambda c: c.client.assistants.get_subgraphs(MOA_ID),
        expect=ok(keys()),
    ),
    Call("assistants.count", "py", lambda c: c.client.assistants.count(), expect=ok("number")),
    Call("assistants.search", "js", "client.assistants.search()", expect=ok(items(ASSISTANT))),
    Call("assistants.get", "js", f'client.assistants.get("{MOA_ID}")', expect=ok(ASSISTANT)),
    Call(
        "assistants.get.by_graph_name",
        "js",
        'client.assistants.get("moa")',
        expect=failed(422),
        ours=ok(ASSISTANT),
        why=BY_NAME,
    ),
    Call(
        "assistants.getSchemas",
        "js",
        f'client.assistants.getSchemas("{MOA_ID}")',
        expect=ok(SCHEMAS),
    ),
    Call(
        "assistants.getGraph",
        "js",
        f'client.assistants.getGraph("{MOA_ID}")',
        expect=ok(keys("edges", "nodes")),
    ),
    Call(
        "assistants.getSubgraphs",
        "js",
        f'client.assistants.getSubgraphs("{MOA_ID}")',
        expect=ok(keys()),
    ),
    Call("assistants.count", "js", "client.assistants.count()", expect=ok("number")),
    # threads and thread runs
    Call(
        "threads.create",
        "py",
        lambda c: c.client.threads.create(metadata={"k": "v"}),
        save="t",
        expect=ok(NEW_THREAD),
    ),
    Call(
        "threads.get_state.new",
        "py",
        lambda c: c.client.threads.get_state(c["t"]["thread_id"]),
        expect=ok(STATE),
    ),
    Call(
        "runs.wait",
        "py",
        lambda c: c.client.runs.wait(c["t"]["thread_id"], "moa", input={"task": "w"}),
        expect=ok(ANSWER),
    ),
    Call(
        "runs.stream",
        "py",
        lambda c: c.client.runs.stream(
            c["t"]["thread_id"], "moa", input={"task": "s"}, stream_mode=["values", "updates"]
        ),
        expect=ok(events("metadata", "updates", "values")),
    ),
    Call(
        "runs.create",
        "py",
        lambda c: c.client.runs.create(c["t"]["thread_id"], "moa", input={"task": "c"}),
        save="r",
        expect=ok(RUN),
    ),
    Call(
        "runs.join",
        "py",
        lambda c: c.client.runs.join(c["t"]["thread_id"], c["r"]["run_id"]),
        expect=ok(ANSWER),
    ),
    Call(
        "runs.get",
        "py",
        lambda c: c.client.runs.get(c["t"]["thread_id"], c["r"]["run_id"]),
        expect=ok(RUN),
    ),
    Call(
        "runs.list", "py", lambda c: c.client.runs.list(c["t"]["thread_id"]), expect=ok(items(RUN))
    ),
    Call(
        "threads.get", "py", lambda c: c.client.threads.get(c["t"]["thread_id"]), expect=ok(THREAD)
    ),
    Call(
        "threads.update",
        "py",
        lambda c: c.client.threads.update(c["t"]["thread_id"], metadata={"z": 1}),
        expect=ok(THREAD),
    ),
    Call(
        "threads.search",
        "py",
        lambda c: c.client.threads.search(metadata={"k": "v"}),
        expect=ok(items(THREAD)),
    ),
    Call("threads.count", "py", lambda c: c.client.threads.count(), expect=ok("number")),
    Call(
        "threads.get_state",
        "py",
        lambda c: c.client.threads.get_state(c["t"]["thread_id"]),
        expect=ok(STATE),
    ),
    Call(
        "threads.get_history",
        "py",
        lambda c: c.client.threads.get_history(c["t"]["thread_id"], limit=2),
        expect=ok(items(STATE)),
    ),
    Call(
        "threads.update_state",
        "py",
        lambda c: c.client.threads.update_state(
            c["t"]["thread_id"], {"task": "u"}, as_node="L1_a1"
        ),
        expect=ok(keys("checkpoint", "checkpoint_id", "configurable")),
    ),
    Call(
        "runs.delete",
        "py",
        lambda c: c.client.runs.delete(c["t"]["thread_id"], c["r"]["run_id"]),
        expect=ok(None),
    ),
    Call(
        "runs.get.missing",
        "py",
        lambda c: c.client.runs.get(c["t"]["thread_id"], MISSING),
        expect=failed(404),
    ),
    Call("threads.get.missing", "py", lambda c: c.client.threads.get(MISSING), expect=failed(404)),
    Call(
        "threads.create",
        "js",
        'client.threads.create({ metadata: { k: "v" } })',
        save="t",
        expect=ok(NEW_THREAD),
    ),
    Call(
        "threads.getState.new", "js", "client.threads.getState(ctx.t.thread_id)", expect=ok(STATE)
    ),
    Call(
        "runs.wait",
        "js",
        'client.runs.wait(ctx.t.thread_id, "moa", { input: { task: "w" } })',
        expect=ok(ANSWER),
    ),
    Call(
        "runs.stream",
        "js",
        'client.runs.stream(ctx.t.thread_id, "moa", '
        '{ input: { task: "s" }, streamMode: ["values", "updates"] })',
        expect=ok(events("metadata", "updates", "values")),
    ),
    Call(
        "runs.create",
        "js",
        'client.runs.create(ctx.t.thread_id, "moa", { input: { task: "c" } })',
        save="r",
        expect=ok(RUN),
    ),
    Call(
        "runs.join",
        "js",
        "client.runs.join(ctx.t.thread_id, ctx.r.run_id)",
        expect=ok(ANSWER),
    ),
    Call("runs.get", "js", "client.runs.get(ctx.t.thread_id, ctx.r.run_id)", expect=ok(RUN)),
    Call("runs.list", "js", "client.runs.list(ctx.t.thread_id)", expect=ok(items(RUN))),
    Call("threads.get", "js", "client.threads.get(ctx.t.thread_id)", expect=ok(THREAD)),
    Call(
        "threads.update",
        "js",
        "client.threads.update(ctx.t.thread_id, { metadata: { z: 1 } })",
        expect=ok(THREAD),
    ),
    Call(
        "threads.search",
        "js",
        'client.threads.search({ metadata: { k: "v" } })',
        expect=ok(items(THREAD)),
    ),
    Call("threads.count", "js", "client.threads.count()", expect=ok("number")),
    Call("threads.getState", "js", "client.threads.getState(ctx.t.thread_id)", expect=ok(STATE)),
    Call(
        "threads.getHistory",
        "js",
        "client.threads.getHistory(ctx.t.thread_id, { limit: 2 })",
        expect=ok(items(STATE)),
    ),
    Call(
        "threads.updateState",
        "js",
        'client.threads.updateState(ctx.t.thread_id, { values: { task: "u" }, asNode: "L1_a1" })',
        expect=ok(keys("checkpoint", "checkpoint_id", "configurable")),
    ),
    Call("runs.delete", "js", "client.runs.delete(ctx.t.thread_id, ctx.r.run_id)", expect=ok(None)),
    Call("threads.get.missing", "js", f'client.threads.get("{MISSING}")', expect=failed(404)),
    # stateless runs
    Call(
        "runs.wait.stateless",
        "py",
        lambda c: c.client.runs.wait(None, "moa", input={"task": "sl"}),
        expect=ok(ANSWER),
    ),
    Call(
        "runs.stream.stateless",
        "py",
        lambda c: c.client.runs.stream(None, "moa", input={"task": "sl"}),
        expect=ok(events("metadata", "values")),
    ),
    Call(
        "runs.wait.stateless",
        "js",
        'client.runs.wait(null, "moa", { input: { task: "sl" } })',
        expect=ok(ANSWER),
    ),
    Call(
        "runs.stream.stateless",
        "js",
        'client.runs.stream(null, "moa", { input: { task: "sl" } })',
        expect=ok(events("metadata", "values")),
    ),
    # assistants and crons
    Call(
        "assistants.create",
        "py",
        lambda c: c.client.assistants.create("moa", config={"configurable": {}}, name="made"),
        save="a",
        expect=ok(ASSISTANT),
    ),
    Call(
        "assistants.update",
        "py",
        lambda c: c.client.assistants.update(c["a"]["assistant_id"], name="renamed"),
        expect=ok(ASSISTANT),
    ),
    Call(
        "assistants.get_versions",
        "py",
        lambda c: c.client.assistants.get_versions(c["a"]["assistant_id"]),
        expect=ok(items(VERSION)),
    ),
    Call(
        "assistants.set_latest",
        "py",
        lambda c: c.client.assistants.set_latest(c["a"]["assistant_id"], 1),
        expect=ok(ASSISTANT),
    ),
    Call(
        "assistants.delete",
        "py",
        lambda c: c.client.assistants.delete(c["a"]["assistant_id"]),
        expect=ok(None),
    ),
    Call(
        "crons.create_for_thread",
        "py",
        lambda c: c.client.crons.create_for_thread(
            c["t"]["thread_id"], "moa", schedule=CRON, input={"task": "cron"}
        ),
        save="cron_t",
        expect=ok(CRON_KEYS),
    ),
    Call(
        "crons.create",
        "py",
        lambda c: c.client.crons.create("moa", schedule=CRON, input={"task": "cron"}),
        save="cron",
        expect=ok(CRON_KEYS),
    ),
    Call(
        "crons.update",
        "py",
        lambda c: c.client.crons.update(c["cron"]["cron_id"], schedule="0 0 2 1 *"),
        expect=ok(CRON_KEYS),
    ),
    Call("crons.search", "py", lambda c: c.client.crons.search(), expect=ok(items(CRON_KEYS))),
    Call("crons.count", "py", lambda c: c.client.crons.count(), expect=ok("number")),
    Call(
        "crons.delete", "py", lambda c: c.client.crons.delete(c["cron"]["cron_id"]), expect=ok(None)
    ),
    Call(
        "crons.delete.thread",
        "py",
        lambda c: c.client.crons.delete(c["cron_t"]["cron_id"]),
        expect=ok(None),
    ),
    Call(
        "assistants.create",
        "js",
        'client.assistants.create({ graphId: "moa", name: "made" })',
        save="a",
        expect=ok(ASSISTANT),
    ),
    Call(
        "assistants.update",
        "js",
        'client.assistants.update(ctx.a.assistant_id, { name: "renamed" })',
        expect=ok(ASSISTANT),
    ),
    Call(
        "assistants.getVersions",
        "js",
        "client.assistants.getVersions(ctx.a.assistant_id)",
        expect=ok(items(VERSION)),
    ),
    Call(
        "assistants.setLatest",
        "js",
        "client.assistants.setLatest(ctx.a.assistant_id, 1)",
        expect=ok(ASSISTANT),
    ),
    Call(
        "assistants.delete", "js", "client.assistants.delete(ctx.a.assistant_id)", expect=ok(None)
    ),
    Call(
        "crons.createForThread",
        "js",
        f'client.crons.createForThread(ctx.t.thread_id, "moa", {{ schedule: "{CRON}", '
        'input: { task: "cron" } })',
        save="cron_t",
        expect=ok(CRON_KEYS),
    ),
    Call(
        "crons.create",
        "js",
        f'client.crons.create("moa", {{ schedule: "{CRON}", input: {{ task: "cron" }} }})',
        save="cron",
        expect=ok(CRON_KEYS),
    ),
    Call(
        "crons.update",
        "js",
        'client.crons.update(ctx.cron.cron_id, { schedule: "0 0 2 1 *" })',
        expect=ok(CRON_KEYS),
    ),
    Call("crons.search", "js", "client.crons.search()", expect=ok(items(CRON_KEYS))),
    Call("crons.count", "js", "client.crons.count()", expect=ok("number")),
    Call("crons.delete", "js", "client.crons.delete(ctx.cron.cron_id)", expect=ok(None)),
    Call("crons.delete.thread", "js", "client.crons.delete(ctx.cron_t.cron_id)", expect=ok(None)),
    # more of issue #15: stateless runs, batches, copies, the thread stream, history options
    Call(
        "runs.create.stateless",
        "py",
        lambda c: c.client.runs.create(None, "moa", input={"task": "sc"}),
        expect=ok(RUN),
    ),
    Call(
        "runs.create_batch",
        "py",
        lambda c: c.client.runs.create_batch(
            [{"assistant_id": "moa", "input": {"task": f"b{i}"}} for i in (1, 2)]
        ),
        expect=ok(items(RUN)),
    ),
    Call(
        "threads.copy",
        "py",
        lambda c: c.client.threads.copy(c["t"]["thread_id"]),
        expect=ok(
            keys(
                "config",
                "created_at",
                "metadata",
                "state_updated_at",
                "status",
                "thread_id",
                "updated_at",
            )
        ),
        ours=ok(THREAD),
        why=COPY,
    ),
    Call(
        "runs.stream.events",
        "py",
        lambda c: c.client.runs.stream(
            c["t"]["thread_id"], "moa", input={"task": "e"}, stream_mode="events"
        ),
        expect=ok(events("events", "metadata")),
    ),
    Call(
        "threads.get_state.saved",
        "py",
        lambda c: c.client.threads.get_state(c["t"]["thread_id"]),
        save="state",
        expect=ok(STATE),
    ),
    Call(
        "threads.get_history.before",
        "py",
        lambda c: c.client.threads.get_history(
            c["t"]["thread_id"],
            limit=1,
            before=cast(Any, {"configurable": c["state"]["checkpoint"]}),
        ),
        expect=ok(items(STATE)),
    ),
    Call(
        "threads.get_history.select",
        "py",
        lambda c: c.client.threads.get_history(c["t"]["thread_id"], limit=1, select=["next"]),
        expect=ok(items(STATE)),
        ours=ok(items(keys("next"))),
        why=SELECT,
    ),
    Call(
        "runs.create.stateless",
        "js",
        'client.runs.create(null, "moa", { input: { task: "sc" } })',
        expect=ok(RUN),
    ),
    Call(
        "runs.createBatch",
        "js",
        "client.runs.createBatch([1, 2].map((i) => "
        '({ assistantId: "moa", input: { task: `b${i}` } })))',
        expect=ok(items(RUN)),
    ),
    Call(
        "threads.copy",
        "js",
        "client.threads.copy(ctx.t.thread_id)",
        expect=ok(
            keys(
                "config",
                "created_at",
                "metadata",
                "state_updated_at",
                "status",
                "thread_id",
                "updated_at",
            )
        ),
        ours=ok(THREAD),
        why=COPY,
    ),
    Call(
        "runs.stream.events",
        "js",
        'client.runs.stream(ctx.t.thread_id, "moa", '
        '{ input: { task: "e" }, streamMode: "events" })',
        expect=ok(events("events", "metadata")),
    ),
    Call(
        "threads.getState.saved",
        "js",
        "client.threads.getState(ctx.t.thread_id)",
        save="state",
        expect=ok(STATE),
    ),
    Call(
        "threads.getHistory.before",
        "js",
        "client.threads.getHistory(ctx.t.thread_id, { limit: 1, before: "
        "{ configurable: { checkpoint_id: ctx.state.checkpoint.checkpoint_id } } })",
        expect=ok(items(STATE)),
    ),
    Call(
        "threads.getHistory.select",
        "js",
        'client.threads.getHistory(ctx.t.thread_id, { limit: 1, select: ["next"] })',
        expect=ok(items(STATE)),
        ours=ok(items(keys("next"))),
        why=SELECT,
    ),
    # the store
    Call(
        "store.put_item",
        "py",
        lambda c: c.client.store.put_item(NS, "k1", {"text": "remember"}),
        expect=ok(None),
    ),
    Call(
        "store.get_item",
        "py",
        lambda c: c.client.store.get_item(NS, "k1"),
        expect=ok(keys("created_at", "key", "namespace", "updated_at", "value")),
    ),
    Call(
        "store.search_items",
        "py",
        lambda c: c.client.store.search_items(NS[:1]),
        expect=ok(keys("items")),
    ),
    Call(
        "store.list_namespaces",
        "py",
        lambda c: c.client.store.list_namespaces(prefix=NS[:1]),
        expect=ok(keys("namespaces")),
    ),
    Call(
        "store.delete_item", "py", lambda c: c.client.store.delete_item(NS, "k1"), expect=ok(None)
    ),
    Call(
        "store.putItem",
        "js",
        f'client.store.putItem({json.dumps(NS)}, "k2", {{ text: "x" }})',
        expect=ok(None),
    ),
    Call(
        "store.getItem",
        "js",
        f'client.store.getItem({json.dumps(NS)}, "k2")',
        expect=ok(
            keys("createdAt", "created_at", "key", "namespace", "updatedAt", "updated_at", "value")
        ),
    ),
    Call(
        "store.searchItems",
        "js",
        f"client.store.searchItems({json.dumps(NS[:1])})",
        expect=ok(keys("items")),
    ),
    Call(
        "store.listNamespaces",
        "js",
        f"client.store.listNamespaces({{ prefix: {json.dumps(NS[:1])} }})",
        expect=ok(keys("namespaces")),
    ),
    Call(
        "store.deleteItem",
        "js",
        f'client.store.deleteItem({json.dumps(NS)}, "k2")',
        expect=ok(None),
    ),
    # the commands + events stream protocol (client.threads.stream)
    Call(
        "threads.stream.run",
        "py",
        v2_run,
        expect=ok(FULL_STATE),
    ),
    Call(
        "threads.join_stream",
        "py",
        lambda c: until_run_done(c.client.threads.join_stream(c["v2"], last_event_id="0")),
        expect=ok(events("messages", "metadata", "values")),
        ours=ok(events("checkpoints", "messages", "metadata", "tasks", "updates", "values")),
        why=JOIN_STREAM,
    ),
    Call("threads.stream.respond", "py", v2_respond, expect=ok(keys("answer", "asked"))),
    Call(
        "threads.stream.run",
        "js",
        JS_V2_RUN,
        expect=ok(FULL_STATE),
    ),
    Call(
        "threads.joinStream",
        "js",
        JS_UNTIL_RUN_DONE,
        expect=ok(events("messages", "metadata", "values")),
        ours=ok(events("checkpoints", "messages", "metadata", "tasks", "updates", "values")),
        why=JOIN_STREAM,
    ),
    Call("threads.stream.respond", "js", JS_V2_RESPOND, expect=ok(keys("answer", "asked"))),
    Call(
        "commands.run.start",
        "http",
        lambda c: command(
            c,
            c["t"]["thread_id"],
            {
                "id": 1,
                "method": "run.start",
                "params": {"assistant_id": "moa", "input": {"task": "h"}},
            },
        ),
        expect={"status": 200, "shape": keys("id", "meta", "result", "type")},
    ),
    Call(
        "stream.events",
        "http",
        lambda c: thread_events(c, c["t"]["thread_id"], {"channels": SDK_CHANNELS}),
        expect={
            "status": 200,
            "shape": {"events": protocol_events("lifecycle", "values", "messages")},
        },
    ),
    Call(
        "stream.events.updates",
        "http",
        lambda c: thread_events(c, c["t"]["thread_id"], {"channels": MORE_CHANNELS}),
        ours={"status": 200, "shape": {"events": protocol_events(*MORE_CHANNELS)}},
        why=(
            "moa also sends `updates`, `checkpoints` and `tasks` events (from the run's "
            "stream modes); the reference's v3 stream (langgraph 1.2's default transformers) "
            "sends none on these channels"
        ),
        expect={"status": 200, "shape": {"events": protocol_events("lifecycle")}},
    ),
    Call(
        "commands.unknown",
        "http",
        lambda c: command(c, c["t"]["thread_id"], {"id": 2, "method": "nope"}),
        expect={"status": 200, "shape": keys("error", "id", "message", "type")},
    ),
    Call(
        "commands.malformed",
        "http",
        lambda c: command(c, c["t"]["thread_id"], {"method": "run.start"}),
        expect={"status": 400, "shape": keys("error", "id", "message", "type")},
    ),
    Call(
        "commands.respond.unknown",
        "http",
        lambda c: command(
            c,
            c["t"]["thread_id"],
            {
                "id": 3,
                "method": "input.respond",
                "params": {"interrupt_id": "x", "namespace": [], "response": 1},
            },
        ),
        expect={"status": 200, "shape": keys("error", "id", "message", "type")},
    ),
    Call(
        "stream.events.bad_channel",
        "http",
        lambda c: thread_events(c, c["t"]["thread_id"], {"channels": ["nope"]}),
        expect={"status": 400, "shape": keys("detail")},
    ),
    Call(
        "stream.events.missing",
        "http",
        lambda c: thread_events(c, MISSING, {"channels": ["values"]}, runs=0),
        expect={"status": 200, "shape": "text/event-stream"},
        ours={"status": 404, "shape": keys("detail")},
        why=(
            "an unknown (or another tenant's) thread is a 404 in moa, as on every path; the "
            "reference opens an idle stream"
        ),
    ),
    Call(
        "threads.delete",
        "py",
        lambda c: c.client.threads.delete(c["t"]["thread_id"]),
        expect=ok(None),
    ),
    Call("threads.delete", "js", "client.threads.delete(ctx.t.thread_id)", expect=ok(None)),
]
"""Every call, in the order they run (Python and HTTP calls first, then JS ones)."""


async def outcomes(url: str, srv: ModelServer, tmp_path: Path) -> dict[str, Outcome]:
    tmp_path.mkdir(exist_ok=True)
    py = await run_python(url, CALLS, srv)
    return {**py, **await asyncio.to_thread(run_js, url, CALLS, tmp_path)}


async def test_every_call_with_both_sdks(
    reference: str, tmp_path: Path, model_server: ModelServer
) -> None:
    expected = await outcomes(reference, model_server, tmp_path / "reference")
    specs = [
        moa_spec(model_server),
        moa_spec(model_server, name="approve", interrupt_before_synthesis=True),
    ]
    served = Served(tmp_path, specs, f"sqlite:///{tmp_path / 'moa.sqlite'}").start()
    try:
        actual = await outcomes(served.url, model_server, tmp_path / "moa")
    finally:
        served.stop()
    report = {k: {"reference": expected.get(k), "moa": actual.get(k)} for k in expected}
    (tmp_path / "outcomes.yaml").write_text(yaml.safe_dump(report, sort_keys=False))
    problems = {}
    for call in CALLS:
        key = f"{call.sdk} {call.name}"
        ref, ours = expected.get(key), actual.get(key)
        if call.expect is not None and ref != call.expect:
            problems[f"{key} (reference drifted)"] = {"table": call.expect, "reference": ref}
        want = call.ours if call.ours is not None else ref
        if ours != want:
            problems[key] = {"reference": ref, "moa": ours, "deliberate": call.why or None}
    assert not problems, yaml.safe_dump(problems, sort_keys=False)
