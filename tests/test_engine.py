"""The MoA engine end to end over real HTTP: layers, router fan-out, usage, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from langchain_core.messages import HumanMessage
from langchain_core.messages.utils import count_tokens_approximately

from langgraph_moa.runtime import MoA
from langgraph_moa.testing import ModelServer
from tests.helpers import layered_spec, served_models


async def test_two_layers_of_three_reach_the_synthesizers(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="synth", template="SYNTH[{digest}]")
    spec = layered_spec(model_server)
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Name two uses of a B-tree.")

    assert result.status == "success"
    reqs = model_server.requests
    by_model = {m: [r for r in reqs if r.model == m] for m in ("p1", "p2", "p3", "synth")}
    assert {m: len(rs) for m, rs in by_model.items()} == {"p1": 2, "p2": 2, "p3": 2, "synth": 2}
    first_synth, last_synth = sorted(by_model["synth"], key=lambda r: r.started)
    layer1 = result.values["proposals"]["1"]
    layer2 = result.values["proposals"]["2"]
    assert sorted(layer1) == sorted(layer2) == ["p1", "p2", "p3"]
    for proposal in layer1.values():  # every proposal reached its synthesizer's prompt
        assert proposal["status"] == "ok" and proposal["content"] in first_synth.system
    for proposal in layer2.values():
        assert proposal["content"] in last_synth.system
    first_synthesis = result.values["syntheses"][0]
    assert first_synthesis.startswith("SYNTH[")
    for model in ("p1", "p2", "p3"):  # the second layer saw the first synthesis
        second_call = sorted(by_model[model], key=lambda r: r.started)[1]
        assert first_synthesis in second_call.system
        assert second_call.last_user == "Name two uses of a B-tree."
    assert result.answer == result.values["syntheses"][1]
    served = model_server.stats()["usage"]
    assert result.usage["input_tokens"] == served["prompt_tokens"]
    assert result.usage["output_tokens"] == served["completion_tokens"]
    assert result.usage["calls"] == 8


async def test_router_plan_fans_out_to_named_specialists(
    model_server: ModelServer, sqlite_url: str
) -> None:
    plan = {
        "plan": [
            {"agent": "coding", "subtask": "write the function"},
            {"agent": "verification", "subtask": "check edge cases"},
        ]
    }
    model_server.add_rule(model="router", reply=json.dumps(plan))
    names = ["research", "coding", "analysis", "verification"]
    spec = {
        "models": served_models(model_server, "router", "synth", *names),
        "agents": [{"name": n, "model": n, "description": f"{n} specialist"} for n in names],
        "layers": [
            {
                "agents": names,
                "routing": {"mode": "router", "model": "router"},
                "synthesizer": {"model": "synth"},
            }
        ],
    }
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Write is_prime(n) and test it.")

    assert result.status == "success"
    assert model_server.calls("research") == model_server.calls("analysis") == 0
    assert model_server.calls("coding") == model_server.calls("verification") == 1
    coding = next(r for r in model_server.requests if r.model == "coding")
    assert "write the function" in coding.last_user
    router_req = next(r for r in model_server.requests if r.model == "router")
    for name in names:  # the router saw the roster
        assert f"- {name}: {name} specialist" in router_req.system
    assert sorted(result.values["proposals"]["1"]) == ["coding", "verification"]
    assert not result.notes


async def test_router_unknown_agent_is_repaired_then_falls_back(
    model_server: ModelServer, sqlite_url: str
) -> None:
    bad = json.dumps({"plan": [{"agent": "ghost", "subtask": "haunt"}]})
    good = json.dumps({"plan": [{"agent": "a", "subtask": "part A"}]})
    model_server.add_rule(model="router", reply=bad, times=1)
    model_server.add_rule(model="router", reply=good, times=1)
    model_server.add_rule(model="router", reply="no json here")
    spec = {
        "models": served_models(model_server, "router", "a", "b", "synth"),
        "agents": [{"name": "a", "model": "a"}, {"name": "b", "model": "b"}],
        "layers": [
            {
                "agents": ["a", "b"],
                "routing": {"mode": "router", "model": "router"},
                "synthesizer": {"model": "synth"},
            }
        ],
    }
    async with MoA(spec, db_url=sqlite_url) as moa:
        repaired = await moa.ainvoke("task one")
        assert sorted(repaired.values["proposals"]["1"]) == ["a"]
        assert any("unknown agent 'ghost'" in n for n in repaired.notes)
        repair_req = [r for r in model_server.requests if r.model == "router"][1]
        assert "unknown agent 'ghost'" in repair_req.prompt

        fallback = await moa.ainvoke("task two")
    assert sorted(fallback.values["proposals"]["1"]) == ["a", "b"]
    assert any("fell back to broadcast" in n for n in fallback.notes)


async def test_messages_input_and_thread_reuse(model_server: ModelServer, sqlite_url: str) -> None:
    spec = layered_spec(model_server, proposers=2, layers=1)
    async with MoA(spec, db_url=sqlite_url) as moa:
        first = await moa.ainvoke({"messages": [HumanMessage("What is 2+2?")]}, thread_id="chat")
        second = await moa.ainvoke("And 3+3?", thread_id="chat")
    assert first.values["task"] == "What is 2+2?"
    assert second.values["task"] == "And 3+3?"
    assert [m.type for m in second.values["messages"]] == ["human", "ai", "human", "ai"]
    # the second run starts clean: no proposals or syntheses from the first one
    assert len(second.values["syntheses"]) == 1
    assert second.usage["calls"] == 3


async def test_failed_agent_is_named_to_the_synthesizer(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="p2", fail=400)
    spec = layered_spec(model_server, layers=1)
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")
    assert result.status == "success"
    assert result.values["proposals"]["1"]["p2"]["status"] == "failed"
    synth = next(r for r in model_server.requests if r.model == "synth")
    assert "p2 failed" in synth.system
    assert any("p2 failed" in n for n in result.notes)


async def test_small_context_window_trims_with_a_note(
    model_server: ModelServer, sqlite_url: str
) -> None:
    long = " ".join(["word"] * 600)
    model_server.add_rule(model="p1", reply=long)
    spec = layered_spec(model_server, proposers=2, layers=1)
    spec["models"]["synth"]["context_window"] = 700
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")
    note = next(n for n in result.notes if "proposal of p1 trimmed" in n)
    kept_tokens = int(re.search(r"to (\d+) tokens", note).group(1))  # type: ignore[union-attr]
    synth = next(r for r in model_server.requests if r.model == "synth")
    assert "trimmed" in synth.system
    # what the synthesizer was SENT for p1: a strict prefix of the proposal, cut to the budget
    proposal = result.values["proposals"]["1"]["p1"]["content"].strip()
    sent = synth.system.split("[1] p1\n", 1)[1].split("\n\n[2] p2", 1)[0]
    assert sent.endswith(" [...]")
    sent_text = sent.removesuffix(" [...]")
    assert proposal.startswith(sent_text) and len(sent_text) < len(proposal)
    assert count_tokens_approximately([HumanMessage(sent_text)]) <= kept_tokens + 2  # rounding
    # p2's short proposal is sent whole
    assert result.values["proposals"]["1"]["p2"]["content"].strip() in synth.system

    spec["layers"][0]["synthesizer"]["on_overflow"] = "fail"
    async with MoA(spec, db_url=sqlite_url) as moa:
        with pytest.raises(Exception, match="context window"):
            await moa.ainvoke("task")


def _moa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_runs_a_custom_spec_file(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    spec_file = tmp_path / "team.yaml"
    spec_file.write_text(yaml.safe_dump(layered_spec(model_server, proposers=2, layers=2)))
    done = _moa(
        "run", "Explain WAL in SQLite.", "--spec", str(spec_file), "--db", sqlite_url, "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "success"
    assert set(result) >= {"thread_id", "run_id", "status", "answer", "usage"}
    assert result["answer"].startswith("synth answer")
    assert result["usage"]["total"]["calls"] == 6
    assert model_server.calls() == 6


BAD_SPECS = {
    "unknown_agent": (
        "agents: [{name: a}]\nlayers:\n  - agents: [a, ghost]\n",
        ":3: layers.0.agents.1: unknown agent 'ghost'",
    ),
    "duplicate": (
        "agents:\n  - name: a\n  - name: a\nlayers: [{agents: [a]}]\n",
        ":3: agents.1.name: duplicate agent name 'a'",
    ),
    "missing_model": (
        "agents: [{name: a, model: gpt}]\nlayers: [{agents: [a]}]\n",
        ":1: agents.0.model: unknown model 'gpt'; add it under `models`",
    ),
    "cycle": (
        "agents:\n  - {name: a, extends: b}\n  - {name: b, extends: a}\nlayers: [{agents: [a]}]\n",
        "`extends` forms a cycle: a -> b -> a",
    ),
    "wrong_type": (
        "agents:\n  - name: a\n    temperature: hot\nlayers: [{agents: [a]}]\n",
        ":3: agents.0.temperature: Input should be a valid number",
    ),
    "yaml_syntax": ("agents: [{name: a}\nlayers: []\n", ":2: YAML syntax error"),
    "unknown_field": (
        "agents: [{name: a}]\nlayers: [{agents: [a], sinthesizer: x}]\n",
        ":2: layers.0.sinthesizer: unknown field",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_gets_one_clear_message(case: str, tmp_path: Path) -> None:
    text, expected = BAD_SPECS[case]
    spec_file = tmp_path / f"{case}.yaml"
    spec_file.write_text(text)
    done = _moa("spec", "validate", str(spec_file))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"{spec_file}{expected}" in done.stderr.replace("\n", "") or expected in done.stderr, (
        done.stderr
    )
    assert str(spec_file) in done.stderr


@pytest.mark.parametrize(("name", "calls"), [("layered", 7), ("team", 2 + 4 + 1 + 1 + 1)])
async def test_presets_run_over_http(
    name: str, calls: int, model_server: ModelServer, sqlite_url: str
) -> None:
    from langgraph_moa.graphs import preset, with_default_model
    from langgraph_moa.spec import ModelSpec

    spec = with_default_model(preset(name), ModelSpec(model="m", base_url=model_server.base_url))
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Explain idempotency keys.")
    assert result.status == "success" and result.answer
    # team: the router's default reply is no plan, so it is repaired once, then broadcast
    assert model_server.calls("m") == calls
    if name == "team":
        assert any("fell back to broadcast" in n for n in result.notes)
