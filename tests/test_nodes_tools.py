"""Agents with tools, in-process on fake chat models (tests/nodes_support.py): the tool loop's
messages, the tools offered and withheld, limits per answer and per run, errors and refusals
sent back to the model, the stream events, a non-idempotent call in flight at a crash, and
the tool resolver's tools (names, descriptions, MCP connections). Real LangGraph graphs
(InMemorySaver), no HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import StructuredTool, ToolException
from langgraph.types import Command

from langgraph_moa.nodes import prompts
from langgraph_moa.nodes.tools import (
    PYTHON_DESCRIPTION,
    AgentTools,
    ToolResolver,
    _connection,
    _reason,
    mcp_problems,
)
from langgraph_moa.spec import McpServerSpec, load_spec
from tests.helpers import MCP_WORDS_SERVER
from tests.nodes_support import Call, Script, graph_of, models, thread, usage

TOOLS: dict[str, Any] = {
    "add": {"function": "tests.tool_fixtures:add"},
    "boom": {"function": "tests.tool_fixtures:explode", "description": "Fails."},
    "shout": {"function": "tests.tool_fixtures:shout", "description": "Louder."},
    "slow": {"function": "tests.test_nodes_tools:slow", "idempotent": False},
}


def tool_spec(tools: list[str], **agent: Any) -> Any:
    return load_spec(
        {
            "name": "tooly",
            "models": models("coder", "synth"),
            "tools": {k: TOOLS[k] for k in TOOLS},
            "agents": [{"name": "coder", "model": "coder", "tools": tools, **agent}],
            "layers": [{"agents": ["coder"], "synthesizer": {"model": "synth"}}],
        }
    )


def calls(*pairs: tuple[str, dict[str, Any]]) -> AIMessage:
    return AIMessage(
        "",
        tool_calls=[{"name": n, "args": a, "id": f"c{i}"} for i, (n, a) in enumerate(pairs, 1)],
    )


def results(call: Call) -> str:
    """The agent's final answer: the tool results it got, one per line."""
    return "results: " + " | ".join(m.text for m in call.messages if m.type == "tool")


async def run(spec: Any, script: Script) -> dict[str, Any]:
    graph = graph_of(spec, script)
    await graph.ainvoke({"task": "do it"}, thread())
    return (await graph.aget_state(thread())).values


async def test_a_tool_call_and_its_result_reach_the_model_and_the_synthesizer() -> None:
    script = Script().on("coder", calls(("add", {"a": 2, "b": 3})), results).on("synth", "ok")
    state = await run(tool_spec(["add", "boom"]), script)
    first, second = script.of("coder")
    assert (first.tools, first.tool_choice) == (["add", "boom"], None)
    assert (second.tools, second.tool_choice) == (["add", "boom"], None)
    assert second.roles == ["system", "human", "ai", "tool"]
    tool = second.messages[-1]
    assert isinstance(tool, ToolMessage)
    assert (tool.text, tool.tool_call_id, tool.name, tool.status) == ("5", "c1", "add", "success")
    assert isinstance(tool.additional_kwargs["seconds"], float)
    proposal = state["proposals"]["1"]["coder"]
    assert proposal["content"] == "results: 5"
    assert proposal["tools"] == {"add": 1}
    assert isinstance(proposal["tool_seconds"], float) and proposal["tool_seconds"] >= 0
    two = {k: 2 * v for k, v in usage().items()}
    assert proposal["usage"] == {**two, "calls": 2, "cost": 0.0, "tool_calls": 1}
    assert state["usage"]["coder"] == proposal["usage"]
    assert script.of("synth")[0].system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals="[1] coder\n(tools used: add)\nresults: 5"
    )
    assert state["notes"] == []


async def test_unknown_tools_and_errors_go_back_to_the_model() -> None:
    script = (
        Script()
        .on(
            "coder",
            calls(("nope", {}), ("boom", {"text": "x"}), ("add", {"a": 1, "b": 1})),
            results,
        )
        .on("synth", "ok")
    )
    state = await run(tool_spec(["add", "boom"]), script)
    said = [m for m in script.of("coder")[1].messages if isinstance(m, ToolMessage)]
    assert [(m.text, m.status, m.name, m.tool_call_id) for m in said] == [
        ("error: there is no tool 'nope'; use one of ['add', 'boom']", "error", "nope", "c1"),
        ("error: RuntimeError: cannot handle 'x'", "error", "boom", "c2"),
        ("2", "success", "add", "c3"),
    ]
    proposal = state["proposals"]["1"]["coder"]
    assert proposal["tools"] == {"boom": 1, "add": 1}  # the unknown one never ran
    assert proposal["usage"]["tool_calls"] == 2
    assert script.of("synth")[0].system.endswith(
        "(tools used: boom, add)\n" + results(script.of("coder")[1])
    )


async def test_the_last_step_gets_no_tools_and_an_answer_ends_the_loop() -> None:
    again = calls(("add", {"a": 1, "b": 2}))
    script = Script().on("coder", again, again, again).on("synth", "ok")
    state = await run(tool_spec(["add"], max_steps=3), script)
    coder = script.of("coder")
    assert [c.tool_choice for c in coder] == [None, None, "none"]
    assert [c.tools for c in coder] == [["add"]] * 3
    # the last reply called a tool anyway: its calls are dropped, the loop ends
    proposal = state["proposals"]["1"]["coder"]
    assert proposal["content"] == ""
    assert proposal["tools"] == {"add": 2}
    assert proposal["usage"]["calls"] == 3
    # one step: the first call is already the last
    script = Script().on("coder", "plain").on("synth", "ok")
    await run(tool_spec(["add"], max_steps=1), script)
    assert [c.tool_choice for c in script.of("coder")] == ["none"]


