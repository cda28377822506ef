"""The nodes run in-process on fake chat models (tests/nodes_support.py): the exact prompts
the agent, router and synthesizer nodes send, the proposals, plans, answers, usage, notes,
aggregation records and attribution they write, their budget interrupts and resumes. Real
specs and real LangGraph graphs (InMemorySaver), no HTTP: fast enough for the mutation run
of nodes/ (bench/mutation.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.types import Command

from langgraph_moa.nodes import prompts
from langgraph_moa.nodes._calls import call_seed
from langgraph_moa.nodes._quorum import LayerGate
from langgraph_moa.nodes.agent import agent_messages, approved_budget, make_agent_runner
from langgraph_moa.nodes.budget import Budget, BudgetExceeded, Ledger
from langgraph_moa.nodes.router import agent_inputs, make_fan_out
from langgraph_moa.state import AgentInput, MoAState, Proposal
from tests.nodes_support import Call, Script, context, graph_of, spec_of, thread, usage

# -- helpers -----------------------------------------------------------------------------


async def run(spec: Any, script: Script, task: str = "T", name: str = "t") -> dict[str, Any]:
    """Run ``task`` to its end (or interrupt); the whole state of the thread."""
    graph = graph_of(spec, script)
    await graph.ainvoke({"task": task}, thread(name))
    return (await graph.aget_state(thread(name))).values


def gate(needed: int = 1, ledger: Ledger | None = None, **kwargs: Any) -> LayerGate:
    return LayerGate(
        layer=1,
        needed=needed,
        grace=kwargs.get("grace"),
        timeout=kwargs.get("timeout"),
        ledger=ledger or Ledger(Budget()),
        run_id="run-1",
    )


def payload(**kw: Any) -> AgentInput:
    base: dict[str, Any] = {
        "task": "T",
        "subtask": "T",
        "layer": 1,
        "previous_synthesis": None,
        "previous_proposals": [],
    }
    return AgentInput(**{**base, **kw})  # type: ignore[typeddict-item]


def prop(agent: str, content: str, status: str = "ok", subtask: str = "T") -> Proposal:
    return Proposal(agent=agent, layer=1, subtask=subtask, content=content, status=status)  # type: ignore[typeddict-item]


# -- the agent's prompt -----------------------------------------------------------------


def budget_stop(node: str, used: int, need: int, limit: int) -> dict[str, Any]:
    """The interrupt of a call by ``node`` that ``limit`` tokens cannot take."""
    return {
        "kind": "budget",
        "node": node,
        "reason": f"{node}: token budget: {used} used + up to {need} for this call > "
        f"max_total_tokens {limit}; resume with a larger budget",
        "used": {"total_tokens": used, "cost": 0.0},
        "next_call": {"total_tokens": need, "cost": 0.0},
        "budget": {"max_total_tokens": limit, "max_cost": None},
    }


def test_agent_prompt_default_role_task_and_subtask() -> None:
    spec = spec_of(["a"])
    agent = spec.agent("a")
    msgs = agent_messages(agent, payload())
    assert [m.type for m in msgs] == ["system", "human"]
    assert msgs[0].text == prompts.AGENT_SYSTEM.format(name="a", description="")
    assert msgs[0].text == (
        "You are a, one expert in a team of agents working on the same task. "
        "Answer the task you are given directly and concisely."
    )
    assert msgs[1].text == "T"
    # a subtask other than the task: both, labelled
    msgs = agent_messages(agent, payload(subtask="part one"))
    assert msgs[1].text == "Task: T\n\nYour part: part one"
    # no subtask at all: the task
    assert agent_messages(agent, payload(subtask=""))[1].text == "T"


def test_agent_prompt_description_role_and_references() -> None:
    spec = spec_of(
        ["a", "b"],
        agents=[
            {"name": "a", "model": "a", "description": "  Good at sums.  "},
            {"name": "b", "model": "b", "role": "You are B."},
        ],
    )
    a, b = spec.agent("a"), spec.agent("b")
    assert agent_messages(a, payload())[0].text == (
        "You are a, one expert in a team of agents working on the same task. Good at sums. "
        "Answer the task you are given directly and concisely."
    )
    assert agent_messages(b, payload())[0].text == "You are B."
    # the previous layer's proposals: numbered as listed, failed ones left out
    previous = [
        prop("a", "  first  ", subtask="sub a"),
        prop("b", "lost", status="failed"),
        prop("c", "third", subtask=""),
    ]
    system = agent_messages(b, payload(previous_proposals=previous))[0].text
    assert system == (
        "You are B.\n\n"
        "Other agents answered in the previous round. Use their work critically: keep what "
        "is right, fix what is wrong, and add what is missing.\n\n"
        "1. [a] (subtask: sub a)\nfirst\n\n3. [c]\nthird"
    )
    # a previous synthesis replaces them
    system = agent_messages(b, payload(previous_proposals=previous, previous_synthesis=" S "))[0]
    assert system.text.endswith("add what is missing.\n\n1. [synthesis]\nS")
    assert "first" not in system.text


def test_agent_prompt_history() -> None:
    agent = spec_of(["a"]).agent("a")
    turns = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": ""}]
    msgs = agent_messages(agent, payload(history=turns, history_dropped=2))
    assert [(m.type, m.text) for m in msgs[1:]] == [
        ("human", "q1"),
        ("ai", "a1"),
        ("human", "q2"),
        ("human", "T"),
    ]
    assert msgs[0].text.endswith(
        "\n\nThis task is the latest turn of a conversation. The 2 oldest of its 4 earlier "
        "turns were left out to fit the context window; the most recent ones follow."
    )


# -- one agent's attempt ----------------------------------------------------------------


async def test_agent_runner_writes_its_proposal_and_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from langgraph_moa.nodes import agent

    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(agent, "time", SimpleNamespace(monotonic=lambda: clock.now))

    def answer(call: Call) -> str:
        clock.now += 0.45678  # the call took this long on the agent's clock
        return "the answer"

    spec = spec_of(
        ["a"],
        models={
            "a": {
                "model": "model-a",
                "base_url": "http://127.0.0.1:9/v1",
                "input_cost_per_mtok": 2.0,
                "output_cost_per_mtok": 4.0,
            }
        },
        defaults={"temperature": 0.3, "max_tokens": 99},
    )
    script = Script().on("a", answer)
    g = gate()
    update = await make_agent_runner(context(spec, script), "a", 1)(payload(subtask="sub"), {}, g)
    proposal = update["proposals"]["1"]["a"]
    assert proposal.pop("seconds") == 0.457
    want_usage = {**usage(), "calls": 1, "cost": (10 * 2.0 + 5 * 4.0) / 1e6}
    assert proposal == {
        "agent": "a",
        "layer": 1,
        "subtask": "sub",
        "content": "the answer",
        "status": "ok",
        "model": "model-a",
        "run_id": "run-1",
        "usage": want_usage,
    }
    assert update["usage"] == {"a": want_usage}
    assert "notes" not in update
    assert g.answered == 1
    (call,) = script.calls
    assert (call.temperature, call.max_tokens, call.seed) == (0.3, 99, None)
    assert call.human == "Task: T\n\nYour part: sub"


async def test_agent_runner_own_settings_seed_and_history_note() -> None:
    spec = spec_of(
        ["a"],
        agents=[{"name": "a", "model": "a", "temperature": 1.1, "max_tokens": 7}],
        defaults={"seed": 5},
    )
    script = Script()
    turns = [{"question": "q1", "answer": "a1"}]
    update = await make_agent_runner(context(spec, script), "a", 2)(
        payload(history=turns, history_dropped=3, layer=2), {}, gate()
    )
    (call,) = script.calls
    assert (call.temperature, call.max_tokens) == (1.1, 7)
    assert call.seed == call_seed(5, "L2_a", call.messages)
    assert update["notes"] == ["layer 2: a saw 1 of 4 earlier turns (context window)"]
    assert update["proposals"]["2"]["a"]["subtask"] == "T"
    assert update["proposals"]["2"]["a"]["layer"] == 2


async def test_agent_runner_subtask_defaults_to_the_task() -> None:
    update = await make_agent_runner(context(spec_of(["a"])), "a", 1)(
        payload(subtask=""), {}, gate()
    )
    assert update["proposals"]["1"]["a"]["subtask"] == "T"


async def test_a_failed_call_is_a_failed_proposal(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from langgraph_moa.nodes import agent

    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(agent, "time", SimpleNamespace(monotonic=lambda: clock.now))

    def fail(call: Call) -> str:
        clock.now += 0.12345  # the failed call took this long on the agent's clock
        raise RuntimeError("model down")

    script = Script().on("a", fail)
    g = gate()
    update = await make_agent_runner(context(spec_of(["a"]), script), "a", 1)(payload(), {}, g)
    assert "agent a (layer 1) failed: model down" in caplog.messages
    proposal = update["proposals"]["1"]["a"]
    assert proposal["status"] == "failed"
    assert proposal["error"] == "RuntimeError: model down"
    assert proposal["content"] == ""
    assert proposal["seconds"] == 0.123
    assert "usage" not in update and "usage" not in proposal
    assert g.answered == 0


async def test_a_cut_call_is_a_missing_proposal_and_budget_errors_pass_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = context(spec_of(["a"]))
    g = gate()
    g.cut("layer closed")
    update = await make_agent_runner(ctx, "a", 1)(payload(), {}, g)
    assert "agent a (layer 1) cut: layer closed" in caplog.messages
    proposal = update["proposals"]["1"]["a"]
    assert (proposal["status"], proposal["error"], proposal["content"]) == (
        "missing",
        "layer closed",
        "",
    )
    assert "seconds" not in proposal and "usage" not in update
    tight = gate(ledger=Ledger(Budget(max_total_tokens=5)))
    with pytest.raises(BudgetExceeded) as err:
        await make_agent_runner(ctx, "a", 1)(payload(), {}, tight)
    assert err.value.info["node"] == "L1_a"
    # an approved budget lets the call go ahead
    update = await make_agent_runner(ctx, "a", 1)(payload(), {}, tight, Budget())
    assert update["proposals"]["1"]["a"]["status"] == "ok"


def test_approved_budget() -> None:
    ledger = Ledger(Budget(max_total_tokens=10, max_cost=1.0))
    assert approved_budget(True, ledger) == Budget()
    assert approved_budget(None, ledger) == Budget()
    assert approved_budget({"max_total_tokens": 50}, ledger) == Budget(50, 1.0)
    assert approved_budget({"budget": {"max_cost": None}}, ledger) == Budget(10, None)


# -- the agent node in a graph: budget interrupt, grace period --------------------------


async def test_agent_over_budget_pauses_the_run_and_a_larger_budget_resumes_it() -> None:
    spec = spec_of(["a"], max_total_tokens=20)
    script = Script().on("synth", "final")
    graph = graph_of(spec, script)
    out = await graph.ainvoke({"task": "T"}, thread())
    (intr,) = out["__interrupt__"]
    system = prompts.AGENT_SYSTEM.format(name="a", description="")
    need = count_tokens_approximately([SystemMessage(system), HumanMessage("T")]) + 256
    assert intr.value == budget_stop("L1_a", 0, need, 20)
    assert script.calls == []
    out = await graph.ainvoke(Command(resume={"max_total_tokens": 100_000}), thread())
    assert [c.model for c in script.calls] == ["a"]
    (intr,) = out["__interrupt__"]  # the synthesizer's call is over the spec's budget too
    assert intr.value["node"] == "L1_synthesizer"
    assert intr.value["used"] == {"total_tokens": 15, "cost": 0.0}
    out = await graph.ainvoke(Command(resume=True), thread())
    assert out["answer"] == "final"
    assert [c.model for c in script.calls] == ["a", "synth"]


async def test_grace_period_cuts_a_slow_agent_once_the_quorum_answered() -> None:
    never = asyncio.Event()

    async def hang(call: Call) -> str:
        await never.wait()
        return "late"

    spec = spec_of(["a", "b"], layer={"grace_period": 0.05})  # a quorum of 1 by default
    script = Script().on("a", "quick").on("b", hang).on("synth", "done")
    state = await run(spec, script)
    b = state["proposals"]["1"]["b"]
    assert (b["status"], b["error"]) == (
        "missing",
        "no answer within the grace period of 0.05s after 1 agents answered (quorum 1)",
    )
    assert state["answer"] == "done"
    assert "layer 1: b did not answer in time" in state["notes"]
    assert script.of("synth")[0].system.endswith(
        "[1] a\nquick\n\nNote: b did not answer in time. Say in your reply which parts of "
        "the task may be weaker for that."
    )


async def test_each_layers_agents_take_that_layers_grace_period() -> None:
    never = asyncio.Event()

    async def hang(call: Call) -> str:
        await never.wait()
        return "late"

    spec = spec_of(["a", "b"], layers=2, layer={"grace_period": 0.05})
    second = spec.layers[1].model_copy(update={"grace_period": 0.07})
    spec = spec.model_copy(update={"layers": [spec.layers[0], second]})
    script = Script().on("a", "quick").on("b", hang).on("synth", "done")
    state = await run(spec, script)
    assert [state["proposals"][layer]["b"]["error"] for layer in ("1", "2")] == [
        "no answer within the grace period of 0.05s after 1 agents answered (quorum 1)",
        "no answer within the grace period of 0.07s after 1 agents answered (quorum 1)",
    ]


async def test_layer_timeout_cuts_every_agent_still_running() -> None:
    never = asyncio.Event()

    async def hang(call: Call) -> str:
        await never.wait()
        return "late"

    spec = spec_of(["a", "b"], layer={"timeout": 0.05})
    script = Script().on("a", hang).on("b", hang)
    graph = graph_of(spec, script)
    with pytest.raises(Exception) as err:
        await graph.ainvoke({"task": "T"}, thread())
    assert str(err.value) == (
        "layer 1: 0 of 2 agents answered, 1 needed (a did not answer in time; b did not answer "
        "in time); resume the run once the models answer again: it retries the agents that "
        "did not answer"
    )
    state = (await graph.aget_state(thread())).values
    for agent in ("a", "b"):
        proposal = state["proposals"]["1"][agent]
        assert (proposal["status"], proposal["error"]) == (
            "missing",
            "no answer within the layer timeout of 0.05s",
        )


# -- the router -------------------------------------------------------------------------


def router_spec(**routing: Any) -> Any:
    return spec_of(
        ["a", "b"],
        agents=[
            {"name": "a", "model": "a", "description": "Sums."},
            {"name": "b", "model": "b", "role": "You check.", "tools": []},
        ],
        layer={"routing": {"mode": "router", "model": "router", **routing}},
    )


ROSTER = "- a: Sums.\n- b: You check."


async def test_router_plan_is_asked_with_the_roster_and_fanned_out() -> None:
    plan = {"plan": [{"agent": "b", "subtask": "check it"}]}
    script = Script().on("router", json.dumps(plan)).on("synth", "done")
    state = await run(router_spec(), script)
    (call,) = script.of("router")
    assert call.system == prompts.ROUTER_SYSTEM.format(agents=ROSTER)
    assert call.human == "T" and call.roles == ["system", "human"]
    assert (call.temperature, call.max_tokens) == (0.0, 512)
    assert state["plans"] == {"1": [{"agent": "b", "subtask": "check it"}]}
    assert [c.model for c in script.calls] == ["router", "b", "synth"]
    assert script.of("b")[0].human == "Task: T\n\nYour part: check it"
    assert state["usage"]["router_L1"] == {**usage(), "calls": 1, "cost": 0.0}
    assert state["notes"] == []
    assert state["layer"] == 1


async def test_router_repairs_a_bad_plan_once_with_the_error() -> None:
    bad = '{"plan": [{"agent": "zed", "subtask": "x"}]}'
    good = '{"plan": [{"agent": "a", "subtask": "add"}]}'
    script = Script().on("router", bad, good).on("synth", "done")
    state = await run(router_spec(prompt="Agents:\n{agents}"), script)
    first, second = script.of("router")
    assert first.system == "Agents:\n" + ROSTER
    error = "plan item 0 names unknown agent 'zed'; use one of ['a', 'b']"
    assert [(m.type, m.text) for m in second.messages[1:]] == [
        ("human", "T"),
        ("ai", bad),
        ("human", prompts.ROUTER_REPAIR.format(error=error)),
    ]
    assert state["plans"]["1"] == [{"agent": "a", "subtask": "add"}]
    assert state["notes"] == [f"router plan rejected (attempt 1: {error})"]
    assert state["usage"]["router_L1"]["calls"] == 2
    assert state["usage"]["router_L1"]["total_tokens"] == 30


async def test_router_falls_back_to_broadcast_after_two_bad_plans(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script().on("router", "no plan", '{"plan": []}').on("synth", "done")
    state = await run(router_spec(), script)
    assert (
        "router of layer 1 fell back to broadcast: attempt 1: the reply contains no JSON; "
        "attempt 2: the plan is empty"
    ) in caplog.messages
    assert state["plans"]["1"] == [{"agent": "a", "subtask": "T"}, {"agent": "b", "subtask": "T"}]
    assert state["notes"] == [
        "router plan rejected (attempt 1: the reply contains no JSON)",
        "router plan rejected (attempt 2: the plan is empty)",
        "layer 1: router fell back to broadcast: every agent got the whole task",
    ]
    assert len(script.of("router")) == 2
    assert state["usage"]["router_L1"]["calls"] == 2


async def test_router_endpoint_failure_is_not_repaired() -> None:
    script = Script().on("router", ConnectionError("refused")).on("synth", "done")
    state = await run(router_spec(), script)
    assert len(script.of("router")) == 1
    assert state["notes"] == [
        "router plan rejected (attempt 1: ConnectionError: refused)",
        "layer 1: router fell back to broadcast: every agent got the whole task",
    ]
    assert "router_L1" not in state["usage"]
    assert sorted(c.model for c in script.calls) == ["a", "b", "router", "synth"]


async def test_router_structured_output() -> None:
    plan = {"plan": [{"agent": "a", "subtask": "add"}]}
    tool_call = AIMessage("", tool_calls=[{"name": "Plan", "args": plan, "id": "c1"}])
    script = Script().on("router", tool_call).on("synth", "done")
    state = await run(router_spec(structured_output=True), script)
    (call,) = script.of("router")
    assert call.tools == ["Plan"]
    assert state["plans"]["1"] == [{"agent": "a", "subtask": "add"}]
    assert state["notes"] == []
    # a reply that does not match the schema is repaired, then falls back
    wrong = AIMessage("", tool_calls=[{"name": "Plan", "args": {"plan": 3}, "id": "c2"}])
    script = Script().on("router", wrong).on("synth", "done")
    state = await run(router_spec(structured_output=True), script)
    assert len(script.of("router")) == 2
    assert state["notes"][0].startswith(
        "router plan rejected (attempt 1: the reply does not match the plan schema: "
    )
    assert state["notes"][-1].endswith(
        "router fell back to broadcast: every agent got the whole task"
    )


async def test_router_over_budget_pauses_then_resumes() -> None:
    spec = spec_of(
        ["a"],
        layer={"routing": {"mode": "router", "model": "router"}},
        max_total_tokens=30,
    )
    plan = '{"plan": [{"agent": "a", "subtask": "do"}]}'
    script = Script().on("router", plan).on("synth", "done")
    graph = graph_of(spec, script)
    out = await graph.ainvoke({"task": "T"}, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value["node"] == "L1_router"
    assert intr.value["next_call"]["total_tokens"] > 512
    out = await graph.ainvoke(Command(resume={"max_total_tokens": None}), thread())
    assert [c.model for c in script.calls] == ["router"]
    assert out["__interrupt__"][0].value["node"] == "L1_a"  # the spec's budget still holds
    out = await graph.ainvoke(Command(resume=True), thread())
    assert out["__interrupt__"][0].value["node"] == "L1_synthesizer"
    out = await graph.ainvoke(Command(resume=True), thread())
    assert out["answer"] == "done"
    assert [c.model for c in script.calls] == ["router", "a", "synth"]


async def test_a_router_resumed_over_budget_keeps_the_budget_and_the_schema_it_was_given() -> None:
    """A resume value's budget is the one the router's call gets again (still too small: no
    call, broadcast); resumed with room, the call still asks for the plan schema."""
    plan = {"plan": [{"agent": "a", "subtask": "add"}]}
    tool_call = AIMessage("", tool_calls=[{"name": "Plan", "args": plan, "id": "c1"}])
    for structured in (False, True):
        spec = spec_of(
            ["a", "b"],
            layer={
                "routing": {"mode": "router", "model": "router", "structured_output": structured}
            },
            max_total_tokens=30,
        )
        script = Script().on("router", tool_call).on("synth", "done")
        graph = graph_of(spec, script)
        out = await graph.ainvoke({"task": "T"}, thread())
        assert out["__interrupt__"][0].value["node"] == "L1_router"
        if not structured:
            out = await graph.ainvoke(Command(resume={"max_total_tokens": 31}), thread())
            assert script.calls == []
            notes = (await graph.aget_state(thread())).values["notes"]
            assert notes[0].startswith(
                "router plan rejected (attempt 1: BudgetExceeded: L1_router: token budget: 0 used"
            )
            assert notes[0].endswith("> max_total_tokens 31; resume with a larger budget)")
            assert (
                notes[-1]
                == "layer 1: router fell back to broadcast: every agent got the whole task"
            )
            continue
        out = await graph.ainvoke(Command(resume={"max_total_tokens": None}), thread())
        assert [c.tools for c in script.of("router")] == [["Plan"]]
        values = (await graph.aget_state(thread())).values
        assert values["plans"]["1"] == [{"agent": "a", "subtask": "add"}]
        assert values.get("notes", []) == []


async def test_each_layer_broadcasts_the_whole_task_to_its_own_agents() -> None:
    spec = spec_of(["a", "b"], layers=2)
    spec = spec.model_copy(
        update={
            "layers": [
                spec.layers[0].model_copy(update={"agents": ["a"]}),
                spec.layers[1].model_copy(update={"agents": ["b"]}),
            ]
        }
    )
    script = Script().on("synth", "S")
    state = await run(spec, script, task="Q")
    assert state["plans"] == {
        "1": [{"agent": "a", "subtask": "Q"}],
        "2": [{"agent": "b", "subtask": "Q"}],
    }
    assert [c.model for c in script.calls] == ["a", "synth", "b", "synth"]


async def test_each_layer_is_closed_by_its_own_synthesizer() -> None:
    spec = spec_of(["a"], layers=2)
    concat = spec.layers[0].model_copy(
        update={"synthesizer": spec.layers[0].synthesizer.model_copy(update={"mode": "concat"})}
    )
    spec = spec.model_copy(update={"layers": [concat, spec.layers[1]]})
    script = Script().on("a", "A").on("synth", "S")
    state = await run(spec, script)
    assert [c.model for c in script.calls] == ["a", "a", "synth"]  # layer 1 concatenates
    assert state["answer"] == "S"


async def test_a_second_layer_router_counts_what_the_first_layer_spent() -> None:
    """The router of layer 2 reserves its call on top of layer 1's usage (3 calls, 45
    tokens): a budget its call alone fits pauses the run there."""
    system = prompts.ROUTER_SYSTEM.format(agents="- a: a")
    need = count_tokens_approximately([SystemMessage(system), HumanMessage("T")]) + 512
    spec = spec_of(
        ["a"],
        layers=2,
        layer={"routing": {"mode": "router", "model": "router"}},
        max_total_tokens=need + 20,
    )
    plan = '{"plan": [{"agent": "a", "subtask": "do"}]}'
    script = Script().on("router", plan).on("synth", "done")
    graph = graph_of(spec, script)
    out = await graph.ainvoke({"task": "T"}, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value == budget_stop("L2_router", 45, need, need + 20)
    assert [c.model for c in script.calls] == ["router", "a", "synth"]


async def test_the_router_takes_the_invocations_budget() -> None:
    """A budget in ``configurable`` replaces the spec's (none here) for the router too."""
    plan = '{"plan": [{"agent": "a", "subtask": "do"}]}'
    script = Script().on("router", plan).on("synth", "done")
    graph = graph_of(router_spec(), script)
    config = {"configurable": {"thread_id": "t", "budget": {"max_total_tokens": 100}}}
    out = await graph.ainvoke({"task": "T"}, config)
    (intr,) = out["__interrupt__"]
    assert intr.value["node"] == "L1_router"
    assert intr.value["budget"] == {"max_total_tokens": 100, "max_cost": None}
    assert script.calls == []


