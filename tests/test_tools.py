"""Tools: the spec's `tools:` (errors with file:line), and agents calling a function tool,
the sandboxed python tool and an MCP stdio server over real HTTP (the scripted model
server), their results reaching the synthesizer's prompt."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from langgraph_moa.graphs import compile_graph
from langgraph_moa.nodes.tools import mcp_problems
from langgraph_moa.spec import SpecError, load_spec
from langgraph_moa.testing import ChatRequest, ModelServer
from tests.helpers import MCP_WORDS_SERVER, served_models


def spec_of(srv: ModelServer, tools: dict[str, Any], agent_tools: list[str]) -> dict[str, Any]:
    return {
        "name": "tooly",
        "models": served_models(srv, "coder", "synth"),
        "tools": tools,
        "agents": [{"name": "coder", "model": "coder", "tools": agent_tools, "max_steps": 4}],
        "layers": [{"agents": ["coder"], "synthesizer": {"model": "synth"}}],
    }


def tool_results(req: ChatRequest) -> str:
    """The agent's final answer: the tool results it got, one per line."""
    return "results: " + " | ".join(m["content"] for m in req.messages if m["role"] == "tool")


async def run(spec: dict[str, Any], task: str = "do it") -> dict[str, Any]:
    graph = compile_graph(load_spec(spec), checkpointer=InMemorySaver())
    return await graph.ainvoke({"task": task}, {"configurable": {"thread_id": "t"}})


# -- the spec ---------------------------------------------------------------------------


def test_spec_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "tools:\n"
        "  add: {function: 'tests.tool_fixtures:add'}\n"
        "  files: {mcp: {command: python}}\n"
        "agents:\n"
        "  - name: a\n"
        "    tools: [add, nope, add.x, files.read]\n"
        "layers: [{agents: [a]}]\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value).splitlines()[1:] == [
        f"  {path}:6: agents.0.tools.1: unknown tool 'nope'; add it under `tools` "
        "(known: ['add', 'files'])",
        f"  {path}:6: agents.0.tools.2: 'add.x': `name.tool` picks one tool of an MCP server, "
        "and 'add' is not one",
    ]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("tests.no_such_module:f", "tools.t.function: no module named 'tests.no_such_module'"),
        (
            "tests.tool_fixtures:nope",
            "tools.t.function: module 'tests.tool_fixtures' has no attribute 'nope'",
        ),
        (
            "tests.tool_fixtures:NOT_A_TOOL",
            "tools.t.function: 'tests.tool_fixtures:NOT_A_TOOL' is a int, not a function or "
            "a LangChain tool",
        ),
        ("no colon", "tools.t.function: `function` must look like 'package.module:attr'"),
    ],
)
def test_bad_import_paths_are_spec_errors(tmp_path: Path, function: str, message: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"agents: [{{name: a, tools: [t]}}]\nlayers: [{{agents: [a]}}]\ntools:\n"
        f"  t:\n    function: {function!r}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert f"{path}:5: {message}" in str(caught.value)


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ({}, "a tool needs exactly one of `function`, `builtin` or `mcp`"),
        (
            {"builtin": "python", "mcp": {"url": "http://x/mcp"}},
            "a tool needs exactly one of `function`, `builtin` or `mcp` (got builtin and mcp)",
        ),
        ({"mcp": {"command": "x", "url": "http://x/mcp"}}, "exactly one of `command` (stdio)"),
        ({"function": "tests.tool_fixtures:add", "memory_mb": 64}, "memory_mb: only for"),
        ({"builtin": "shell"}, "'shell' is not allowed"),
    ],
)
def test_tool_entries_are_checked(tool: dict[str, Any], message: str) -> None:
    spec = {"agents": [{"name": "a"}], "layers": [{"agents": ["a"]}], "tools": {"t": tool}}
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert message in str(caught.value)


async def test_check_tools_contacts_mcp_servers(tmp_path: Path) -> None:
    server = tmp_path / "words.py"
    server.write_text(MCP_WORDS_SERVER)
    spec = load_spec(
        {
            "tools": {
                "words": {"mcp": {"command": sys.executable, "args": [str(server)]}},
                "gone": {"mcp": {"command": str(tmp_path / "missing")}},
            },
            "agents": [{"name": "a", "tools": ["words.reverse", "words.shout", "gone"]}],
            "layers": [{"agents": ["a"]}],
        }
    )
    problems = await mcp_problems(spec, timeout=30)
    assert len(problems) == 2
    assert problems[0].startswith("tools.gone.mcp: cannot list the server's tools: ")
    assert problems[1] == (
        "agents.0.tools.1: MCP server 'words' has no tool 'shout' (it has: ['count', 'reverse'])"
    )