async def test_max_tool_calls_per_answer_refuses_the_rest() -> None:
    script = (
        Script()
        .on("coder", calls(("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})), results)
        .on("synth", "ok")
    )
    state = await run(tool_spec(["add"], max_tool_calls=1), script)
    first, second = script.of("coder")
    assert [first.tool_choice, second.tool_choice] == [None, "none"]
    said = [m for m in second.messages if isinstance(m, ToolMessage)]
    assert [(m.text, m.status) for m in said] == [
        ("2", "success"),
        ("not run: the tool-call limit of this answer is reached", "error"),
    ]
    assert state["proposals"]["1"]["coder"]["tools"] == {"add": 1}
    # a limit of 2 with 2 calls: both run, the next call gets no tools
    script = (
        Script()
        .on("coder", calls(("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})), results)
        .on("synth", "ok")
    )
    state = await run(tool_spec(["add"], max_tool_calls=2), script)
    assert [c.tool_choice for c in script.of("coder")] == [None, "none"]
    assert state["proposals"]["1"]["coder"]["content"] == "results: 2 | 4"


async def test_the_runs_tool_call_budget_is_shared() -> None:
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder", "synth"),
            "tools": {"add": TOOLS["add"]},
            "agents": [{"name": "coder", "model": "coder", "tools": ["add"]}],
            "layers": [{"agents": ["coder"], "synthesizer": {"model": "synth"}}] * 2,
            "max_tool_calls": 2,
        }
    )
    three = calls(*[("add", {"a": i, "b": 0}) for i in range(3)])
    script = Script().on("coder", three, results, "no tools left").on("synth", "ok")
    state = await run(spec, script)
    coder = script.of("coder")
    said = [m.text for m in coder[1].messages if isinstance(m, ToolMessage)]
    assert said == ["0", "1", "not run: the run's tool-call budget (max_tool_calls 2) is spent"]
    assert coder[1].tool_choice == "none"
    # the second layer starts with the budget spent: its first call gets no tools
    assert coder[2].tool_choice == "none"
    assert state["usage"]["coder"]["tool_calls"] == 2


async def test_tool_events_on_the_custom_stream() -> None:
    script = (
        Script()
        .on("coder", calls(("add", {"a": 2, "b": 3}), ("nope", {})), results)
        .on("synth", "ok")
    )
    graph = graph_of(tool_spec(["add"]), script)
    events = [
        e
        async for e in graph.astream({"task": "t"}, thread(), stream_mode="custom", subgraphs=True)
    ]
    seen = [ev for _, ev in events]
    for ev in seen:
        assert isinstance(ev.pop("seconds", 0.0), float)
    base = {"kind": "tool_call", "agent": "coder", "node": "L1_coder"}
    assert sorted(seen, key=lambda ev: (ev["tool"], ev["status"])) == [
        {**base, "tool": "add", "call_id": "c1", "status": "running", "args": {"a": 2, "b": 3}},
        {**base, "tool": "add", "call_id": "c1", "status": "success"},
        {**base, "tool": "nope", "call_id": "c2", "status": "refused"},
    ]


async def test_unconfined_python_is_noted() -> None:
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder", "synth"),
            "tools": {"py": {"builtin": "python", "sandbox": "none"}, "add": TOOLS["add"]},
            "agents": [{"name": "coder", "model": "coder", "tools": ["py", "add"]}],
            "layers": [{"agents": ["coder"], "synthesizer": {"model": "synth"}}],
        }
    )
    script = Script().on("coder", calls(("py", {"code": "print(6 * 7)"})), results)
    state = await run(spec, script)
    assert state["proposals"]["1"]["coder"]["content"] == "results: exit status: 0\nstdout:\n42\n"
    assert state["notes"] == ["layer 1: coder ran Python without a sandbox (py: sandbox: none)"]
    script = Script().on("coder", calls(("add", {"a": 1, "b": 1})), results)
    assert (await run(spec, script))["notes"] == []
    two = spec.model_copy(update={"tools": {**spec.tools, "py2": spec.tools["py"]}})
    two.agents[0] = two.agents[0].model_copy(update={"tools": ["py", "py2", "add"]})
    script = Script().on(
        "coder", calls(("py", {"code": "print(1)"}), ("py2", {"code": "print(2)"})), results
    )
    assert (await run(two, script))["notes"] == [
        "layer 1: coder ran Python without a sandbox (py, py2: sandbox: none)"
    ]


async def test_a_failing_tool_loop_is_a_failed_proposal() -> None:
    script = Script().on("coder", RuntimeError("model down")).on("synth", "ok")
    graph = graph_of(tool_spec(["add"]), script)
    with pytest.raises(Exception, match="0 of 1 agents answered"):
        await graph.ainvoke({"task": "t"}, thread())
    proposal = (await graph.aget_state(thread())).values["proposals"]["1"]["coder"]
    assert (proposal["status"], proposal["error"]) == ("failed", "RuntimeError: model down")
    assert isinstance(proposal["seconds"], float)


async def test_a_non_idempotent_tool_runs_once_in_a_graph_without_a_checkpointer() -> None:
    """No checkpointer: nothing can have started before, the call simply runs."""
    from langgraph_moa.graphs import compile_graph
    from tests.nodes_support import FakeModels

    spec = tool_spec(["add"])
    spec.tools["add"] = spec.tools["add"].model_copy(update={"idempotent": False})
    script = Script().on("coder", calls(("add", {"a": 2, "b": 3})), results).on("synth", "ok")
    graph = compile_graph(spec, checkpointer=None, models=FakeModels(spec, script))
    state = await graph.ainvoke({"task": "t"})
    assert state["proposals"]["1"]["coder"]["content"] == "results: 5"
    assert state["answer"] == "ok"


# -- a non-idempotent call in flight at a crash -----------------------------------------

STARTED: asyncio.Event | None = None
RELEASE: asyncio.Event | None = None
RAN: list[int] = []


async def slow(amount: int) -> str:
    """Charge a card: records the call, then waits until released."""
    RAN.append(amount)
    assert STARTED is not None and RELEASE is not None
    STARTED.set()
    await RELEASE.wait()
    return f"charged {amount}"


@pytest.mark.parametrize("decision", [True, False])
async def test_a_non_idempotent_call_in_flight_asks_before_it_runs_again(decision: bool) -> None:
    global STARTED, RELEASE
    STARTED, RELEASE = asyncio.Event(), asyncio.Event()
    RAN.clear()
    script = Script().on("coder", calls(("slow", {"amount": 7})), results).on("synth", "ok")
    graph = graph_of(tool_spec(["slow"]), script)
    crash = asyncio.ensure_future(graph.ainvoke({"task": "pay"}, thread(), durability="sync"))
    await STARTED.wait()
    crash.cancel()  # the process died with the call in flight
    with pytest.raises(asyncio.CancelledError):
        await crash
    RELEASE.set()
    out = await graph.ainvoke(None, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value == {
        "kind": "tool_call_in_flight",
        "agent": "coder",
        "tool": "slow",
        "args": {"amount": 7},
        "question": "slow may have run before the run stopped and is not idempotent: run it "
        "again? (`moa resume THREAD --approve` runs it; a resume value of false skips it)",
    }
    assert RAN == [7]
    out = await graph.ainvoke(Command(resume=decision), thread())
    proposal = out["proposals"]["1"]["coder"]
    if decision:
        assert RAN == [7, 7]
        assert proposal["content"] == "results: charged 7"
        assert proposal["tools"] == {"slow": 1}
    else:
        assert RAN == [7]
        assert proposal["content"] == (
            "results: not run: a person declined to run it again after a crash"
        )
        assert proposal["tools"] == {}


async def test_a_non_idempotent_call_runs_once_without_a_crash() -> None:
    global STARTED, RELEASE
    STARTED, RELEASE = asyncio.Event(), asyncio.Event()
    RELEASE.set()
    RAN.clear()
    script = Script().on("coder", calls(("slow", {"amount": 3})), results).on("synth", "ok")
    state = await run(tool_spec(["slow"]), script)
    assert RAN == [3]
    assert state["proposals"]["1"]["coder"]["content"] == "results: charged 3"


# -- the tool resolver ------------------------------------------------------------------


async def test_the_resolver_names_and_describes_each_tool() -> None:
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": {
                **TOOLS,
                "plus": {"function": "tests.tool_fixtures:add", "description": "Plus."},
                "py": {"builtin": "python"},
                "py2": {"builtin": "python", "description": "Mine."},
                "docs": {"builtin": "search_files", "root": str(Path(__file__).parent)},
            },
            "agents": [
                {
                    "name": "coder",
                    "model": "coder",
                    "tools": ["add", "shout", "plus", "slow", "py", "py2", "docs"],
                }
            ],
            "layers": [{"agents": ["coder"]}],
        }
    )
    resolver = ToolResolver(spec)
    agent = spec.agent("coder")
    got = await resolver.for_agent(agent)
    assert got.names() == ["add", "shout", "plus", "slow", "py", "py2", "docs"]
    described = {t.name: t.description for t in got.tools}
    assert described["add"].startswith("Add two integers.")
    assert described["shout"] == "Louder."
    assert described["plus"] == "Plus."
    assert described["py"] == PYTHON_DESCRIPTION
    assert described["py2"] == "Mine."
    assert described["docs"] == (
        "Search the files under tests/ for passages matching a query of keywords; returns the "
        "best passages with their file and line."
    )
    assert got.idempotent == {
        "add": True,
        "shout": True,
        "plus": True,
        "slow": False,
        "py": True,
        "py2": True,
        "docs": True,
    }
    assert await got.tools[0].ainvoke({"a": 4, "b": 5}) == 9
    assert await got.tools[1].ainvoke({"text": "hi"}) == "HI"
    # built once per graph
    again = await resolver.for_agent(agent)
    assert [id(t) for t in again.tools] == [id(t) for t in got.tools]
    assert resolver.listing(agent) == "add, shout, plus, slow, py, py2, docs"
    assert AgentTools([]).names() == []