async def test_the_agents_take_the_invocations_budget() -> None:
    """A budget in ``configurable`` replaces the spec's (none here) for the agents too."""
    script = Script().on("synth", "done")
    graph = graph_of(spec_of(["a"]), script)
    config = {"configurable": {"thread_id": "t", "budget": {"max_total_tokens": 10}}}
    out = await graph.ainvoke({"task": "T"}, config)
    (intr,) = out["__interrupt__"]
    assert intr.value["node"] == "L1_a"
    assert intr.value["budget"] == {"max_total_tokens": 10, "max_cost": None}
    assert script.calls == []


async def test_an_agent_resumed_over_budget_gets_the_resumes_budget() -> None:
    """A resume value's budget is the one the agent's call gets again: still too small, the
    call is refused (and the run fails with it); no model call is made."""
    script = Script().on("synth", "done")
    graph = graph_of(spec_of(["a"], max_total_tokens=10), script)
    out = await graph.ainvoke({"task": "T"}, thread())
    assert out["__interrupt__"][0].value["node"] == "L1_a"
    with pytest.raises(BudgetExceeded, match=r"> max_total_tokens 11; resume with a larger"):
        await graph.ainvoke(Command(resume={"max_total_tokens": 11}), thread())
    assert script.calls == []


async def test_concurrent_runs_do_not_share_a_layer_gate() -> None:
    """Two runs whose agents are in flight at once: each agent joins its own run's gate
    (its proposal carries its own run's id)."""
    both = asyncio.Event()
    arrived: list[str] = []

    async def meet(call: Call) -> str:
        arrived.append(call.human)
        if len(arrived) == 2:
            both.set()
        await both.wait()
        return f"answer to {call.human}"

    script = Script().on("a", meet).on("synth", "done")
    graph = graph_of(spec_of(["a"]), script)
    await asyncio.gather(
        graph.ainvoke({"task": "T1"}, thread("one")), graph.ainvoke({"task": "T2"}, thread("two"))
    )
    one = (await graph.aget_state(thread("one"))).values["proposals"]["1"]["a"]
    two = (await graph.aget_state(thread("two"))).values["proposals"]["1"]["a"]
    assert (one["content"], two["content"]) == ("answer to T1", "answer to T2")
    assert one["run_id"] != two["run_id"]


