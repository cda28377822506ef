"""Aggregation modes of a layer over real HTTP: vote (majority, tie, low agreement), select
(the picked proposal as written, an unreadable pick), spec errors, the CLI option."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from langgraph_moa.nodes.aggregation import extract_answer, normalize_answer, parse_pick, tally
from langgraph_moa.runtime import MoA
from langgraph_moa.spec import SpecError, load_spec
from langgraph_moa.testing import ModelServer
from tests.helpers import layered_spec


def _spec(srv: ModelServer, mode: str, proposers: int = 3, **synth: object) -> dict[str, object]:
    spec = layered_spec(srv, proposers=proposers, layers=1)
    spec["layers"][0]["synthesizer"] = {"model": "synth", "mode": mode, **synth}  # type: ignore[index]
    return spec


async def test_vote_with_a_clear_majority_makes_no_synthesizer_call(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="p1", reply="4 trays of 12 muffins.\nThe answer is 48.")
    model_server.add_rule(model="p2", reply="**48**")
    model_server.add_rule(model="p3", reply="I count 4 x 11 = 44")
    async with MoA(_spec(model_server, "vote"), db_url=sqlite_url) as moa:
        result = await moa.ainvoke("How many muffins?")
    assert result.status == "success"
    assert [r.model for r in model_server.requests].count("synth") == 0
    assert len(model_server.requests) == 3
    assert result.answer == "4 trays of 12 muffins.\nThe answer is 48."  # p1's, as written
    assert result.aggregation == {
        "1": {
            "mode": "vote",
            "proposals": ["p1", "p2", "p3"],
            "answers": {"p1": "48", "p2": "48", "p3": "I count 4 x 11 = 44"},
            "votes": {"48": 2, "44": 1},
            "winner": "48",
            "agreement": 0.6667,
            "agent": "p1",
            "decided_by": "vote",
            "reason": "2 of 3 agents gave '48'",
        }
    }
    assert "synthesizer_L1" not in result.usage_by_agent
    assert any("vote: '48' x2 (p1, p2), '44' x1 (p3)" in n for n in result.notes)


@pytest.mark.parametrize(
    ("replies", "min_agreement", "why"),
    [
        (["Yes.", "No, it is not.", "yes, it is", "no"], None, "a tie"),
        (["B", "(B)", "C", "Option A", "d)"], None, "agreement 40% below 50%"),
        (["7", "seven", "8"], 0.9, "agreement 67% below 90%"),
    ],
)
async def test_a_split_vote_goes_to_the_synthesizer(
    replies: list[str],
    min_agreement: float | None,
    why: str,
    model_server: ModelServer,
    sqlite_url: str,
) -> None:
    for i, reply in enumerate(replies, 1):
        model_server.add_rule(model=f"p{i}", reply=reply)
    model_server.add_rule(model="synth", reply="Decided: yes.")
    extra = {"min_agreement": min_agreement} if min_agreement else {}
    spec = _spec(model_server, "vote", proposers=len(replies), **extra)
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Is it?")
    synth = [r for r in model_server.requests if r.model == "synth"]
    assert len(synth) == 1
    assert result.answer == "Decided: yes."
    record = result.aggregation["1"]
    assert record["decided_by"] == "synthesizer" and record["winner"] is None
    assert record["reason"] == f"{why}: the synthesizer decided"
    assert "the agents' final answers disagree (" in synth[0].system
    for reply in replies:
        assert reply in synth[0].system
    assert result.usage_by_agent["synthesizer_L1"]["calls"] == 1


async def test_select_returns_the_picked_proposal_byte_for_byte(
    model_server: ModelServer, sqlite_url: str
) -> None:
    picked = "  Step 1: *think*.\n\n    Step 2: answer **42**  \n\t[done]"
    model_server.add_rule(model="p2", reply=picked)
    model_server.add_rule(model="synth", reply="[2]\nIt shows its work and checks it.")
    async with MoA(_spec(model_server, "select"), db_url=sqlite_url) as moa:
        result = await moa.ainvoke("What is six times seven?")
    assert result.answer == picked
    assert result.values["messages"][-1].content == picked
    synth = [r for r in model_server.requests if r.model == "synth"]
    assert len(synth) == 1
    assert "[1] p1\n" in synth[0].system and "[2] p2\n" in synth[0].system
    assert result.aggregation["1"] == {
        "mode": "select",
        "proposals": ["p1", "p2", "p3"],
        "decided_by": "select",
        "choice": 2,
        "agent": "p2",
        "reason": "It shows its work and checks it.",
    }


async def test_select_sends_an_unreadable_pick_back_once_then_falls_back(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="synth", reply="They are all fine.")
    async with MoA(_spec(model_server, "select"), db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Pick one.")
    synth = [r for r in model_server.requests if r.model == "synth"]
    assert len(synth) == 2
    assert synth[1].last_user.startswith("Your reply names no response by its number")
    assert "one of [1], [2], [3]" in synth[1].last_user
    assert result.answer == result.values["proposals"]["1"]["p1"]["content"]
    record = result.aggregation["1"]
    assert record["decided_by"] == "fallback" and record["choice"] is None
    assert record["reason"] == (
        "the synthesizer's pick could not be read ('They are all fine.'); took proposal [1]"
    )
    assert any("select: the synthesizer's pick could not be read" in n for n in result.notes)
    assert result.usage_by_agent["synthesizer_L1"]["calls"] == 2


async def test_select_takes_the_repaired_pick(model_server: ModelServer, sqlite_url: str) -> None:
    model_server.add_rule(model="synth", reply="Hmm, hard to say.", times=1)
    model_server.add_rule(model="synth", json={"choice": 3, "reason": "most complete"})
    async with MoA(_spec(model_server, "select"), db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Pick one.")
    assert result.answer == result.values["proposals"]["1"]["p3"]["content"]
    assert result.aggregation["1"]["choice"] == 3
    assert result.aggregation["1"]["reason"] == "most complete"


async def test_vote_in_a_first_layer_feeds_the_next(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="p1", last_user="Q", reply="Paris", times=1)
    model_server.add_rule(model="p2", last_user="Q", reply="paris.", times=1)
    spec = layered_spec(model_server, proposers=3, layers=2)
    spec["layers"][0]["synthesizer"] = {"model": "synth", "mode": "vote"}
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Q")
    assert result.values["syntheses"][0] == "Paris"
    second = [r for r in model_server.requests if r.model == "p3"][1]
    assert "Paris" in second.system
    assert result.aggregation["1"]["decided_by"] == "vote"
    assert result.aggregation["2"]["mode"] == "synthesize"
    assert [r.model for r in model_server.requests].count("synth") == 1


@pytest.mark.parametrize(
    ("text", "answer", "key"),
    [
        ("The answer is 1,000.50!", "1,000.50", "1000.5"),
        ("Working...\nFinal answer: $48", "$48", "48"),
        ("so \\boxed{12} it is", "12", "12"),
        ("Seven", "Seven", "7"),
        ("**(B)** Paris", "(B) Paris", "(b)"),
        ("B.", "B", "(b)"),
        ("Answer: option c", "option c", "(c)"),
        ("A dog.", "A dog", "dog"),
        ("True", "True", "yes"),
        ("No, because it is odd.", "No, because it is odd", "no"),
        ("- The Pacific Ocean.", "The Pacific Ocean", "pacific ocean"),
        ("  ", None, None),
    ],
)
def test_final_answers_are_extracted_and_normalized(
    text: str, answer: str | None, key: str | None
) -> None:
    assert extract_answer(text) == answer
    assert (normalize_answer(answer) if answer else None) == key


def test_tally_counts_every_proposal_in_the_agreement() -> None:
    vote = tally({"a": "42", "b": "", "c": "42", "d": "41"})
    assert vote.votes == {"42": 2, "41": 1}
    assert vote.agreement == 0.5 and vote.winner == "42" and vote.agent == "a"
    assert vote.describe() == "'42' x2 (a, c), '41' x1 (d), no answer found (b)"
    tie = tally({"a": "1", "b": "2"})
    assert tie.tie and tie.winner is None and tie.agent is None


@pytest.mark.parametrize(
    ("reply", "choice", "reason"),
    [
        ("[2]\nclearest", 2, "clearest"),
        ('{"choice": "3", "reason": "complete"}', 3, "complete"),
        ("The best is response 1 because it is right.", 1, None),
        ("Proposal #2", 2, None),
        ("2.\nshortest", 2, "shortest"),
        ("The answer is 2.", None, None),
        ("2 books cost 14 dollars", None, None),
        ("[7]", None, None),
        ("p3 is the most careful", 3, None),
        ("none", None, None),
    ],
)
def test_a_pick_is_read_from_the_reply(reply: str, choice: int | None, reason: str | None) -> None:
    pick = parse_pick(reply, 3, ["p1", "p2", "p3"])
    assert pick.choice == choice
    assert pick.reason == (reason if reason is not None else reply)


@pytest.mark.parametrize(
    ("synth", "expected"),
    [
        (
            "{mode: poll}",
            ":4: layers.0.synthesizer.mode: 'poll' is not allowed; use one of 'synthesize', "
            "'vote', 'select' or 'concat'",
        ),
        (
            "{mode: synthesize, min_agreement: 0.6}",
            ":4: layers.0.synthesizer: `min_agreement` is only used with mode 'vote'",
        ),
        (
            "{mode: vote, min_agreement: 1.5}",
            ":4: layers.0.synthesizer.min_agreement: Input should be less than or equal to 1",
        ),
        (
            "pol",
            ":4: layers.0.synthesizer.model: unknown model 'pol'; add it under `models` "
            "(known: none defined), or give a mode: 'synthesize', 'vote', 'select', 'concat'",
        ),
    ],
)
def test_bad_aggregation_is_a_spec_error_with_its_line(
    synth: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(f"agents: [{{name: a}}]\nlayers:\n  - agents: [a]\n    synthesizer: {synth}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert f"{path}{expected}" in str(caught.value)


def test_the_python_api_and_the_preset_take_the_mode() -> None:
    from langgraph_moa.graphs import SpecBuilder, layered, with_aggregation

    spec = layered(aggregation="vote")
    assert [layer.synthesizer.mode for layer in spec.layers] == ["concat", "vote"]
    built = SpecBuilder().agent("a").layer(["a"], aggregation="select").build()
    assert built.layers[0].synthesizer.mode == "select"
    voted = with_aggregation(built, "vote", min_agreement=0.75)
    assert voted.layers[0].synthesizer.min_agreement == 0.75
    # the new field, unset, leaves the hash of a spec as it was before it existed
    assert SpecBuilder().agent("a").layer(["a"]).build().spec_hash() == "6d71b5e90f61a525"
    assert layered().spec_hash() == "fc3aad9dc1621d48"


def _moa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_aggregation_option(model_server: ModelServer, sqlite_url: str, tmp_path: Path) -> None:
    model_server.add_rule(model="p[12]", reply="Answer: 9")
    model_server.add_rule(model="p3", reply="Answer: 4")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(layered_spec(model_server, proposers=3, layers=1)))
    done = _moa(
        "run", "3 x 3?", "--spec", str(spec_file), "--aggregation", "vote", "--db", sqlite_url,
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["answer"] == "Answer: 9"
    assert out["aggregation"]["1"]["votes"] == {"9": 2, "4": 1}
    assert out["aggregation"]["1"]["agreement"] == 0.6667
    assert model_server.calls("synth") == 0
    bad = _moa("run", "x", "--spec", str(spec_file), "--aggregation", "poll", "--db", sqlite_url)
    assert bad.returncode == 2
    assert "--aggregation 'poll': use one of synthesize, vote, select, concat" in bad.stderr


def test_the_live_view_and_dashboard_summarize_each_mode() -> None:
    from langgraph_moa.runtime.progress import aggregation_summary, claim_line

    voted = {
        "mode": "vote",
        "decided_by": "vote",
        "proposals": ["p1", "p2", "p3"],
        "votes": {"48": 2, "44": 1},
        "winner": "48",
        "agreement": 0.6667,
        "agent": "p1",
    }
    assert aggregation_summary(voted) == "vote '48' 2/3 (67%): p1"
    split = {
        "mode": "vote",
        "decided_by": "synthesizer",
        "reason": "a tie: the synthesizer decided",
    }
    assert aggregation_summary(split) == "vote split, synthesized (a tie)"
    assert aggregation_summary(
        {"mode": "select", "decided_by": "select", "choice": 2, "agent": "p2"}
    ) == ("select [2] p2")
    fallback = {"mode": "select", "decided_by": "fallback", "agent": "p1"}
    assert aggregation_summary(fallback) == "select: pick unreadable, took [1] p1"
    assert aggregation_summary({"mode": "concat", "decided_by": "concat"}) == "concat"
    long = {"text": "word " * 30, "agents": ["p1", "p2"], "inferred": True}
    assert claim_line(long, width=20) == '  "word word word wo..." <- p1, p2 (inferred)'