async def test_a_function_tool_takes_its_key_as_name_and_raises_its_tool_errors() -> None:
    """A LangChain tool under another key is renamed to the key (its own description kept);
    a function's ToolException is raised (the tool loop reports it), not turned into a reply."""
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": {
                "yell": {"function": "tests.tool_fixtures:shout"},
                "deny": {"function": "tests.tool_fixtures:deny"},
            },
            "agents": [{"name": "coder", "model": "coder", "tools": ["yell", "deny"]}],
            "layers": [{"agents": ["coder"]}],
        }
    )
    got = await ToolResolver(spec).for_agent(spec.agent("coder"))
    assert got.names() == ["yell", "deny"]
    assert got.tools[0].description == "Upper-case a text."
    assert await got.tools[0].ainvoke({"text": "hi"}) == "HI"
    with pytest.raises(ToolException, match=r"^will not x$"):
        await got.tools[1].ainvoke({"text": "x"})


LIMITS_PROBE = """
import os, resource
cpu, memory = resource.getrlimit(resource.RLIMIT_CPU)[0], resource.getrlimit(resource.RLIMIT_AS)[0]
print(os.getcwd() == "/tmp/work", cpu, memory // 2**20)
print("x" * 9000)
"""


async def test_the_python_tool_runs_with_its_limits_or_the_defaults() -> None:
    """The tool's limits reach the sandbox: CPU seconds = timeout + 1, memory, output
    kept; 20 s, 512 MB and 8000 bytes when unset; ``sandbox: none`` runs outside bwrap."""
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": {
                "py": {"builtin": "python", "sandbox": "none"},
                "small": {
                    "builtin": "python",
                    "sandbox": "none",
                    "timeout": 5,
                    "memory_mb": 256,
                    "max_output": 300,
                },
            },
            "agents": [{"name": "coder", "model": "coder", "tools": ["py", "small"]}],
            "layers": [{"agents": ["coder"]}],
        }
    )
    py, small = (await ToolResolver(spec).for_agent(spec.agent("coder"))).tools
    first = "False 21 512\n"
    assert await py.ainvoke({"code": LIMITS_PROBE}) == (
        f"exit status: 0\nstdout:\n{first}{'x' * (8000 - len(first))}\n"
        f"[output truncated: {len(first) + 9001} bytes, the first 8000 shown]"
    )
    first = "False 6 256\n"
    assert await small.ainvoke({"code": LIMITS_PROBE}) == (
        f"exit status: 0\nstdout:\n{first}{'x' * (300 - len(first))}\n"
        f"[output truncated: {len(first) + 9001} bytes, the first 300 shown]"
    )