async def test_router_function_mode_sync_and_async() -> None:
    for fn in ("tests.test_nodes_runs:plan_b", "tests.test_nodes_runs:plan_async"):
        spec = spec_of(["a", "b"], layer={"routing": {"mode": "function", "function": fn}})
        script = Script().on("synth", "done")
        state = await run(spec, script, task="Q")
        assert state["plans"]["1"] == [{"agent": "b", "subtask": "Q for b"}], fn
        assert [c.model for c in script.calls] == ["b", "synth"]


def plan_b(task: str, agents: list[str]) -> list[dict[str, str]]:
    return [{"agent": agents[-1], "subtask": f"{task} for {agents[-1]}"}]


async def plan_async(task: str, agents: list[str]) -> dict[str, Any]:
    return {"plan": plan_b(task, agents)}


class Namespace:
    not_callable = 3

    @staticmethod
    def plan(task: str, agents: list[str]) -> list[dict[str, str]]:
        return plan_b(task, agents)


def test_router_function_paths() -> None:
    from langgraph_moa.nodes.router import _load_function

    assert _load_function("tests.test_nodes_runs:Namespace.plan") is Namespace.plan
    with pytest.raises(
        TypeError,
        match=r"routing function 'tests\.test_nodes_runs:Namespace\.not_callable' is not callable",
    ):
        _load_function("tests.test_nodes_runs:Namespace.not_callable")


