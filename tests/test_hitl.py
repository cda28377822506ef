"""Human in the loop: pause before a synthesizer or after a node, approve or edit, go on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from langgraph.types import Command

from langgraph_moa.nodes import QuorumError
from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.runtime import MoA
from langgraph_moa.runtime.runs import RunError
from langgraph_moa.testing import ModelServer
from tests.durable_helpers import AGENTS, durable_spec, moa, write_spec
from tests.test_server_support import synthesis

MODELS = ("m1", "m2", "m3", "m4", "synth")


def counts(srv: ModelServer) -> dict[str, int]:
    return {m: srv.calls(m) for m in MODELS}


def synth_prompts(srv: ModelServer) -> list[str]:
    return [r.system for r in srv.requests if r.model == "synth"]


def latest(db_url: str, thread_id: str) -> Any:
    async def get() -> Any:
        async with RunRegistry.from_url(db_url) as reg:
            await reg.setup()
            run = await reg.latest_run(thread_id)
            thread = await reg.get_thread(thread_id)
            return run, thread

    return asyncio.run(get())


def paused_spec(srv: ModelServer) -> dict[str, Any]:
    spec = durable_spec(srv)
    spec["layers"][0]["interrupt_before_synthesis"] = True
    return spec


@pytest.mark.slow
def test_approve_from_the_cli(model_server: ModelServer, sqlite_url: str, tmp_path: Path) -> None:
    srv = model_server
    spec_file = write_spec(tmp_path / "spec.json", paused_spec(srv))
    paused = json.loads(
        moa(
            "run", "Plan a trip", "-s", str(spec_file), "--db", sqlite_url, "-t", "h1", "--json"
        ).stdout
    )
    assert paused["status"] == "interrupted"
    assert paused["interrupts"][0]["kind"] == "approve_synthesis"
    assert sorted(paused["interrupts"][0]["proposals"]) == list(AGENTS)
    run, thread = latest(sqlite_url, "h1")
    assert run.status == "interrupted" and thread.status == "interrupted"
    assert run.waiting_for[0]["kind"] == "approve_synthesis" and run.owner_token is None
    assert counts(srv) == {"m1": 1, "m2": 1, "m3": 1, "m4": 1, "synth": 0}

    # A plain resume does not decide for the person.
    refused = moa("resume", "h1", "--db", sqlite_url, check=False)
    assert refused.returncode == 1
    assert "waits for approval of layer 1's proposals (a1, a2, a3, a4)" in refused.stderr
    assert "--approve" in refused.stderr
    assert counts(srv)["synth"] == 0

    done = json.loads(moa("resume", "h1", "--db", sqlite_url, "--approve", "--json").stdout)
    assert done["status"] == "success" and done["answer"] == synthesis(srv)
    assert counts(srv) == {"m1": 2, "m2": 2, "m3": 2, "m4": 2, "synth": 2}
    run, thread = latest(sqlite_url, "h1")
    assert run.status == "success" and run.attempts == 2 and thread.status == "idle"
    assert run.waiting_for is None


@pytest.mark.slow
def test_edit_a_proposal_from_the_cli(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    srv = model_server
    spec_file = write_spec(tmp_path / "spec.json", paused_spec(srv))
    moa("run", "Plan a trip", "-s", str(spec_file), "--db", sqlite_url, "-t", "h2", "--json")

    bad = moa("resume", "h2", "--db", sqlite_url, "--edit", "nobody=x", check=False)
    assert bad.returncode == 1 and "--edit names ['nobody']" in bad.stderr
    malformed = moa("resume", "h2", "--db", sqlite_url, "--edit", "a1", check=False)
    assert malformed.returncode == 2 and "AGENT=TEXT" in malformed.stderr

    done = json.loads(
        moa(
            "resume", "h2", "--db", sqlite_url, "--edit", "a3=Take the night train.", "--json"
        ).stdout
    )
    assert done["status"] == "success"
    layer1 = synth_prompts(srv)[0]
    assert "] a3\nTake the night train." in layer1
    assert "] a1\nm1 answer" in layer1  # the others are kept as they were
    assert counts(srv) == {"m1": 2, "m2": 2, "m3": 2, "m4": 2, "synth": 2}


async def test_resume_values_through_the_python_api(
    model_server: ModelServer, sqlite_url: str
) -> None:
    srv = model_server
    async with MoA(paused_spec(srv), db_url=sqlite_url) as app:
        first = await app.ainvoke("Plan a trip", thread_id="p1")
        assert first.status == "interrupted" and first.interrupts[0]["layer"] == 1
        assert app.registry is not None
        assert (await app.registry.latest_run("p1")).status == "interrupted"  # type: ignore[union-attr]

        done = await app.ainvoke(thread_id="p1", resume={"proposals": {"a2": "Edited in code."}})
        assert done.status == "success"
        assert done.values["proposals"]["1"]["a2"]["content"] == "Edited in code."
        record = await app.registry.latest_run("p1")
        assert record is not None and record.status == "success" and record.attempts == 2

        again = await app.ainvoke("Plan a trip", thread_id="p2")
        assert again.status == "interrupted"
        done2 = await app.ainvoke(thread_id="p2", resume=Command(resume={"approved": True}))
        assert done2.status == "success"
    assert "] a2\nEdited in code." in synth_prompts(srv)[0]


@pytest.mark.parametrize("ledger", ["full", "hashes"])
async def test_a_layer_below_quorum_is_retried_before_the_review(
    model_server: ModelServer, db_url: str, ledger: str
) -> None:
    # with `ledger: hashes` no reply is kept to answer a call again: the proposal the
    # reviewer saw comes from the checkpointed retry
    srv = model_server
    spec = {**paused_spec(srv), "ledger": ledger}
    spec["layers"] = [{**spec["layers"][0], "min_proposals": 4}]
    srv.add_rule(model="m2", fail=500, times=1)
    srv.add_rule(model="m2", reply="a2, retried", times=1)
    srv.add_rule(model="m2", reply="a2, asked a third time")
    async with MoA(spec, db_url=db_url) as app:
        with pytest.raises(QuorumError, match=r"layer 1: 3 of 4 agents answered, 4 needed"):
            await app.ainvoke("Plan a trip", thread_id="q1")
        assert app.registry is not None
        record = await app.registry.latest_run("q1")
        assert record is not None and record.status == "error" and not record.waiting_for
        assert counts(srv) == {"m1": 1, "m2": 1, "m3": 1, "m4": 1, "synth": 0}

        # the resume retries a2, then the reviewer is shown its new proposal
        paused = await app.ainvoke(thread_id="q1")
        assert paused.status == "interrupted"
        (asked,) = paused.interrupts
        assert asked["kind"] == "approve_synthesis" and sorted(asked["proposals"]) == list(AGENTS)
        assert asked["proposals"]["a2"] == "a2, retried"
        assert counts(srv) == {"m1": 1, "m2": 2, "m3": 1, "m4": 1, "synth": 0}

        done = await app.ainvoke(thread_id="q1", resume=True)
    assert done.status == "success" and done.answer == synthesis(srv)
    assert counts(srv) == {"m1": 1, "m2": 2, "m3": 1, "m4": 1, "synth": 1}
    assert done.values["proposals"]["1"]["a2"]["content"] == "a2, retried"
    (sent,) = synth_prompts(srv)
    for agent, content in asked["proposals"].items():  # exactly what the reviewer saw
        assert f"] {agent}\n{content}\n" in sent + "\n"


@pytest.mark.slow
def test_edit_the_plan_after_the_router(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    srv = model_server
    spec_file = write_spec(tmp_path / "spec.json", durable_spec(srv))
    paused = json.loads(
        moa(
            "run", "Plan a trip", "-s", str(spec_file), "--db", sqlite_url, "-t", "r1",
            "--pause-after", "L1_router", "--json",
        ).stdout
    )  # fmt: skip
    assert paused["status"] == "interrupted" and paused["next"] == [f"L1_{a}" for a in AGENTS]
    assert counts(srv) == dict.fromkeys(MODELS, 0)
    run, _ = latest(sqlite_url, "r1")
    assert run.waiting_for == [{"kind": "paused", "next": [f"L1_{a}" for a in AGENTS]}]

    plan = tmp_path / "plan.yaml"
    plan.write_text('plan:\n  - {agent: a2, subtask: "Only the budget, please."}\n')
    done = json.loads(
        moa("resume", "r1", "--db", sqlite_url, "--edit-file", str(plan), "--json").stdout
    )
    assert done["status"] == "success"
    # Layer 1 ran a2 alone, with the edited subtask; layer 2 ran everyone.
    assert counts(srv) == {"m1": 1, "m2": 2, "m3": 1, "m4": 1, "synth": 2}
    first = next(r for r in srv.requests if r.model == "m2")
    assert "Your part: Only the budget, please." in first.last_user

    bad = tmp_path / "bad.yaml"
    bad.write_text("plan: [{agent: zz, subtask: x}]\n")
    moa("run", "Plan", "-s", str(spec_file), "--db", sqlite_url, "-t", "r2",
        "--pause-after", "L1_router", "--json")  # fmt: skip
    refused = moa("resume", "r2", "--db", sqlite_url, "--edit-file", str(bad), check=False)
    assert refused.returncode == 1 and "unknown agent 'zz'" in refused.stderr
    run, _ = latest(sqlite_url, "r2")
    assert run.status == "interrupted"  # nothing changed: still paused, resumable


async def test_pause_after_agents_and_edit_in_code(
    model_server: ModelServer, sqlite_url: str
) -> None:
    srv = model_server
    async with MoA(durable_spec(srv), db_url=sqlite_url, interrupt_after=["a1"]) as app:
        first = await app.ainvoke("Plan a trip", thread_id="s1")
        assert first.status == "interrupted" and first.next == ["L1_synthesizer"]
        assert first.waiting_for == [{"kind": "paused", "next": ["L1_synthesizer"]}]
        with pytest.raises(RunError, match="only be edited while the run is paused after a"):
            await app.aedit("s1", plan=[{"agent": "a1", "subtask": "x"}])
        await app.aedit("s1", proposals={"a4": "Human text."})
        second = await app.ainvoke(thread_id="s1")
        assert second.status == "interrupted" and second.next == ["L2_synthesizer"]
        done = await app.ainvoke(thread_id="s1")
        assert done.status == "success"
        record = await app.registry.latest_run("s1")  # type: ignore[union-attr]
        assert record is not None and record.attempts == 3 and record.status == "success"
    assert "] a4\nHuman text." in synth_prompts(srv)[0]
    assert counts(srv) == {"m1": 2, "m2": 2, "m3": 2, "m4": 2, "synth": 2}
    with pytest.raises(ValueError, match="cannot pause after 'nobody'"):
        MoA(durable_spec(srv), interrupt_after=["nobody"])