async def test_a_function_that_is_not_callable_is_refused() -> None:
    from langgraph_moa.spec import GraphSpec

    # (load_spec refuses it first; a spec built without it reaches the resolver's check)
    spec = GraphSpec.model_validate(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": {"bad": {"function": "tests.tool_fixtures:NOT_A_TOOL"}},
            "agents": [{"name": "coder", "model": "coder", "tools": ["bad"]}],
            "layers": [{"agents": ["coder"]}],
        }
    )
    with pytest.raises(
        TypeError, match=r"tools\.bad\.function: 'tests\.tool_fixtures:NOT_A_TOOL' is not callable"
    ):
        await ToolResolver(spec).for_agent(spec.agent("coder"))


def test_mcp_connections() -> None:
    assert _connection(McpServerSpec(url="http://h:1/mcp")) == {
        "transport": "streamable_http",
        "url": "http://h:1/mcp",
    }
    assert _connection(McpServerSpec(url="http://h:1/mcp", headers={"X": "1"})) == {
        "transport": "streamable_http",
        "url": "http://h:1/mcp",
        "headers": {"X": "1"},
    }
    assert _connection(McpServerSpec(command="srv")) == {
        "transport": "stdio",
        "command": "srv",
        "args": [],
    }
    assert _connection(McpServerSpec(command="srv", args=["-v"], env={"A": "b"}, cwd="/tmp")) == {
        "transport": "stdio",
        "command": "srv",
        "args": ["-v"],
        "env": {"A": "b"},
        "cwd": "/tmp",
    }


def test_reasons_unwrap_task_group_errors() -> None:
    assert _reason(ValueError("bad")) == "ValueError: bad"
    assert _reason(ValueError()) == "ValueError"
    group = ExceptionGroup("tasks", [ExceptionGroup("inner", [OSError("refused")])])
    assert _reason(group) == "OSError: refused"


async def test_mcp_problems_name_the_unreachable_server() -> None:
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": {
                "add": TOOLS["add"],
                "gone": {"mcp": {"url": "http://127.0.0.1:9/mcp"}},
            },
            "agents": [{"name": "coder", "model": "coder", "tools": ["add", "gone.x"]}],
            "layers": [{"agents": ["coder"]}],
        }
    )
    (problem,) = await mcp_problems(spec, timeout=30)
    assert problem.startswith("tools.gone.mcp: cannot list the server's tools: ")
    assert "ConnectError" in problem or "ConnectionError" in problem or "refused" in problem


def test_the_router_lists_each_agents_tools() -> None:
    from langgraph_moa.nodes.router import _roster_line
    from tests.nodes_support import context

    spec = tool_spec(["add", "boom"], description="Does sums.")
    assert _roster_line(context(spec), "coder") == "- coder: Does sums. (tools: add, boom)"
    plain = tool_spec([], role="You add.")
    assert _roster_line(context(plain), "coder") == "- coder: You add."
    assert _roster_line(context(tool_spec([])), "coder") == "- coder: coder"


async def test_the_search_tool_searches_the_default_globs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_SEARCH_DIR", str(tmp_path / "index"))
    root = tmp_path / "docs"
    root.mkdir()
    (root / "notes.md").write_text("intro\nthe zebra crossing\n")
    (root / "data.csv").write_text("zebra,1\n")
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": {"docs": {"builtin": "search_files", "root": str(root)}},
            "agents": [{"name": "coder", "model": "coder", "tools": ["docs"]}],
            "layers": [{"agents": ["coder"]}],
        }
    )
    (tool,) = (await ToolResolver(spec).for_agent(spec.agent("coder"))).tools
    found = await tool.ainvoke({"query": "zebra"})
    assert "notes.md:" in found and "the zebra crossing" in found
    assert "data.csv" not in found
    assert await tool.ainvoke({"query": "giraffe"}) == "no passage under docs/ matches 'giraffe'"
    # the spec's globs replace the default ones
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": {"csv": {"builtin": "search_files", "root": str(root), "globs": ["*.csv"]}},
            "agents": [{"name": "coder", "model": "coder", "tools": ["csv"]}],
            "layers": [{"agents": ["coder"]}],
        }
    )
    (tool,) = (await ToolResolver(spec).for_agent(spec.agent("coder"))).tools
    found = await tool.ainvoke({"query": "zebra"})
    assert "data.csv:" in found and "notes.md" not in found