async def test_router_history_is_fitted_with_a_note() -> None:
    spec = spec_of(
        ["a"],
        layer={"routing": {"mode": "router", "model": "router"}},
        models={
            "router": {
                "model": "router",
                "base_url": "http://127.0.0.1:9/v1",
                "context_window": 700,
            }
        },
    )
    plan = '{"plan": [{"agent": "a", "subtask": "do"}]}'
    script = Script().on("router", plan).on("synth", "done")
    graph = graph_of(spec, script)
    long = " ".join(["word"] * 300)
    await graph.ainvoke({"task": long}, thread())
    await graph.ainvoke({"task": "second"}, thread())
    state = (await graph.aget_state(thread())).values
    second = script.of("router")[1]
    assert second.roles == ["system", "human"]
    assert "The 1 oldest of its 1 earlier turns were left out" in second.system
    assert state["notes"] == ["layer 1: the router saw 0 of 1 earlier turns (context window)"]


# -- agent inputs and fan-out -----------------------------------------------------------


def test_agent_inputs_of_a_second_layer() -> None:
    spec = spec_of(["a", "b"], layers=2)
    ctx = context(spec)
    first = {"a": prop("a", "A1"), "b": prop("b", "B1")}
    state: dict[str, Any] = {
        "task": "T",
        "plans": {"2": [{"agent": "b", "subtask": "check"}]},
        "proposals": {"1": first},
        "syntheses": ["S0", "S1"],
        "usage": {"a": usage(), "synthesizer_L1": usage(3, 4)},
    }
    inputs = agent_inputs(ctx, state, 2)  # type: ignore[arg-type]
    assert inputs == {
        "b": {
            "task": "T",
            "subtask": "check",
            "layer": 2,
            "previous_synthesis": "S1",
            "previous_proposals": [first["a"], first["b"]],
            "peers": ["b"],
            "spent": {"input_tokens": 13, "output_tokens": 9, "total_tokens": 22},
        }
    }
    sends = make_fan_out(ctx, 2)(state)  # type: ignore[arg-type]
    assert [(s.node, s.arg) for s in sends] == [("L2_b", inputs["b"])]
    # no syntheses yet, or a first layer closed by vote: the proposals are passed on
    assert agent_inputs(ctx, {**state, "syntheses": []}, 2)["b"]["previous_synthesis"] is None  # type: ignore[arg-type]
    voted = spec_of(["a", "b"], layers=2, synth={"mode": "vote"})
    assert agent_inputs(context(voted), state, 2)["b"]["previous_synthesis"] is None  # type: ignore[arg-type]
    # the mode of the layer before is what counts, not that of another layer
    synthesized_then_voted = spec.model_copy(update={"layers": [spec.layers[0], voted.layers[1]]})
    inputs = agent_inputs(context(synthesized_then_voted), state, 2)  # type: ignore[arg-type]
    assert inputs["b"]["previous_synthesis"] == "S1"
    voted_then_synthesized = spec.model_copy(update={"layers": [voted.layers[0], spec.layers[1]]})
    inputs = agent_inputs(context(voted_then_synthesized), state, 2)  # type: ignore[arg-type]
    assert inputs["b"]["previous_synthesis"] is None
    # a first layer has nothing before it
    state["plans"]["1"] = [{"agent": "a", "subtask": "T"}]
    one = agent_inputs(ctx, state, 1)["a"]  # type: ignore[arg-type]
    assert (one["previous_synthesis"], one["previous_proposals"]) == (None, [])


def test_agent_inputs_carry_the_history_that_fits() -> None:
    spec = spec_of(
        ["a", "b"],
        agents=[{"name": "a", "model": "a"}, {"name": "b", "model": "b", "max_tokens": 600}],
        models={"b": {"model": "b", "base_url": "http://127.0.0.1:9/v1", "context_window": 700}},
    )
    long = " ".join(["word"] * 120)
    messages = [HumanMessage("q1", id="h1"), AIMessage(long), HumanMessage("now", id="h2")]
    state: dict[str, Any] = {
        "task": "now",
        "asked": "h2",
        "messages": messages,
        "plans": {"1": [{"agent": "a", "subtask": "now"}, {"agent": "b", "subtask": "now"}]},
    }
    inputs = agent_inputs(context(spec), state, 1)  # type: ignore[arg-type]
    assert inputs["a"]["history"] == [{"question": "q1", "answer": long}]
    assert inputs["a"]["history_dropped"] == 0
    assert inputs["b"]["history"] == [] and inputs["b"]["history_dropped"] == 1
    state["messages"] = [HumanMessage("now", id="h2")]
    assert "history" not in agent_inputs(context(spec), state, 1)["a"]  # type: ignore[arg-type]


# -- the synthesizer --------------------------------------------------------------------


def listing(*pairs: tuple[str, str]) -> str:
    return "\n\n".join(f"[{i}] {a}\n{t}" for i, (a, t) in enumerate(pairs, 1))


async def test_synthesize_sends_the_numbered_proposals_and_reads_citations() -> None:
    script = (
        Script()
        .on("a", "Paris is the capital of France.")
        .on("b", " Paris has 2.1 million people. ")
        .on("c", "The Seine flows through Paris.")
        .on("synth", "Paris is the capital [1]. It has 2.1 million people [2, 3]. Rivers.")
    )
    state = await run(spec_of(), script, task="About Paris?")
    (call,) = script.of("synth")
    proposals = listing(
        ("a", "Paris is the capital of France."),
        ("b", "Paris has 2.1 million people."),
        ("c", "The Seine flows through Paris."),
    )
    assert call.system == prompts.SYNTHESIZER_SYSTEM.format(proposals=proposals)
    assert call.roles == ["system", "human"] and call.human == "About Paris?"
    assert (call.temperature, call.max_tokens) == (0.2, 256)
    answer = "Paris is the capital. It has 2.1 million people. Rivers."
    assert state["answer"] == answer
    assert state["syntheses"] == [answer]
    assert state["messages"][-1].text == answer and state["messages"][-1].name == "moa"
    assert state["aggregation"] == {
        "1": {
            "mode": "synthesize",
            "proposals": ["a", "b", "c"],
            "decided_by": "synthesizer",
            "cited": 2,
        }
    }
    assert state["attribution"] == [
        {"text": "Paris is the capital.", "agents": ["a"], "proposals": [1], "inferred": False},
        {
            "text": "It has 2.1 million people.",
            "agents": ["b", "c"],
            "proposals": [2, 3],
            "inferred": False,
        },
        {"text": "Rivers.", "agents": [], "proposals": [], "inferred": True},
    ]
    assert state["usage"]["synthesizer_L1"] == {**usage(), "calls": 1, "cost": 0.0}
    assert state["notes"] == []


async def test_two_layers_pass_the_synthesis_on_and_only_the_last_answers() -> None:
    answers = iter(["S1", "S2"])
    script = Script().on("synth", lambda call: next(answers))
    state = await run(
        spec_of(["a", "b"], layers=2, synth={"temperature": 0.9, "max_tokens": 50}), script
    )
    assert state["syntheses"] == ["S1", "S2"]
    assert state["answer"] == "S2"
    assert [m.text for m in state["messages"]] == ["T", "S2"]
    second_a = [c for c in script.of("a")][1]
    assert second_a.system.endswith("add what is missing.\n\n1. [synthesis]\nS1")
    s1, s2 = script.of("synth")
    assert (s1.temperature, s1.max_tokens) == (0.9, 50)
    assert (s2.temperature, s2.max_tokens) == (0.9, 50)
    assert s2.system.startswith(prompts.SYNTHESIZER_SYSTEM.split("{")[0])
    assert set(state["aggregation"]) == {"1", "2"}
    assert set(state["usage"]) == {"a", "b", "synthesizer_L1", "synthesizer_L2"}
    assert state["usage"]["a"]["calls"] == 2


async def test_failed_agents_are_named_to_the_synthesizer_and_in_the_notes() -> None:
    script = Script().on("a", "fine").on("b", ValueError("bad input")).on("synth", "done")
    state = await run(spec_of(["a", "b"]), script)
    (call,) = script.of("synth")
    assert call.system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "fine"))
    ) + prompts.SYNTHESIZER_GAPS.format(gaps="b failed (ValueError: bad input)")
    assert state["notes"] == ["layer 1: b failed (ValueError: bad input)"]
    assert state["aggregation"]["1"]["proposals"] == ["a"]