# -- agents calling tools ---------------------------------------------------------------


async def test_function_tools_and_errors_reach_the_synthesizer(
    model_server: ModelServer,
) -> None:
    srv = model_server
    calls = [
        {"name": "add", "arguments": {"a": 2, "b": 40}},
        {"name": "shout", "arguments": {"text": "hi"}},
        {"name": "boom", "arguments": {"text": "x"}},
        {"name": "nope", "arguments": {}},
    ]
    srv.add_rule(model="coder", times=1, tool_calls=calls)
    srv.add_rule(model="coder", reply=tool_results)
    tools = {
        "add": {"function": "tests.tool_fixtures:add"},
        "shout": {"function": "tests.tool_fixtures:shout"},
        "boom": {"function": "tests.tool_fixtures:explode"},
    }
    out = await run(spec_of(srv, tools, ["add", "shout", "boom"]))

    first, second = (r for r in srv.requests if r.model == "coder")
    offered = [t["function"]["name"] for t in first.body["tools"]]
    assert offered == ["add", "shout", "boom"]
    assert [m["content"] for m in second.messages if m["role"] == "tool"] == [
        "42",
        "HI",
        "error: RuntimeError: cannot handle 'x'",
        "error: there is no tool 'nope'; use one of ['add', 'shout', 'boom']",
    ]
    synth = next(r for r in srv.requests if r.model == "synth")
    assert (
        "[1] coder\n(tools used: add, shout, boom)\nresults: 42 | HI | error: RuntimeError: "
        "cannot handle 'x' | error: there is no tool 'nope'" in synth.system
    )
    usage = out["usage"]["coder"]
    assert usage["calls"] == 2 and usage["tool_calls"] == 3
    assert out["proposals"]["1"]["coder"]["tools"] == {"add": 1, "shout": 1, "boom": 1}


async def test_max_steps_ends_with_an_answer_without_tools(model_server: ModelServer) -> None:
    srv = model_server
    srv.add_rule(model="coder", tool_calls=[{"name": "add", "arguments": {"a": 1, "b": 1}}])
    out = await run(spec_of(srv, {"add": {"function": "tests.tool_fixtures:add"}}, ["add"]))
    coder = [r for r in srv.requests if r.model == "coder"]
    assert len(coder) == 4  # max_steps
    assert [r.body.get("tool_choice") for r in coder] == [None, None, None, "none"]
    assert out["usage"]["coder"]["tool_calls"] == 3


async def test_max_tool_calls_refuses_the_rest(model_server: ModelServer) -> None:
    srv = model_server
    two = [{"name": "add", "arguments": {"a": i, "b": 1}} for i in range(2)]
    srv.add_rule(model="coder", times=1, tool_calls=two)
    srv.add_rule(model="coder", reply=tool_results)
    spec = spec_of(srv, {"add": {"function": "tests.tool_fixtures:add"}}, ["add"])
    spec["agents"][0]["max_tool_calls"] = 1
    out = await run(spec)
    last = [r for r in srv.requests if r.model == "coder"][-1]
    assert last.body.get("tool_choice") == "none"
    assert [m["content"] for m in last.messages if m["role"] == "tool"] == [
        "1",
        "not run: the tool-call limit of this answer is reached",
    ]
    assert out["usage"]["coder"]["tool_calls"] == 1


@pytest.mark.usefixtures("bwrap")
async def test_python_tool_result_reaches_the_synthesizer(model_server: ModelServer) -> None:
    srv = model_server
    code = "import socket\nprint(sum(range(101)))\nprint(open('/etc/hostname').read() != '')"
    srv.add_rule(model="coder", times=1, tool_calls=[{"name": "py", "arguments": {"code": code}}])
    srv.add_rule(model="coder", reply=tool_results)
    await run(spec_of(srv, {"py": {"builtin": "python", "timeout": 20}}, ["py"]))
    synth = next(r for r in srv.requests if r.model == "synth")
    assert synth.system.endswith("(tools used: py)\nresults: exit status: 0\nstdout:\n5050\nTrue")


