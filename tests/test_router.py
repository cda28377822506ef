"""Router robustness over real HTTP: malformed plans are repaired once with the error, then
the layer falls back to broadcast, and the run records it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from langgraph_moa.nodes import Plan, PlanError, parse_plan
from langgraph_moa.runtime import MoA, RunResult
from langgraph_moa.testing import ChatRequest, ModelServer

AGENTS = ["research", "coding", "review"]
GOOD = {"plan": [{"agent": "coding", "subtask": "write it"}]}


def router_spec(srv: ModelServer, **routing: Any) -> dict[str, Any]:
    names = [*AGENTS, "router", "synth"]
    return {
        "models": {n: {"model": n, "base_url": srv.base_url, "max_retries": 0} for n in names},
        "agents": [{"name": a, "model": a, "description": f"{a} expert"} for a in AGENTS],
        "layers": [
            {
                "agents": AGENTS,
                "routing": {"mode": "router", "model": "router", **routing},
                "synthesizer": {"model": "synth"},
            }
        ],
    }


async def run(srv: ModelServer, sqlite_url: str, **routing: Any) -> RunResult:
    async with MoA(router_spec(srv, **routing), db_url=sqlite_url) as moa:
        return await moa.ainvoke("Write is_prime(n) and test it.")


def router_calls(srv: ModelServer) -> list[ChatRequest]:
    return sorted((r for r in srv.requests if r.model == "router"), key=lambda r: r.started)


def called_agents(srv: ModelServer) -> list[str]:
    return sorted(a for a in AGENTS if srv.calls(a))


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("Sure! I would give coding the work.", "the reply contains no JSON"),
        ('{"plan": [{"agent": "coding", "subtask": "x"}', "not valid JSON"),
        (json.dumps({"plan": []}), "the plan is empty"),
        (json.dumps({"plan": [{"agent": "ghost", "subtask": "x"}]}), "unknown agent 'ghost'"),
        (json.dumps({"steps": []}), 'expected {"plan"'),
        (json.dumps({"plan": [{"agent": "coding", "subtask": ""}]}), "empty subtask"),
    ],
)
async def test_malformed_plan_is_repaired_once_with_the_error(
    model_server: ModelServer, sqlite_url: str, bad: str, error: str
) -> None:
    model_server.add_rule(model="router", reply=bad, times=1)
    model_server.add_rule(model="router", json=GOOD)
    result = await run(model_server, sqlite_url)

    assert result.status == "success"
    _, repair = router_calls(model_server)
    assert error in repair.prompt  # the repair request carries the error...
    assert bad in repair.prompt  # ...and the rejected reply
    assert called_agents(model_server) == ["coding"]
    assert result.values["plans"]["1"] == [{"agent": "coding", "subtask": "write it"}]
    (note,) = [n for n in result.notes if "router" in n]  # recorded, no fallback
    assert note.startswith("router plan rejected (attempt 1: ") and error in note
    assert result.usage_by_agent["router_L1"]["calls"] == 2


async def test_plan_still_bad_after_repair_falls_back_to_broadcast_and_says_so(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="router", json={"plan": [{"agent": "ghost", "subtask": "x"}]})
    result = await run(model_server, sqlite_url)

    assert result.status == "success"
    assert len(router_calls(model_server)) == 2  # asked, repaired once, no more
    assert called_agents(model_server) == sorted(AGENTS)
    assert [s["agent"] for s in result.values["plans"]["1"]] == AGENTS
    router_notes = [n for n in result.notes if "router" in n]
    assert len(router_notes) == 3
    assert "attempt 1" in router_notes[0] and "attempt 2" in router_notes[1]
    assert router_notes[2] == (
        "layer 1: router fell back to broadcast: every agent got the whole task"
    )
    assert result.to_json()["notes"] == result.notes  # shown by `moa run --json`
    served = sum(r.usage["total_tokens"] for r in router_calls(model_server) if r.usage)
    assert result.usage_by_agent["router_L1"]["total_tokens"] == served


async def test_router_endpoint_failure_falls_back_without_a_repair(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="router", fail=500)
    result = await run(model_server, sqlite_url)

    assert result.status == "success"
    assert len(router_calls(model_server)) == 1  # a failed endpoint is not "repaired"
    assert called_agents(model_server) == sorted(AGENTS)
    assert "Error code: 500" in result.notes[0]
    assert "fell back to broadcast" in result.notes[1]
    assert "router_L1" not in result.usage_by_agent


async def test_plan_in_prose_and_fences_is_used_without_repair(
    model_server: ModelServer, sqlite_url: str
) -> None:
    plan = {
        "plan": [
            {"agent": "coding", "subtask": "write it"},
            {"agent": "review", "subtask": "check it"},
            {"agent": "coding", "subtask": "add tests"},
        ]
    }
    model_server.add_rule(model="router", reply=f"Plan:\n```json\n{json.dumps(plan)}\n```\nDone.")
    result = await run(model_server, sqlite_url)

    assert len(router_calls(model_server)) == 1 and not result.notes
    assert called_agents(model_server) == ["coding", "review"]
    coding = next(r for r in model_server.requests if r.model == "coding")
    assert "write it\nadd tests" in coding.last_user  # one Send per agent, subtasks joined


async def test_structured_output_plan_is_used_and_counted(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="router", json=GOOD)
    result = await run(model_server, sqlite_url, structured_output=True)

    (call,) = router_calls(model_server)
    assert "response_format" in call.body or "tools" in call.body
    assert called_agents(model_server) == ["coding"] and not result.notes
    assert result.usage_by_agent["router_L1"]["total_tokens"] == call.usage["total_tokens"]


async def test_structured_output_with_unknown_agents_is_repaired_then_falls_back(
    model_server: ModelServer, sqlite_url: str
) -> None:
    # no rule: the server fills the schema with its own text, which names no real agent
    result = await run(model_server, sqlite_url, structured_output=True)

    assert len(router_calls(model_server)) == 2
    assert "unknown agent" in router_calls(model_server)[1].prompt
    assert called_agents(model_server) == sorted(AGENTS)
    assert any("fell back to broadcast" in n for n in result.notes)
    assert result.usage_by_agent["router_L1"]["calls"] == 2


def test_parse_plan_accepts_its_forms_and_names_the_problem() -> None:
    agents = ["a", "b"]
    want = [{"agent": "a", "subtask": "x"}]
    assert parse_plan({"plan": want}, agents) == want
    assert parse_plan(want, agents) == want
    assert parse_plan(Plan.model_validate({"plan": want}), agents) == want
    assert parse_plan('noise {"plan": [{"agent": " a ", "subtask": " x "}]} noise', agents) == want
    with pytest.raises(PlanError, match=r"plan item 0 names unknown agent 'c'; use one of"):
        parse_plan({"plan": [{"agent": "c", "subtask": "x"}]}, agents)
    with pytest.raises(PlanError, match="plan item 1 must be an object"):
        parse_plan({"plan": [{"agent": "a", "subtask": "x"}, "b"]}, agents)