B_AND_C_DOWN = (
    "layer 1: 1 of 3 agents answered, 2 needed (b failed (RuntimeError: b down); c failed "
    "(RuntimeError: c down)); resume the run once the models answer again: it retries "
    "the agents that did not answer"
)


async def test_quorum_error_then_a_resume_retries_the_failed_agents() -> None:
    spec = spec_of(["a", "b", "c"], layer={"min_proposals": 2})
    script = (
        Script()
        .on("a", "A")
        .on("b", RuntimeError("b down"), "B again")
        .on("c", RuntimeError("c down"), "C again")
        .on("synth", "done")
    )
    graph = graph_of(spec, script)
    started: list[str] = []
    with pytest.raises(Exception) as err:
        async for task in graph.astream({"task": "T"}, thread(), stream_mode="tasks"):
            started.append(task["name"])
    assert type(err.value).__name__ == "QuorumError"
    assert str(err.value) == B_AND_C_DOWN
    assert not script.of("synth")
    # the first invocation retries nothing (its failures are its own)
    assert "L1_synthesizer" in started and "L1_synthesizer.retry" not in started
    updates = [u async for u in graph.astream(None, thread(), stream_mode="updates")]
    out = (await graph.aget_state(thread())).values
    assert out["answer"] == "done"
    # the retry streams as a state update under a name no node can have
    assert [next(iter(u)) for u in updates] == ["L1_synthesizer.retry", "L1_synthesizer"]
    assert updates[0]["L1_synthesizer.retry"] == {
        "proposals": {"1": {a: out["proposals"]["1"][a] for a in ("b", "c")}},
        "usage": {a: out["usage"][a] for a in ("b", "c")},
    }
    assert [c.model for c in script.calls].count("b") == 2
    assert [c.model for c in script.calls].count("a") == 1
    (call,) = script.of("synth")
    assert call.system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "A"), ("b", "B again"), ("c", "C again"))
    )
    state = (await graph.aget_state(thread())).values
    assert {a: p["status"] for a, p in state["proposals"]["1"].items()} == {
        "a": "ok",
        "b": "ok",
        "c": "ok",
    }
    assert state["proposals"]["1"]["b"]["content"] == "B again"
    # the retried proposals carry the resume's invocation, a's the first one's
    first, again = (state["proposals"]["1"][x]["run_id"] for x in ("a", "b"))
    assert state["proposals"]["1"]["c"]["run_id"] == again
    assert len(first) == len(again) == 32 and first != again
    assert state["usage"]["b"] == {**usage(), "calls": 1, "cost": 0.0}
    assert state["usage"]["a"]["calls"] == 1
    assert state["notes"] == []


async def test_a_resume_that_still_lacks_the_quorum_raises_again() -> None:
    spec = spec_of(["a", "b"], layer={"min_proposals": 2})
    script = Script().on("a", "A").on("b", RuntimeError("down")).on("synth", "done")
    graph = graph_of(spec, script)
    with pytest.raises(Exception, match="1 of 2 agents answered, 2 needed"):
        await graph.ainvoke({"task": "T"}, thread())
    with pytest.raises(Exception, match=r"1 of 2 agents answered, 2 needed \(b failed"):
        await graph.ainvoke(None, thread())
    assert [c.model for c in script.calls].count("b") == 2


@pytest.mark.parametrize("review", [False, True])
async def test_a_retry_over_budget_pauses_and_resumes(review: bool) -> None:
    """A resume's retry pauses over budget; once it goes ahead (and the reviewer, if any, is
    shown b's retried proposal), the synthesizer's budget pause is resumed and synthesizes
    that proposal (the retry is checkpointed), without asking b again."""
    layer = {"min_proposals": 2, "interrupt_before_synthesis": review}
    script = Script().on("a", "A").on("b", RuntimeError("down"), "B", "B, third call")
    script.on("synth", "done")
    graph = graph_of(spec_of(["a", "b"], layer=layer, defaults={"seed": 5}), script)
    with pytest.raises(Exception, match="needed"):
        await graph.ainvoke({"task": "T"}, thread())
    config = {"configurable": {"thread_id": "t", "budget": {"max_total_tokens": 16}}}
    out = await graph.ainvoke(None, config)
    (intr,) = out["__interrupt__"]
    assert (intr.value["node"], intr.value["used"]) == ("L1_b", {"total_tokens": 15, "cost": 0.0})
    out = await graph.ainvoke(Command(resume=True), config)  # b's retry may go ahead
    if review:
        (intr,) = out["__interrupt__"]
        assert intr.value == {
            "kind": "approve_synthesis",
            "layer": 1,
            "proposals": {"a": "A", "b": "B"},
        }
        out = await graph.ainvoke(Command(resume=True), config)  # the reviewer approves
    (intr,) = out["__interrupt__"]  # the synthesizer counts a's call and b's retry
    assert (intr.value["node"], intr.value["used"]) == (
        "L1_synthesizer",
        {"total_tokens": 30, "cost": 0.0},
    )
    out = await graph.ainvoke(Command(resume=True), config)
    assert out["answer"] == "done"
    assert out["proposals"]["1"]["b"]["content"] == "B"
    assert [c.model for c in script.calls] == ["a", "b", "b", "synth"]
    assert script.of("synth")[0].system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "A"), ("b", "B"))
    )
    assert {a: u["calls"] for a, u in out["usage"].items()} == {"a": 1, "b": 1, "synthesizer_L1": 1}
    (synth,) = script.of("synth")  # the call after the pause is still the synthesizer's
    assert synth.seed == call_seed(5, "L1_synthesizer", synth.messages)


async def test_a_retry_pauses_the_agents_over_budget_and_the_others_keep_their_answers() -> None:
    agents = [{"name": "a", "model": "a"}, {"name": "b", "model": "b", "max_tokens": 20}]
    spec = spec_of(
        ["a", "b", "c"], agents=[*agents, {"name": "c", "model": "c"}], layer={"min_proposals": 3}
    )
    script = (
        Script()
        .on("a", "A")
        .on("b", RuntimeError("b down"), "B again")
        .on("c", RuntimeError("c down"), "C again")
        .on("synth", "done")
    )
    graph = graph_of(spec, script)
    with pytest.raises(Exception, match="1 of 3 agents answered, 3 needed"):
        await graph.ainvoke({"task": "T"}, thread())
    config = {"configurable": {"thread_id": "t", "budget": {"max_total_tokens": 200}}}
    # b (up to 20 tokens out) fits; c (up to 256) does not once b has spent its 15
    out = await graph.ainvoke(None, config)
    (intr,) = out["__interrupt__"]
    system = prompts.AGENT_SYSTEM.format(name="c", description="")
    need = count_tokens_approximately([SystemMessage(system), HumanMessage("T")]) + 256
    assert intr.value == budget_stop("L1_c", 30, need, 200)
    out = await graph.ainvoke(Command(resume={"max_total_tokens": 10_000}), config)
    (intr,) = out["__interrupt__"]  # the synthesizer counts a's call and both retries
    assert (intr.value["node"], intr.value["used"]) == (
        "L1_synthesizer",
        {"total_tokens": 45, "cost": 0.0},
    )
    out = await graph.ainvoke(Command(resume=True), config)
    assert out["answer"] == "done"
    assert {a: p["content"] for a, p in out["proposals"]["1"].items()} == {
        "a": "A",
        "b": "B again",
        "c": "C again",
    }
    assert {a: u["calls"] for a, u in out["usage"].items()} == {
        "a": 1,
        "b": 1,
        "c": 1,
        "synthesizer_L1": 1,
    }
    (call,) = script.of("synth")
    assert call.system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "A"), ("b", "B again"), ("c", "C again"))
    )


async def test_a_resumes_retry_waits_for_the_missing_part_of_the_quorum_then_its_grace() -> None:
    never = asyncio.Event()

    async def hang(call: Call) -> str:
        await never.wait()
        return "late"

    spec = spec_of(["a", "b", "c"], layer={"min_proposals": 2, "grace_period": 0.05})
    script = (
        Script()
        .on("a", "A")
        .on("b", RuntimeError("b down"), "B again")
        .on("c", RuntimeError("c down"), hang)
        .on("synth", "done")
    )
    graph = graph_of(spec, script)
    with pytest.raises(Exception, match="1 of 3 agents answered, 2 needed"):
        await graph.ainvoke({"task": "T"}, thread())
    # a answered before: the retry of b and c needs 1 more, then c gets the grace period
    out = await asyncio.wait_for(graph.ainvoke(None, thread()), 60)  # a last guard only
    c = out["proposals"]["1"]["c"]
    assert (c["status"], c["error"]) == (
        "missing",
        "no answer within the grace period of 0.05s after 1 agents answered (quorum 1)",
    )
    assert out["answer"] == "done"
    state = (await graph.aget_state(thread())).values
    assert state["notes"] == ["layer 1: c did not answer in time"]
    assert script.of("synth")[0].system.startswith(
        prompts.SYNTHESIZER_SYSTEM.format(proposals=listing(("a", "A"), ("b", "B again")))
    )