async def test_mcp_stdio_tools_reach_the_synthesizer(
    model_server: ModelServer, tmp_path: Path
) -> None:
    srv = model_server
    server = tmp_path / "words.py"
    server.write_text(MCP_WORDS_SERVER)
    calls = [
        {"name": "words_reverse", "arguments": {"text": "stressed"}},
        {"name": "words_count", "arguments": {"text": "a b c"}},
    ]
    srv.add_rule(model="coder", times=1, tool_calls=calls)
    srv.add_rule(model="coder", reply=tool_results)
    tools = {"words": {"mcp": {"command": sys.executable, "args": [str(server)]}}}
    await run(spec_of(srv, tools, ["words"]))
    first = next(r for r in srv.requests if r.model == "coder")
    assert sorted(t["function"]["name"] for t in first.body["tools"]) == [
        "words_count",
        "words_reverse",
    ]
    synth = next(r for r in srv.requests if r.model == "synth")
    assert "(tools used: words_reverse, words_count)\nresults: desserts | 3" in synth.system


async def test_mcp_filter_offers_one_tool(model_server: ModelServer, tmp_path: Path) -> None:
    srv = model_server
    server = tmp_path / "words.py"
    server.write_text(MCP_WORDS_SERVER)
    tools = {"words": {"mcp": {"command": sys.executable, "args": [str(server)]}}}
    await run(spec_of(srv, tools, ["words.count"]))
    first = next(r for r in srv.requests if r.model == "coder")
    assert [t["function"]["name"] for t in first.body["tools"]] == ["words_count"]


async def test_router_prompt_lists_each_agents_tools(model_server: ModelServer) -> None:
    srv = model_server
    spec = spec_of(srv, {"add": {"function": "tests.tool_fixtures:add"}}, ["add"])
    spec["models"] |= served_models(srv, "router")
    spec["agents"].append({"name": "writer", "model": "coder", "description": "writes"})
    spec["layers"][0] |= {
        "agents": ["coder", "writer"],
        "routing": {"mode": "router", "model": "router"},
    }
    await run(spec)
    router = next(r for r in srv.requests if r.model == "router")
    assert "- coder: coder (tools: add)\n- writer: writes\n" in router.system + "\n"


def test_spec_validate_check_tools_names_the_lines(tmp_path: Path) -> None:
    from tests.durable_helpers import moa

    server = tmp_path / "words.py"
    server.write_text(MCP_WORDS_SERVER)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "tools:\n"
        f"  words: {{mcp: {{command: {sys.executable}, args: [{server}]}}}}\n"
        "agents:\n"
        "  - name: a\n"
        "    tools: [words.reverse, words.shout]\n"
        "layers: [{agents: [a]}]\n"
    )
    assert moa("spec", "validate", str(spec)).returncode == 0  # no server started
    checked = moa("spec", "validate", str(spec), "--check-tools", check=False)
    assert checked.returncode == 2
    assert (
        f"{spec}:5: agents.0.tools.1: MCP server 'words' has no tool 'shout' "
        "(it has: ['count', 'reverse'])" in checked.stderr
    )


async def test_live_view_shows_the_tools_an_agent_used(
    model_server: ModelServer, sqlite_url: str
) -> None:
    from langgraph_moa.runtime import MoA
    from langgraph_moa.runtime.progress import RunProgress

    srv = model_server
    calls = [{"name": "add", "arguments": {"a": 1, "b": i}} for i in range(2)]
    srv.add_rule(model="coder", times=1, tool_calls=calls)
    srv.add_rule(model="coder", reply=tool_results)
    spec = spec_of(srv, {"add": {"function": "tests.tool_fixtures:add"}}, ["add"])
    view = RunProgress([["coder"]])
    tool_events: list[dict[str, Any]] = []
    notes: list[str] = []

    def feed(mode: str, chunk: Any) -> None:
        view.feed(mode, chunk)
        if mode == "custom":
            tool_events.append(chunk)
            notes.append(view.rows["L1_coder"].note)

    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task", on_event=feed)
    assert result.answer
    # each call is seen while the agent works: started (with its arguments), then done
    assert sorted((e["tool"], e["status"], str(e.get("args"))) for e in tool_events) == [
        ("add", "running", "{'a': 1, 'b': 0}"),
        ("add", "running", "{'a': 1, 'b': 1}"),
        ("add", "success", "None"),
        ("add", "success", "None"),
    ]
    assert all(e["agent"] == "coder" and e["node"] == "L1_coder" for e in tool_events)
    assert {e["call_id"] for e in tool_events if e["status"] == "success"} == {
        e["call_id"] for e in tool_events if e["status"] == "running"
    }
    assert "add running" in notes and any(", 2 tool calls" in n for n in notes), notes
    row = view.rows["L1_coder"]
    assert row.status == "done"
    assert re.fullmatch(r"tools: add x2 \(\d+\.\ds\)", row.note), row.note
    proposal = result.values["proposals"]["1"]["coder"]
    assert 0 <= proposal["tool_seconds"] < 5
    assert result.usage_by_agent["coder"]["tool_calls"] == 2