async def test_a_structured_reply_is_recorded_with_its_parsed_object() -> None:
    from langgraph_moa.nodes._calls import CALLS_KEY
    from tests.test_nodes_runs import router_spec
    from tests.test_nodes_units import Source

    plan = {"plan": [{"agent": "a", "subtask": "add"}]}
    call = AIMessage("", tool_calls=[{"name": "Plan", "args": plan, "id": "c1"}])
    script = Script().on("router", call).on("synth", "done")
    source = Source(seq=0)
    graph = graph_of(router_spec(structured_output=True), script)
    await graph.ainvoke({"task": "T"}, {"configurable": {"thread_id": "t", CALLS_KEY: source}})
    (row,) = [r for r in source.rows if r["node"] == "L1_router"]
    assert row["kind"] == "router"
    assert row["response"]["parsed"] == plan
    assert row["response"]["parsing_error"] is None
    # a reply that does not match the schema: no object, the error as text
    wrong = AIMessage("", tool_calls=[{"name": "Plan", "args": {"plan": 3}, "id": "c2"}])
    script = Script().on("router", wrong).on("synth", "done")
    source = Source(seq=0)
    graph = graph_of(router_spec(structured_output=True), script)
    await graph.ainvoke({"task": "T"}, {"configurable": {"thread_id": "t", CALLS_KEY: source}})
    first = next(r for r in source.rows if r["node"] == "L1_router")
    assert first["response"]["parsed"] is None
    assert "validation error for Plan" in first["response"]["parsing_error"]


# -- exact seconds, errors a tool reports itself, calls without an id ----------------------


class Clock:
    """The tool loop's clock in these tests (``toolloop.time``): it moves only when a tool
    takes time, so every ``seconds`` the loop reports is exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


CLOCK = Clock()


async def take(seconds: float) -> str:
    """Take ``seconds`` on the test clock."""
    CLOCK.now += seconds
    return f"took {seconds}"


async def take_and_fail(seconds: float) -> str:
    """Take ``seconds`` on the test clock, then fail."""
    CLOCK.now += seconds
    raise ValueError(f"gave up after {seconds}")


async def _refuse(text: str) -> str:
    CLOCK.now += 0.25
    raise ToolException(f"will not {text}")


# a tool that reports its error itself: a ToolMessage with status "error", no exception
REFUSE = StructuredTool.from_function(
    coroutine=_refuse, name="refuse", description="Refuses.", handle_tool_error=True
)

CLOCKED: dict[str, Any] = {
    "take": {"function": "tests.test_nodes_tools:take"},
    "take_and_fail": {"function": "tests.test_nodes_tools:take_and_fail"},
    "refuse": {"function": "tests.test_nodes_tools:REFUSE"},
    "add": TOOLS["add"],
}


def clocked_spec(**agent: Any) -> Any:
    return load_spec(
        {
            "name": "tooly",
            "models": models("coder", "synth"),
            "tools": CLOCKED,
            "agents": [{"name": "coder", "model": "coder", "tools": list(CLOCKED), **agent}],
            "layers": [{"agents": ["coder"], "synthesizer": {"model": "synth"}}],
        }
    )


def one(name: str, args: dict[str, Any], call_id: str | None) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id}])


async def test_tool_seconds_errors_and_calls_without_an_id_are_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One call per step (the clock is shared): each tool message, stream event and the
    proposal carry the seconds the call took, rounded to ms; refused calls take 0.0."""
    from langgraph_moa.nodes import agent, toolloop

    monkeypatch.setattr(toolloop, "time", CLOCK)
    monkeypatch.setattr(agent, "time", CLOCK)  # the proposal's seconds too
    no_id = AIMessage(
        "",
        tool_calls=[
            {"name": "add", "args": {"a": 2, "b": 3}, "id": None},
            {"name": "nope", "args": {}, "id": "n1"},
        ],
    )
    script = (
        Script()
        .on(
            "coder",
            one("take", {"seconds": 1.23456}, "t1"),
            one("take_and_fail", {"seconds": 0.5}, "f1"),
            one("refuse", {"text": "x"}, "r1"),
            no_id,
            results,
        )
        .on("synth", "ok")
    )
    graph = graph_of(clocked_spec(), script)
    events = [
        ev
        async for _, ev in graph.astream(
            {"task": "t"}, thread(), stream_mode="custom", subgraphs=True
        )
    ]
    said = [m for m in script.of("coder")[-1].messages if isinstance(m, ToolMessage)]
    assert [
        (m.text, m.status, m.name, m.tool_call_id, m.additional_kwargs) for m in said
    ] == [
        ("took 1.23456", "success", "take", "t1", {"seconds": 1.235}),
        ("error: ValueError: gave up after 0.5", "error", "take_and_fail", "f1", {"seconds": 0.5}),
        ("will not x", "error", "refuse", "r1", {"seconds": 0.25}),
        ("5", "success", "add", "", {"seconds": 0.0}),  # no id: the tool's raw value
        ("error: there is no tool 'nope'; use one of ['take', 'take_and_fail', 'refuse', 'add']",
         "error", "nope", "n1", {}),
    ]  # fmt: skip
    base = {"kind": "tool_call", "agent": "coder", "node": "L1_coder"}
    done = [{k: ev[k] for k in ("tool", "call_id", "status", "seconds")} for ev in events
            if ev["status"] != "running"]  # fmt: skip
    assert sorted(done, key=lambda ev: ev["tool"]) == [
        {"tool": "add", "call_id": "", "status": "success", "seconds": 0.0},
        {"tool": "nope", "call_id": "n1", "status": "refused", "seconds": 0.0},
        {"tool": "refuse", "call_id": "r1", "status": "error", "seconds": 0.25},
        {"tool": "take", "call_id": "t1", "status": "success", "seconds": 1.235},
        {"tool": "take_and_fail", "call_id": "f1", "status": "error", "seconds": 0.5},
    ]
    assert all(ev.items() >= base.items() for ev in events)
    running = [ev for ev in events if ev["status"] == "running"]
    assert [(ev["tool"], ev["args"], "seconds" in ev) for ev in running] == [
        ("take", {"seconds": 1.23456}, False),
        ("take_and_fail", {"seconds": 0.5}, False),
        ("refuse", {"text": "x"}, False),
        ("add", {"a": 2, "b": 3}, False),
    ]
    proposal = (await graph.aget_state(thread())).values["proposals"]["1"]["coder"]
    assert proposal["tool_seconds"] == 1.985
    assert proposal["seconds"] == 1.985  # the model calls take no time on this clock
    assert proposal["tools"] == {"take": 1, "take_and_fail": 1, "refuse": 1, "add": 1}
    assert proposal["usage"]["tool_calls"] == 4
    assert proposal["content"] == results(script.of("coder")[-1])