async def test_a_resumes_retry_is_cut_by_the_layer_timeout() -> None:
    never = asyncio.Event()

    async def hang(call: Call) -> str:
        await never.wait()
        return "late"

    # the first invocation has no timeout (a's answer must not race it on a busy machine);
    # the resume runs the same thread with a spec that has one
    saver = InMemorySaver()
    script = Script().on("a", "A").on("b", RuntimeError("b down"), hang).on("synth", "done")
    first = graph_of(spec_of(["a", "b"], layer={"min_proposals": 2}), script, saver)
    with pytest.raises(Exception, match="1 of 2 agents answered, 2 needed"):
        await first.ainvoke({"task": "T"}, thread())
    spec = spec_of(["a", "b"], layer={"min_proposals": 2, "timeout": 0.05})
    graph = graph_of(spec, script, saver)
    with pytest.raises(Exception) as err:
        await asyncio.wait_for(graph.ainvoke(None, thread()), 60)  # a last guard only
    assert str(err.value) == (
        "layer 1: 1 of 2 agents answered, 2 needed (b did not answer in time); resume the run "
        "once the models answer again: it retries the agents that did not answer"
    )
    assert [c.model for c in script.calls] == ["a", "b", "b"]


async def test_vote_majority_answers_without_the_synthesizer() -> None:
    script = Script().on("a", "4 x 12.\nThe answer is 48.").on("b", "**48**").on("c", "I count 44")
    state = await run(spec_of(synth={"mode": "vote"}), script)
    assert not script.of("synth")
    assert state["answer"] == "4 x 12.\nThe answer is 48."
    assert state["aggregation"]["1"] == {
        "mode": "vote",
        "proposals": ["a", "b", "c"],
        "answers": {"a": "48", "b": "48", "c": "I count 44"},
        "votes": {"48": 2, "44": 1},
        "winner": "48",
        "agreement": 0.6667,
        "agent": "a",
        "decided_by": "vote",
        "reason": "2 of 3 agents gave '48'",
    }
    assert state["notes"] == [
        "layer 1: vote: '48' x2 (a, b), '44' x1 (c); agreement 67%, the answer is a's proposal"
    ]
    assert state["attribution"] == [
        {"text": "4 x 12.", "agents": ["a"], "proposals": [1], "inferred": False},
        {"text": "The answer is 48.", "agents": ["a"], "proposals": [1], "inferred": False},
    ]
    assert "synthesizer_L1" not in state["usage"]


@pytest.mark.parametrize(
    ("replies", "extra", "why"),
    [
        (["yes", "no"], {}, "a tie"),
        (["", " "], {}, "no answer found"),
        (["7", "seven", "8"], {"min_agreement": 0.9}, "agreement 67% below 90%"),
        (["1", "2", "3", "3"], {}, None),
        (["1", "1", "2", "3", "4"], {}, "agreement 40% below 50%"),
    ],
)
async def test_a_split_vote_is_synthesized_with_a_note(
    replies: list[str], extra: dict[str, Any], why: str | None
) -> None:
    names = [f"p{i}" for i in range(1, len(replies) + 1)]
    script = Script().on("synth", "decided [1]")
    for name, reply in zip(names, replies, strict=True):
        script.on(name, reply)
    state = await run(spec_of(names, synth={"mode": "vote", **extra}), script)
    if why is None:  # 2 of 4 is a majority of 50%: enough by default
        assert state["aggregation"]["1"]["decided_by"] == "vote"
        assert state["answer"] == "3"
        return
    (call,) = script.of("synth")
    record = state["aggregation"]["1"]
    from langgraph_moa.nodes.aggregation import tally

    vote = tally(
        dict(zip(names, replies, strict=True)), min_agreement=extra.get("min_agreement", 0.5)
    )
    assert call.system.endswith(prompts.VOTE_SPLIT.format(votes=vote.describe()))
    assert record["decided_by"] == "synthesizer"
    assert record["reason"] == f"{why}: the synthesizer decided"
    assert record["winner"] is None and record["cited"] == 1
    assert state["notes"] == [f"layer 1: vote: {vote.describe()}; {why}, synthesized"]
    assert state["answer"] == "decided"


async def test_select_takes_the_picked_proposal_as_written() -> None:
    script = Script().on("a", "Alpha.").on("b", "Beta.").on("synth", "[2]\nclearer")
    state = await run(spec_of(["a", "b"], synth={"mode": "select"}), script)
    (call,) = script.of("synth")
    assert call.system == prompts.SELECT_SYSTEM.format(
        proposals=listing(("a", "Alpha."), ("b", "Beta."))
    )
    assert state["answer"] == "Beta."
    assert state["aggregation"]["1"] == {
        "mode": "select",
        "proposals": ["a", "b"],
        "decided_by": "select",
        "choice": 2,
        "agent": "b",
        "reason": "clearer",
    }
    assert state["notes"] == ["layer 1: select: proposal [2] of b"]
    assert state["attribution"] == [
        {"text": "Beta.", "agents": ["b"], "proposals": [2], "inferred": False}
    ]
    assert state["usage"]["synthesizer_L1"]["calls"] == 1


async def test_select_asks_again_once_then_falls_back_to_the_first() -> None:
    long = "I cannot decide between these because " + "x" * 80
    script = Script().on("a", "Alpha.").on("b", "Beta.").on("synth", "hmm", long)
    state = await run(spec_of(["a", "b"], synth={"mode": "select"}), script)
    _, again = script.of("synth")
    assert [(m.type, m.text) for m in again.messages[1:]] == [
        ("human", "T"),
        ("ai", "hmm"),
        ("human", prompts.SELECT_REPAIR.format(numbers="[1], [2]")),
    ]
    shown = long[:77] + "..."
    reason = f"the synthesizer's pick could not be read ({shown!r}); took proposal [1]"
    assert state["aggregation"]["1"] == {
        "mode": "select",
        "proposals": ["a", "b"],
        "decided_by": "fallback",
        "choice": None,
        "agent": "a",
        "reason": reason,
    }
    assert state["notes"] == [f"layer 1: select: {reason} of a"]
    assert state["answer"] == "Alpha."
    assert state["attribution"][0]["proposals"] == [1]
    assert state["usage"]["synthesizer_L1"]["calls"] == 2
    assert state["usage"]["synthesizer_L1"]["total_tokens"] == 30
    # a short unreadable reply is shown whole (up to 80 characters); a repaired pick is taken
    for reply, shown in [
        ("no idea", "no idea"),
        ("z" * 80, "z" * 80),
        ("z" * 81, "z" * 77 + "..."),
    ]:
        script = Script().on("a", "Alpha.").on("b", "Beta.").on("synth", "hmm", reply)
        state = await run(spec_of(["a", "b"], synth={"mode": "select"}), script)
        assert f"({shown!r})" in state["aggregation"]["1"]["reason"]
    script = Script().on("a", "Alpha.").on("b", "Beta.").on("synth", "hmm", "[2]")
    state = await run(spec_of(["a", "b"], synth={"mode": "select"}), script)
    assert state["answer"] == "Beta." and state["aggregation"]["1"]["choice"] == 2


async def test_select_reads_a_pick_that_names_the_agent() -> None:
    spec = spec_of(["ann", "bob"], synth={"mode": "select"})
    script = Script().on("ann", "Ann's.").on("bob", "Bob's.").on("synth", "bob wrote it best")
    state = await run(spec, script)
    assert len(script.of("synth")) == 1  # read at once, no second question
    assert state["answer"] == "Bob's."
    assert state["aggregation"]["1"] == {
        "mode": "select",
        "proposals": ["ann", "bob"],
        "decided_by": "select",
        "choice": 2,
        "agent": "bob",
        "reason": "bob wrote it best",
    }
    assert state["usage"]["synthesizer_L1"]["calls"] == 1
    # a name in the reply to the second question is read too
    script = Script().on("ann", "Ann's.").on("bob", "Bob's.").on("synth", "hmm", "bob's, then")
    state = await run(spec, script)
    assert len(script.of("synth")) == 2
    assert state["answer"] == "Bob's."
    assert (state["aggregation"]["1"]["choice"], state["aggregation"]["1"]["agent"]) == (2, "bob")
    assert state["notes"] == ["layer 1: select: proposal [2] of bob"]


async def test_concat_lists_the_proposals_without_a_call() -> None:
    script = Script().on("a", "Alpha one. Alpha two.").on("b", "Beta.")
    state = await run(spec_of(["a", "b"], synth={"mode": "concat"}), script)
    assert not script.of("synth")
    assert state["answer"] == "1. [a]\nAlpha one. Alpha two.\n\n2. [b]\nBeta."
    assert state["aggregation"]["1"] == {
        "mode": "concat",
        "proposals": ["a", "b"],
        "decided_by": "concat",
    }
    assert state["attribution"] == [
        {"text": "Alpha one.", "agents": ["a"], "proposals": [1], "inferred": False},
        {"text": "Alpha two.", "agents": ["a"], "proposals": [1], "inferred": False},
        {"text": "Beta.", "agents": ["b"], "proposals": [2], "inferred": False},
    ]
    assert "synthesizer_L1" not in state["usage"]