@pytest.mark.usefixtures("bwrap")
def test_team_preset_with_tools_and_docs(
    model_server: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from tests.durable_helpers import moa

    monkeypatch.setenv("MOA_SEARCH_DIR", str(tmp_path / "indexes"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lsm.txt").write_text("LSM trees batch writes in memtables.\n")
    srv = model_server
    code = {"code": "print(2 ** 100)"}
    srv.add_rule(
        system="coding specialist", times=1, tool_calls=[{"name": "py", "arguments": code}]
    )
    query = {"query": "memtables"}
    srv.add_rule(
        system="research specialist", times=1, tool_calls=[{"name": "docs", "arguments": query}]
    )

    def answer(req: ChatRequest) -> str:
        said = [m["content"] for m in req.messages if m["role"] == "tool"]
        return f"tool said: {said[-1]}" if said else "plain answer"

    srv.add_rule(reply=answer)
    out = moa(
        "run", "How do LSM trees write, and what is 2**100?", "-p", "team", "--tools",
        "--docs", str(docs), "--base-url", srv.base_url, "--model", "m", "--json",
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["status"] == "success"
    synth = next(r for r in srv.requests if "(tools used: py)" in r.system)
    assert (
        "(tools used: py)\ntool said: exit status: 0\nstdout:\n1267650600228229401496703205376"
        in synth.system
    )
    assert (
        "(tools used: docs)\ntool said: lsm.txt:1\nLSM trees batch writes in memtables."
        in synth.system
    )
    assert result["usage"]["by_agent"]["coding"]["tool_calls"] == 1


async def test_fork_after_the_agent_does_not_run_its_tool_again(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langgraph_moa.runtime import MoA
    from langgraph_moa.runtime.api import afork, ahistory

    counter = tmp_path / "calls.txt"
    monkeypatch.setenv("MOA_TOOL_COUNTER", str(counter))
    srv = model_server
    srv.add_rule(
        model="coder", times=1, tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3}}]
    )
    srv.add_rule(model="coder", reply=tool_results)
    spec = spec_of(srv, {"add": {"function": "tests.tool_fixtures:add"}}, ["add"])
    async with MoA(spec, db_url=sqlite_url) as moa:
        await moa.ainvoke("task", thread_id="t")
    rows = await ahistory("t", db_url=sqlite_url)
    before_synth = next(r for r in rows if r["next"] == ["L1_synthesizer"])
    forked = await afork("t", before_synth["checkpoint_id"], db_url=sqlite_url)
    assert forked.status == "success"
    assert counter.read_text() == "add 2 3\n"  # the fork reused the agent's answer
    assert srv.calls("coder") == 2 and srv.calls("synth") == 2
    synth = [r for r in srv.requests if r.model == "synth"][-1]
    assert synth.system.endswith("(tools used: add)\nresults: 5")


async def test_unsandboxed_python_is_noted(model_server: ModelServer) -> None:
    srv = model_server
    call = [{"name": "py", "arguments": {"code": "print(1 + 1)"}}]
    srv.add_rule(model="coder", times=1, tool_calls=call)
    srv.add_rule(model="coder", reply=tool_results)
    tools = {"py": {"builtin": "python", "sandbox": "none", "timeout": 20}}
    graph = compile_graph(load_spec(spec_of(srv, tools, ["py"])), checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t"}}
    await graph.ainvoke({"task": "1+1?"}, config)
    values = (await graph.aget_state(config)).values
    assert values["proposals"]["1"]["coder"]["content"] == "results: exit status: 0\nstdout:\n2\n"
    assert values["notes"] == ["layer 1: coder ran Python without a sandbox (py: sandbox: none)"]


async def test_run_max_tool_calls_is_shared_by_the_agents(model_server: ModelServer) -> None:
    srv = model_server
    two = [{"name": "add", "arguments": {"a": i, "b": 1}} for i in range(2)]
    for model in ("coder", "helper"):
        srv.add_rule(model=model, times=1, tool_calls=two)
        srv.add_rule(model=model, reply=tool_results)
    spec = spec_of(srv, {"add": {"function": "tests.tool_fixtures:add"}}, ["add"])
    spec["models"] |= served_models(srv, "helper")
    spec["agents"].append({"name": "helper", "model": "helper", "tools": ["add"]})
    spec["layers"][0]["agents"] = ["coder", "helper"]
    spec["max_tool_calls"] = 3
    out = await run(spec)
    assert out["usage"]["coder"]["tool_calls"] + out["usage"]["helper"]["tool_calls"] == 3
    finals = [r for r in srv.requests if r.model in ("coder", "helper") and r.call == 2]
    said = [m["content"] for r in finals for m in r.messages if m["role"] == "tool"]
    refused = "not run: the run's tool-call budget (max_tool_calls 3) is spent"
    assert len(said) == 4 and said.count(refused) == 1  # whose: as the tasks interleave
    last = max(finals, key=lambda r: r.started)  # asked once all 3 calls were counted
    assert last.body.get("tool_choice") == "none"


@pytest.fixture
def mcp_http(tmp_path: Path) -> Iterator[str]:
    """The test MCP server over streamable HTTP in a subprocess; yields its URL."""
    import socket
    import subprocess
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = tmp_path / "words_http.py"
    server.write_text(
        MCP_WORDS_SERVER.replace(
            'FastMCP("words")', f'FastMCP("words", host="127.0.0.1", port={port})'
        ).replace("server.run()", 'server.run(transport="streamable-http")')
    )
    proc = subprocess.Popen([sys.executable, str(server)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until it listens
            assert proc.poll() is None, "the MCP server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the MCP server did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


async def test_mcp_streamable_http_tools(model_server: ModelServer, mcp_http: str) -> None:
    srv = model_server
    srv.add_rule(
        model="coder", times=1, tool_calls=[{"name": "web_reverse", "arguments": {"text": "live"}}]
    )
    srv.add_rule(model="coder", reply=tool_results)
    spec = spec_of(srv, {"web": {"mcp": {"url": mcp_http}}}, ["web.reverse"])
    assert await mcp_problems(load_spec(spec)) == []
    await run(spec)
    synth = next(r for r in srv.requests if r.model == "synth")
    assert synth.system.endswith("(tools used: web_reverse)\nresults: evil")


async def test_server_streams_each_tool_call_as_a_custom_event(
    model_server: ModelServer, tmp_path: Path
) -> None:
    """Over the LangGraph Server API, ``stream_mode="custom"`` carries the tool calls of
    the run as they happen (the event log keeps them for a client that reconnects)."""
    from langgraph_sdk import get_client

    from tests.test_server_support import Served

    srv = model_server
    srv.add_rule(
        model="coder", times=1, tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3}}]
    )
    srv.add_rule(model="coder", reply=tool_results)
    spec = spec_of(srv, {"add": {"function": "tests.tool_fixtures:add"}}, ["add"])
    served = Served(tmp_path, [spec], f"sqlite:///{tmp_path / 'moa.sqlite'}").start()
    try:
        client = get_client(url=served.url)
        thread = await client.threads.create()
        parts = [
            (p.event, p.data)
            async for p in client.runs.stream(
                thread["thread_id"], "tooly", input={"task": "add"}, stream_mode=["custom"]
            )
        ]
    finally:
        served.stop()
    custom = [data for event, data in parts if event == "custom"]
    assert [(d["kind"], d["agent"], d["tool"], d["status"]) for d in custom] == [
        ("tool_call", "coder", "add", "running"),
        ("tool_call", "coder", "add", "success"),
    ]
    assert custom[0]["args"] == {"a": 2, "b": 3} and custom[1]["seconds"] >= 0