async def test_a_failed_tool_agent_reports_its_seconds_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from langgraph_moa.nodes import agent, toolloop
    from langgraph_moa.nodes.synthesizer import QuorumError

    monkeypatch.setattr(toolloop, "time", CLOCK)
    monkeypatch.setattr(agent, "time", CLOCK)
    script = (
        Script()
        .on("coder", one("take", {"seconds": 0.12345}, "t1"), RuntimeError("model down"))
        .on("synth", "done")
    )
    graph = graph_of(clocked_spec(), script)
    with (
        caplog.at_level(logging.WARNING, logger="langgraph_moa.nodes.agent"),
        pytest.raises(QuorumError, match="coder failed"),  # the only agent of the layer
    ):
        await graph.ainvoke({"task": "T"}, thread())
    proposal = (await graph.aget_state(thread())).values["proposals"]["1"]["coder"]
    assert (proposal["status"], proposal["error"], proposal["seconds"]) == (
        "failed",
        "RuntimeError: model down",
        0.123,
    )
    assert "agent coder (layer 1) failed: model down" in caplog.messages


async def test_a_tool_agent_reports_to_its_layer_gate(caplog: pytest.LogCaptureFixture) -> None:
    """An answer counts toward the layer's quorum, a failure does not."""
    import logging

    from langgraph_moa.nodes._quorum import LayerGate
    from langgraph_moa.nodes.agent import make_agent_runner
    from langgraph_moa.nodes.budget import Budget, Ledger
    from tests.nodes_support import context

    for answer, status, answered in [("fine", "ok", 1), (RuntimeError("down"), "failed", 0)]:
        script = Script().on("coder", answer)
        gate = LayerGate(
            layer=1, needed=1, grace=None, timeout=None, ledger=Ledger(Budget()), run_id="r"
        )
        run = make_agent_runner(context(clocked_spec(), script), "coder", 1)
        update = await run({"task": "T", "layer": 1}, {}, gate)
        assert update["proposals"]["1"]["coder"]["status"] == status
        assert gate.answered == answered
    # a layer already cut: a missing proposal, logged
    gate = LayerGate(
        layer=1, needed=1, grace=None, timeout=None, ledger=Ledger(Budget()), run_id="r"
    )
    gate.cut("layer closed")
    run = make_agent_runner(context(clocked_spec(), Script()), "coder", 1)
    with caplog.at_level(logging.WARNING, logger="langgraph_moa.nodes.agent"):
        update = await run({"task": "T", "layer": 1}, {}, gate)
    proposal = update["proposals"]["1"]["coder"]
    assert (proposal["status"], proposal["error"]) == ("missing", "layer closed")
    assert "agent coder (layer 1) cut: layer closed" in caplog.messages


async def test_only_a_non_idempotent_call_writes_a_started_record() -> None:
    """The 'started' record is a pending write of the non-idempotent call's own task in the
    checkpointer; an idempotent call writes none."""
    from langgraph.checkpoint.memory import InMemorySaver

    from langgraph_moa.nodes.toolloop import STARTED as MARK

    global STARTED, RELEASE
    STARTED, RELEASE = asyncio.Event(), asyncio.Event()
    RELEASE.set()
    RAN.clear()
    script = (
        Script()
        .on("coder", calls(("add", {"a": 1, "b": 2}), ("slow", {"amount": 4})), results)
        .on("synth", "ok")
    )
    saver = InMemorySaver()
    graph = graph_of(tool_spec(["add", "slow"]), script, checkpointer=saver)
    await graph.ainvoke({"task": "t"}, thread())
    assert (await graph.aget_state(thread())).values["proposals"]["1"]["coder"]["content"] == (
        "results: 3 | charged 4"
    )
    marks = [
        (t.config["configurable"]["checkpoint_ns"], task, value)
        async for t in saver.alist(thread())
        for task, channel, value in t.pending_writes or []
        if channel == MARK
    ]
    assert len(marks) == 1
    ns, task, value = marks[0]
    assert ns.startswith("L1_coder:") and "|" not in ns  # the tool loop's own checkpoint
    assert task.endswith(":started") and value is True


async def test_the_loops_calls_in_the_ledger_and_the_models_settings() -> None:
    from langgraph_moa.nodes._calls import CALLS_KEY
    from tests.test_nodes_units import Source

    source = Source(seq=0)
    script = Script().on("coder", calls(("add", {"a": 1, "b": 2})), results).on("synth", "ok")
    spec = tool_spec(["add"], temperature=0.3, max_tokens=77, max_steps=2)
    graph = graph_of(spec, script)
    await graph.ainvoke({"task": "t"}, {"configurable": {"thread_id": "t", CALLS_KEY: source}})
    rows = [r for r in source.rows if r["node"] == "L1_coder"]
    assert [(r["kind"], r["model"], r["status"]) for r in rows] == [
        ("tool_step", "coder", "ok")
    ] * 2
    assert [
        {k: r["params"][k] for k in ("temperature", "max_tokens", "tool_choice")} for r in rows
    ] == [
        {"temperature": 0.3, "max_tokens": 77, "tool_choice": None},
        {"temperature": 0.3, "max_tokens": 77, "tool_choice": "none"},
    ]
    assert [t["function"]["name"] for t in rows[0]["params"]["tools"]] == ["add"]
    assert [m["role"] for m in rows[1]["messages"]] == ["system", "human", "ai", "tool"]
    assert rows[1]["messages"][-1]["content"] == "3"
    assert [(c.temperature, c.max_tokens) for c in script.of("coder")] == [(0.3, 77)] * 2