async def test_approve_synthesis_interrupt_and_edits() -> None:
    spec = spec_of(["a", "b"], layer={"interrupt_before_synthesis": True})
    script = Script().on("a", "Alpha.").on("b", RuntimeError("x")).on("synth", "done")
    graph = graph_of(spec, script)
    out = await graph.ainvoke({"task": "T"}, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value == {
        "kind": "approve_synthesis",
        "layer": 1,
        "proposals": {"a": "Alpha.", "b": ""},
    }
    edits = {"proposals": {"b": "Beta by hand.", "z": 7}}
    out = await graph.ainvoke(Command(resume=edits), thread())
    (call,) = script.of("synth")
    assert call.system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "Alpha."), ("b", "Beta by hand."), ("z", "7"))
    )
    state = (await graph.aget_state(thread())).values
    b, z = state["proposals"]["1"]["b"], state["proposals"]["1"]["z"]
    assert (b["status"], b["content"], b["error"]) == ("ok", "Beta by hand.", "RuntimeError: x")
    assert z == {"agent": "z", "layer": 1, "subtask": "T", "content": "7", "status": "ok"}
    assert state["notes"] == []
    # a plain approval changes nothing
    for value in (True, {"proposals": "no"}):
        script = Script().on("a", "Alpha.").on("b", "Beta.").on("synth", "done")
        graph = graph_of(spec, script)
        await graph.ainvoke({"task": "T"}, thread())
        out = await graph.ainvoke(Command(resume=value), thread())
        assert out["answer"] == "done"
        assert script.of("synth")[0].system.endswith(listing(("a", "Alpha."), ("b", "Beta.")))


def review_script() -> Script:
    """a answers; b and c fail, then answer when retried, then differently (never asked)."""
    return (
        Script()
        .on("a", "A")
        .on("b", RuntimeError("b down"), "B again", "B third")
        .on("c", RuntimeError("c down"), "C again", "C third")
        .on("synth", "done")
    )


async def test_a_reviewed_layer_below_quorum_is_retried_before_the_reviewer_sees_it() -> None:
    spec = spec_of(["a", "b", "c"], layer={"min_proposals": 2, "interrupt_before_synthesis": True})
    script = review_script()
    graph = graph_of(spec, script)
    # below quorum: the same error as without review, and nothing shown to the reviewer
    with pytest.raises(Exception) as err:
        await graph.ainvoke({"task": "T"}, thread())
    assert type(err.value).__name__ == "QuorumError"
    assert str(err.value) == B_AND_C_DOWN
    assert (await graph.aget_state(thread())).interrupts == ()
    assert [c.model for c in script.calls] == ["a", "b", "c"]
    # the resume retries b and c, then asks the reviewer, showing their new proposals
    out = await graph.ainvoke(None, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value == {
        "kind": "approve_synthesis",
        "layer": 1,
        "proposals": {"a": "A", "b": "B again", "c": "C again"},
    }
    assert sorted(c.model for c in script.calls) == ["a", "b", "b", "c", "c"]
    # the approval synthesizes exactly what was shown: b and c are not called again
    out = await graph.ainvoke(Command(resume=True), thread())
    assert out["answer"] == "done"
    assert sorted(c.model for c in script.calls) == ["a", "b", "b", "c", "c", "synth"]
    (call,) = script.of("synth")
    assert call.system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "A"), ("b", "B again"), ("c", "C again"))
    )
    state = (await graph.aget_state(thread())).values
    assert {a: (p["status"], p["content"]) for a, p in state["proposals"]["1"].items()} == {
        "a": ("ok", "A"),
        "b": ("ok", "B again"),
        "c": ("ok", "C again"),
    }
    # the retries were made in the resume before the approval, and counted once
    first, again = (state["proposals"]["1"][x]["run_id"] for x in ("a", "b"))
    assert state["proposals"]["1"]["c"]["run_id"] == again and first != again
    assert {a: u["calls"] for a, u in state["usage"].items()} == {
        "a": 1,
        "b": 1,
        "c": 1,
        "synthesizer_L1": 1,
    }
    assert state["usage"]["b"] == {**usage(), "calls": 1, "cost": 0.0}
    assert state["notes"] == []


async def test_a_reviewers_edits_apply_on_top_of_the_retried_proposals() -> None:
    spec = spec_of(["a", "b", "c"], layer={"min_proposals": 2, "interrupt_before_synthesis": True})
    script = review_script()
    graph = graph_of(spec, script)
    with pytest.raises(Exception, match="1 of 3 agents answered, 2 needed"):
        await graph.ainvoke({"task": "T"}, thread())
    out = await graph.ainvoke(None, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value["proposals"] == {"a": "A", "b": "B again", "c": "C again"}
    # the reviewer replaces a's proposal and b's retried one; c's retried one is kept
    edits = {"proposals": {"a": "A by hand", "b": "B by hand"}}
    out = await graph.ainvoke(Command(resume=edits), thread())
    assert out["answer"] == "done"
    assert sorted(c.model for c in script.calls) == ["a", "b", "b", "c", "c", "synth"]
    assert {a: (p["status"], p["content"]) for a, p in out["proposals"]["1"].items()} == {
        "a": ("ok", "A by hand"),
        "b": ("ok", "B by hand"),
        "c": ("ok", "C again"),
    }
    (call,) = script.of("synth")
    assert call.system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "A by hand"), ("b", "B by hand"), ("c", "C again"))
    )
    assert {a: u["calls"] for a, u in out["usage"].items()} == {
        "a": 1,
        "b": 1,
        "c": 1,
        "synthesizer_L1": 1,
    }


async def test_a_reviewed_layers_retry_short_of_quorum_raises_and_is_retried_again() -> None:
    spec = spec_of(["a", "b"], layer={"min_proposals": 2, "interrupt_before_synthesis": True})
    script = (
        Script()
        .on("a", "A")
        .on("b", RuntimeError("down"), RuntimeError("still down"), "B", "B fourth")
        .on("synth", "done")
    )
    graph = graph_of(spec, script)
    with pytest.raises(Exception, match=r"1 of 2 agents answered, 2 needed \(b failed"):
        await graph.ainvoke({"task": "T"}, thread())
    # the retry fails too: the same error, still nothing shown to the reviewer
    with pytest.raises(Exception) as err:
        await graph.ainvoke(None, thread())
    assert str(err.value).startswith(
        "layer 1: 1 of 2 agents answered, 2 needed (b failed (RuntimeError: still down))"
    )
    assert (await graph.aget_state(thread())).interrupts == ()
    # the next resume retries b again (the failed retry was not kept), then asks
    out = await graph.ainvoke(None, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value["proposals"] == {"a": "A", "b": "B"}
    out = await graph.ainvoke(Command(resume=True), thread())
    assert out["answer"] == "done"
    assert [c.model for c in script.calls].count("b") == 3
    assert script.of("synth")[0].system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "A"), ("b", "B"))
    )


async def test_proposals_trimmed_to_the_synthesizers_window() -> None:
    long = " ".join(["word"] * 600)
    spec = spec_of(
        ["a", "b"],
        models={
            "synth": {"model": "synth", "base_url": "http://127.0.0.1:9/v1", "context_window": 700}
        },
    )
    script = Script().on("a", long).on("b", "short").on("synth", "done")
    state = await run(spec, script, task="Q")
    (call,) = script.of("synth")
    from langgraph_moa.nodes.synthesizer import PROMPT_MARGIN, fit_proposals

    template = prompts.SYNTHESIZER_SYSTEM
    tokens = count_tokens_approximately
    fixed = tokens([HumanMessage(template)]) + tokens([HumanMessage("Q")]) + 12 * 2 + PROMPT_MARGIN
    fitted, notes = fit_proposals({"a": long, "b": "short"}, 700 - 256 - fixed)
    assert len(notes) == 1 and notes[0].startswith("proposal of a trimmed from about ")
    assert call.system == template.format(
        proposals=listing(("a", fitted["a"]), ("b", "short"))
    ) + prompts.SYNTHESIZER_GAPS.format(gaps=notes[0])
    assert state["notes"] == notes
    # on_overflow: fail stops the run
    spec = spec_of(
        ["a", "b"],
        synth={"on_overflow": "fail"},
        models={
            "synth": {"model": "synth", "base_url": "http://127.0.0.1:9/v1", "context_window": 700}
        },
    )
    with pytest.raises(Exception, match="set `on_overflow: trim`"):
        await run(spec, Script().on("a", long), task="Q")


async def test_custom_synthesizer_prompts() -> None:
    script = Script().on("a", "A.").on("synth", "done")
    await run(spec_of(["a"], synth={"prompt": "Merge these."}), script)
    assert script.of("synth")[0].system == "Merge these.\n\n[1] a\nA."
    script = Script().on("a", "A.").on("synth", "done")
    await run(spec_of(["a"], synth={"prompt": "Merge: {proposals} now."}), script)
    assert script.of("synth")[0].system == "Merge: [1] a\nA. now."