async def test_a_tool_agent_over_budget_resumes_with_the_approved_budget() -> None:
    """The budget a resume approves holds for every model call of the loop, not only the
    first; the spec's budget still holds for the synthesizer."""
    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder", "synth"),
            "tools": {"add": TOOLS["add"]},
            "agents": [{"name": "coder", "model": "coder", "tools": ["add"]}],
            "layers": [{"agents": ["coder"], "synthesizer": {"model": "synth"}}],
            "max_total_tokens": 20,
        }
    )
    script = Script().on("coder", calls(("add", {"a": 1, "b": 2})), results).on("synth", "ok")
    graph = graph_of(spec, script)
    out = await graph.ainvoke({"task": "t"}, thread())
    (intr,) = out["__interrupt__"]
    assert (intr.value["node"], intr.value["used"]) == (
        "L1_coder",
        {"total_tokens": 0, "cost": 0.0},
    )
    assert script.calls == []
    out = await graph.ainvoke(Command(resume=True), thread())
    assert [c.model for c in script.calls] == ["coder", "coder"]
    (intr,) = out["__interrupt__"]
    assert (intr.value["node"], intr.value["used"]) == (
        "L1_synthesizer",
        {"total_tokens": 30, "cost": 0.0},
    )
    out = await graph.ainvoke(Command(resume=True), thread())
    assert out["answer"] == "ok"
    assert out["proposals"]["1"]["coder"]["content"] == "results: 3"


async def test_the_loop_outside_a_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Called outside a graph (no stream to write to, no checkpointer): the loop's result."""
    from langchain_core.messages import HumanMessage

    from langgraph_moa.nodes import toolloop
    from langgraph_moa.nodes.budget import Budget, Ledger
    from tests.nodes_support import context

    monkeypatch.setattr(toolloop, "time", CLOCK)
    spec = clocked_spec()
    script = Script().on("coder", one("take", {"seconds": 0.0125}, "t1"), results)
    ctx = context(spec, script)
    loop = toolloop.ToolLoop(
        ctx, spec.agent("coder"), ctx.tools, node="L1_coder", temperature=0.0, max_tokens=64
    )
    ledger = Ledger(Budget())
    got = await loop.ainvoke([HumanMessage("go")], {}, ledger)
    two = {k: 2 * v for k, v in usage().items()}
    assert got == toolloop.LoopResult(
        text="results: took 0.0125",
        usage={**two, "calls": 2, "cost": 0.0, "tool_calls": 1},
        tools={"take": 1},
        tool_seconds=0.013,
    )
    assert (ledger.tokens, ledger.tool_calls) == (30, 1)
    # an answer without tools: nothing used, no seconds
    script = Script().on("coder", "plain")
    ctx = context(spec, script)
    loop = toolloop.ToolLoop(
        ctx, spec.agent("coder"), ctx.tools, node="L1_coder", temperature=0.0, max_tokens=64
    )
    got = await loop.ainvoke([HumanMessage("go")], {}, Ledger(Budget()))
    assert got == toolloop.LoopResult(
        text="plain", usage={**usage(), "calls": 1, "cost": 0.0, "tool_calls": 0}, tools={}
    )
    assert got.tool_seconds == 0.0 and isinstance(got.tool_seconds, float)


async def test_the_per_answer_limit_counts_the_calls_of_earlier_steps() -> None:
    script = (
        Script()
        .on(
            "coder",
            calls(("add", {"a": 1, "b": 1})),
            calls(("add", {"a": 2, "b": 2}), ("add", {"a": 3, "b": 3})),
            results,
        )
        .on("synth", "ok")
    )
    state = await run(tool_spec(["add"], max_tool_calls=2), script)
    coder = script.of("coder")
    assert [c.tool_choice for c in coder] == [None, None, "none"]
    said = [(m.text, m.status) for m in coder[2].messages if isinstance(m, ToolMessage)]
    assert said == [
        ("2", "success"),
        ("4", "success"),
        ("not run: the tool-call limit of this answer is reached", "error"),
    ]
    assert state["proposals"]["1"]["coder"]["tools"] == {"add": 2}


async def test_a_call_in_flight_is_found_when_the_moa_graph_is_a_subgraph() -> None:
    """The MoA graph as a node of a parent graph: the started record is looked up in the
    tool loop's own checkpoint namespace (three levels deep), so the resume still asks."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, StateGraph

    from langgraph_moa.graphs import compile_graph
    from langgraph_moa.state import MoAState
    from tests.nodes_support import FakeModels

    global STARTED, RELEASE
    STARTED, RELEASE = asyncio.Event(), asyncio.Event()
    RAN.clear()
    spec = tool_spec(["slow"])
    script = Script().on("coder", calls(("slow", {"amount": 9})), results).on("synth", "ok")
    moa = compile_graph(spec, checkpointer=None, models=FakeModels(spec, script))
    builder = StateGraph(MoAState)
    builder.add_node("moa", moa)
    builder.add_edge(START, "moa")
    parent = builder.compile(checkpointer=InMemorySaver())
    crash = asyncio.ensure_future(parent.ainvoke({"task": "pay"}, thread(), durability="sync"))
    await STARTED.wait()
    crash.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crash
    RELEASE.set()
    out = await parent.ainvoke(None, thread())
    (intr,) = out["__interrupt__"]
    assert (intr.value["kind"], intr.value["tool"], intr.value["args"]) == (
        "tool_call_in_flight",
        "slow",
        {"amount": 9},
    )
    assert RAN == [9]
    out = await parent.ainvoke(Command(resume=False), thread())
    assert RAN == [9]
    assert out["proposals"]["1"]["coder"]["content"] == (
        "results: not run: a person declined to run it again after a crash"
    )


def test_the_loops_shape_and_unconfined_python() -> None:
    """The loop's graph as LangGraph draws it (model -> tool -> model, or the end; the path
    map changes no run, only the drawing), its name in traces, and which of its tools are
    Python without a sandbox."""
    from langgraph_moa.nodes.toolloop import ToolLoop
    from tests.nodes_support import context

    spec = load_spec(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": {
                "free": {"builtin": "python", "sandbox": "none"},
                "boxed": {"builtin": "python"},
                "add": TOOLS["add"],
                "srv": {"mcp": {"url": "http://127.0.0.1:9/mcp"}},
            },
            "agents": [
                {"name": "coder", "model": "coder", "tools": ["free", "boxed", "add", "srv.x"]}
            ],
            "layers": [{"agents": ["coder"]}],
        }
    )
    ctx = context(spec)
    loop = ToolLoop(
        ctx, spec.agent("coder"), ctx.tools, node="L2_coder", temperature=0.0, max_tokens=64
    )
    assert loop.unconfined == {"free"}
    assert loop.graph.name == "L2_coder_tools"
    drawn = loop.graph.get_graph()
    assert sorted((e.source, e.target, e.conditional) for e in drawn.edges) == [
        ("__start__", "model", False),
        ("model", "__end__", True),
        ("model", "tool", True),
        ("tool", "model", False),
    ]


# -- MCP servers: the tools they list, a mute one, the missing extra ----------------------


@pytest.fixture
def server_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stdio servers' stderr goes to a file: ``mcp`` binds ``sys.stderr`` as a default
    when first imported, a stream that is closed by then in mutmut's forked test runs."""
    from mcp.client import stdio

    client = stdio.stdio_client.__wrapped__
    assert len(client.__defaults__) == 1, "mcp's stdio_client(server, errlog=...) changed"
    with (tmp_path / "server-stderr.log").open("w") as log:
        monkeypatch.setattr(client, "__defaults__", (log,))
        yield