async def test_synthesizer_sees_the_history_that_fits() -> None:
    spec = spec_of(
        ["a"],
        models={
            "synth": {"model": "synth", "base_url": "http://127.0.0.1:9/v1", "context_window": 900}
        },
    )
    long = " ".join(["word"] * 400)
    script = Script().on("a", "A.").on("synth", long, "second answer")
    graph = graph_of(spec, script)
    await graph.ainvoke({"task": "first"}, thread())
    out = await graph.ainvoke({"task": "second"}, thread())
    assert out["answer"] == "second answer"
    call = script.of("synth")[1]
    assert call.roles == ["system", "human"]
    assert "The 1 oldest of its 1 earlier turns were left out" in call.system
    state = (await graph.aget_state(thread())).values
    assert state["notes"] == ["layer 1: the synthesizer saw 0 of 1 earlier turns (context window)"]
    # with room, the earlier turn is shown
    script = Script().on("a", "A.").on("synth", "one", "two")
    graph = graph_of(spec_of(["a"]), script)
    await graph.ainvoke({"task": "first"}, thread())
    await graph.ainvoke({"task": "second"}, thread())
    call = script.of("synth")[1]
    assert [(m.type, m.text) for m in call.messages[1:]] == [
        ("human", "first"),
        ("ai", "one"),
        ("human", "second"),
    ]


async def test_synthesizer_over_budget_pauses_then_resumes() -> None:
    script = Script().on("a", "A.").on("synth", "done")
    spec = spec_of(
        ["a"], agents=[{"name": "a", "model": "a", "max_tokens": 20}], max_total_tokens=300
    )
    graph = graph_of(spec, script)
    out = await graph.ainvoke({"task": "T"}, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value["node"] == "L1_synthesizer"
    assert intr.value["used"] == {"total_tokens": 15, "cost": 0.0}
    out = await graph.ainvoke(Command(resume={"max_total_tokens": 10_000}), thread())
    assert out["answer"] == "done"
    assert out["usage"]["synthesizer_L1"]["calls"] == 1


# -- the synthesizer node on a state of its own -------------------------------------------


async def test_synthesizer_without_proposals_names_what_is_missing() -> None:
    from langgraph_moa.nodes.synthesizer import QuorumError, make_synthesizer_node

    ctx = context(spec_of(["a", "b", "c"]))
    node = make_synthesizer_node(ctx, 1)
    assert node.__name__ == "synthesizer_L1"
    with pytest.raises(QuorumError) as err:
        await node({"task": "T", "plans": {"1": []}, "proposals": {}}, {})
    assert str(err.value) == (
        "layer 1: 0 of 3 agents answered, 1 needed (no proposals); resume the run once the "
        "models answer again: it retries the agents that did not answer"
    )


async def in_a_graph(node: Any, state: Any) -> dict[str, Any]:
    """The update ``node`` returns for ``state`` when it runs as a graph's node."""
    returned: dict[str, Any] = {}

    async def call(_: Any, config: RunnableConfig) -> dict[str, Any]:
        returned.update(await node(state, config))
        return {}

    graph = StateGraph(MoAState).add_node("node", call).add_edge(START, "node").compile()
    await graph.ainvoke({"task": state["task"]})
    return returned


async def test_synthesizer_quorum_is_capped_by_the_plan() -> None:
    from langgraph_moa.nodes.synthesizer import make_synthesizer_node

    script = Script().on("synth", "merged")
    ctx = context(spec_of(["a", "b", "c"], layer={"min_proposals": 3}), script)
    state: Any = {
        "task": "T",
        "plans": {"1": [{"agent": "a", "subtask": "x"}, {"agent": "b", "subtask": "y"}]},
        "proposals": {"1": {"a": {**prop("a", "A"), "run_id": "old"},
                            "b": {**prop("b", "", status="missing"), "error": "late"}}},
        "syntheses": ["old first layer"],
    }  # fmt: skip
    # 1 of 2 planned answered; 2 needed: b (missing in an earlier invocation) is retried (in
    # a LangGraph task, so in a graph)
    script.on("b", "B now")
    update = await in_a_graph(make_synthesizer_node(ctx, 1), state)
    again = Script().on("synth", "merged").on("b", "B now")  # called directly: the same
    direct = await make_synthesizer_node(context(ctx.spec, again), 1)(state, {})
    assert [c.model for c in again.calls] == ["b", "synth"] and direct["answer"] == "merged"
    assert direct["proposals"]["1"]["b"]["content"] == "B now"
    assert [c.model for c in script.calls] == ["b", "synth"]
    assert update["proposals"]["1"]["b"]["content"] == "B now"
    assert update["syntheses"] == ["merged"]
    assert update["answer"] == "merged"
    assert update["usage"] == {
        "b": {**usage(), "calls": 1, "cost": 0.0},
        "synthesizer_L1": {**usage(), "calls": 1, "cost": 0.0},
    }
    assert script.of("synth")[0].system == prompts.SYNTHESIZER_SYSTEM.format(
        proposals=listing(("a", "A"), ("b", "B now"))
    )
    # a plan of one: a quorum of one, no retry of the rest
    script = Script().on("synth", "merged")
    one: Any = {**state, "plans": {"1": [{"agent": "a", "subtask": "x"}]}}
    one["proposals"] = {"1": {"a": prop("a", "A")}}
    update = await make_synthesizer_node(context(spec_of(["a", "b", "c"], layer={
        "min_proposals": 3}), script), 1)(one, {})  # fmt: skip
    assert [c.model for c in script.calls] == ["synth"]
    assert "proposals" not in update and update["notes"] == []


async def test_a_first_layer_synthesizer_keeps_earlier_syntheses_and_does_not_answer() -> None:
    from langgraph_moa.nodes.synthesizer import make_synthesizer_node

    script = Script().on("synth", "second")
    ctx = context(spec_of(["a"], layers=3), script)
    state: Any = {
        "task": "T",
        "plans": {"2": [{"agent": "a", "subtask": "T"}]},
        "proposals": {"2": {"a": prop("a", "A")}},
        "syntheses": ["first", "stale second", "stale third"],
    }
    update = await make_synthesizer_node(ctx, 2)(state, {})
    assert update["syntheses"] == ["first", "second"]
    assert "answer" not in update and "messages" not in update and "attribution" not in update
    assert update["aggregation"] == {
        "2": {"mode": "synthesize", "proposals": ["a"], "decided_by": "synthesizer", "cited": 0}
    }


async def test_agent_with_tools_cut_by_its_gate() -> None:
    from tests.test_nodes_tools import tool_spec

    g = gate()
    g.cut("closed")
    update = await make_agent_runner(context(tool_spec(["add"])), "coder", 1)(payload(), {}, g)
    proposal = update["proposals"]["1"]["coder"]
    assert (proposal["status"], proposal["error"]) == ("missing", "closed")
    assert "usage" not in update


async def test_gaps_name_failures_without_a_reason_and_planned_agents_that_never_wrote() -> None:
    from langgraph_moa.nodes.synthesizer import make_synthesizer_node

    script = Script().on("synth", "merged")
    ctx = context(spec_of(["a", "b", "c"]), script)
    state: Any = {
        "task": "T",
        "plans": {"1": [{"agent": a, "subtask": "T"} for a in ("a", "b", "c")]},
        "proposals": {"1": {"a": prop("a", "A"), "b": prop("b", "", status="failed")}},
    }
    update = await make_synthesizer_node(ctx, 1)(state, {})
    assert update["notes"] == ["layer 1: b failed (no reason given)", "layer 1: c did not answer"]
    assert script.of("synth")[0].system.endswith(
        prompts.SYNTHESIZER_GAPS.format(gaps="b failed (no reason given); c did not answer")
    )


async def test_a_second_layer_agent_counts_what_the_first_layer_spent() -> None:
    spec = spec_of(
        ["a"],
        layers=2,
        agents=[{"name": "a", "model": "a", "max_tokens": 20}],
        synth={"max_tokens": 20},
        max_total_tokens=400,
    )
    script = Script().on("synth", " ".join(["word"] * 300), "final")
    graph = graph_of(spec, script)
    out = await graph.ainvoke({"task": "T"}, thread())
    (intr,) = out["__interrupt__"]
    assert intr.value["node"] == "L2_a"
    assert intr.value["used"] == {"total_tokens": 30, "cost": 0.0}
    assert [c.model for c in script.calls] == ["a", "synth"]


async def test_every_call_of_a_run_is_recorded_with_its_task() -> None:
    from langgraph_moa.nodes._calls import CALLS_KEY
    from tests.test_nodes_units import Source

    source = Source(seq=0)
    script = Script().on("synth", "done")
    graph = graph_of(spec_of(["a", "b"]), script)
    await graph.ainvoke({"task": "T"}, {"configurable": {"thread_id": "t", CALLS_KEY: source}})
    rows = sorted(source.rows, key=lambda r: r["node"])
    assert [(r["node"], r["kind"], r["model"]) for r in rows] == [
        ("L1_a", "agent", "a"),
        ("L1_b", "agent", "b"),
        ("L1_synthesizer", "synthesizer", "synth"),
    ]
    tasks = [r["task_id"] for r in rows]
    assert all(tasks) and len(set(tasks)) == 3
    assert sorted((n, t) for n, t, _ in source.lookups) == [(r["node"], r["task_id"]) for r in rows]