def mcp_spec(tools: dict[str, Any], refs: list[str]) -> Any:
    return load_spec(
        {
            "name": "tooly",
            "models": models("coder"),
            "tools": tools,
            "agents": [{"name": "coder", "model": "coder", "tools": refs}],
            "layers": [{"agents": ["coder"]}],
        }
    )


@pytest.mark.usefixtures("server_stderr")
async def test_mcp_problems_name_the_tools_a_server_lacks(tmp_path: Path) -> None:
    """A real MCP stdio server: the refs it lacks (a tool name may contain dots), not the
    ones it has, nor refs of other tools."""
    import sys

    server = tmp_path / "words.py"
    server.write_text(MCP_WORDS_SERVER)
    spec = mcp_spec(
        {"words": {"mcp": {"command": sys.executable, "args": [str(server)]}}, "add": TOOLS["add"]},
        ["add", "words.reverse", "words.shout", "words.count.all", "words.count"],
    )
    assert await mcp_problems(spec, timeout=30) == [
        "agents.0.tools.2: MCP server 'words' has no tool 'shout' (it has: ['count', 'reverse'])",
        "agents.0.tools.3: MCP server 'words' has no tool 'count.all' "
        "(it has: ['count', 'reverse'])",
    ]


@pytest.mark.usefixtures("server_stderr")
async def test_the_resolver_gives_an_agent_the_mcp_tools_it_names(tmp_path: Path) -> None:
    """A real MCP stdio server: ``words.count`` is one tool, ``words`` all of them (each
    once, named ``words_<tool>``); the server is listed once per graph."""
    import sys

    server = tmp_path / "words.py"
    server.write_text(MCP_WORDS_SERVER)
    tools = {
        "words": {"mcp": {"command": sys.executable, "args": [str(server)]}},
        "add": TOOLS["add"],
    }
    spec = mcp_spec(tools, ["words.count", "add", "words"])
    resolver = ToolResolver(spec)
    got = await resolver.for_agent(spec.agent("coder"))
    assert got.names() == ["words_count", "add", "words_reverse"]
    assert got.idempotent == {"words_count": True, "add": True, "words_reverse": True}
    assert sorted(resolver._mcp["words"]) == ["words_count", "words_reverse"]
    result = await got.tools[2].ainvoke({"text": "abc"})
    assert [(part["type"], part["text"]) for part in result] == [("text", "cba")]
    again = await resolver.for_agent(spec.agent("coder"))
    assert [id(t) for t in again.tools] == [id(t) for t in got.tools]
    lacking = mcp_spec(tools, ["words.shout"])
    with pytest.raises(LookupError) as err:
        await ToolResolver(lacking).for_agent(lacking.agent("coder"))
    assert str(err.value) == "MCP server 'words' has no tool 'shout' (it has: ['count', 'reverse'])"


@pytest.mark.usefixtures("server_stderr")
async def test_mcp_problems_give_up_on_a_mute_server_after_the_timeout() -> None:
    """A server that never answers: the listing is given up after ``timeout`` (the outer
    bound only guards the test)."""
    import sys

    mute = {"command": sys.executable, "args": ["-c", "import sys; sys.stdin.read()"]}
    spec = mcp_spec({"mute": {"mcp": mute}}, ["mute.x"])
    problems = await asyncio.wait_for(mcp_problems(spec, timeout=0.2), 10)
    assert problems == ["tools.mute.mcp: cannot list the server's tools: TimeoutError"]


async def test_mcp_tools_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from langgraph_moa.nodes.tools import _mcp_tools

    monkeypatch.setitem(sys.modules, "langchain_mcp_adapters.client", None)  # not installed
    message = "MCP tools need the `tools` extra: pip install 'langgraph-moa[tools]'"
    with pytest.raises(ImportError) as caught:
        await _mcp_tools("srv", McpServerSpec(command="srv"))
    assert str(caught.value) == message
    spec = mcp_spec({"srv": {"mcp": {"command": "srv"}}}, ["srv.x"])
    assert await mcp_problems(spec) == [
        f"tools.srv.mcp: cannot list the server's tools: ImportError: {message}"
    ]
