"""Attribution over real HTTP: a synthesizer that cites the numbered proposals and one that
does not (support inferred from overlap); in the Python result, ``moa run --json``, the
live view, the server's thread state and the dashboard."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from langgraph_sdk import get_client

from langgraph_moa.nodes.attribution import attribute, claims_of, strip_citations
from langgraph_moa.runtime import MoA
from langgraph_moa.runtime.progress import RunProgress
from langgraph_moa.testing import ModelServer
from tests.helpers import layered_spec
from tests.test_server_support import Served, serve

PROPOSALS = {
    "p1": "The capital of France is Paris.",
    "p2": "Paris has about 2.1 million inhabitants.",
    "p3": "The Seine river flows through Paris; population 2.1 million.",
}
CITING = (
    "Paris is the capital of France [1]. It has about 2.1 million people. [2, 3]\n"
    "The Seine flows through it.[3] Its museums are famous."
)
CITING_ANSWER = (
    "Paris is the capital of France. It has about 2.1 million people.\n"
    "The Seine flows through it. Its museums are famous."
)
CITING_CLAIMS = [
    {
        "text": "Paris is the capital of France.",
        "agents": ["p1"],
        "proposals": [1],
        "inferred": False,
    },
    {
        "text": "It has about 2.1 million people.",
        "agents": ["p2", "p3"],
        "proposals": [2, 3],
        "inferred": False,
    },
    {"text": "The Seine flows through it.", "agents": ["p3"], "proposals": [3], "inferred": False},
    {"text": "Its museums are famous.", "agents": [], "proposals": [], "inferred": True},
]
PLAIN = "Paris is the capital of France. The Seine flows through Paris."
PLAIN_CLAIMS = [
    {
        "text": "Paris is the capital of France.",
        "agents": ["p1"],
        "proposals": [1],
        "inferred": True,
    },
    {
        "text": "The Seine flows through Paris.",
        "agents": ["p3"],
        "proposals": [3],
        "inferred": True,
    },
]


def _scripted(srv: ModelServer, synth_reply: str) -> dict[str, Any]:
    for agent, text in PROPOSALS.items():
        srv.add_rule(model=agent, reply=text)
    srv.add_rule(model="synth", reply=synth_reply)
    return layered_spec(srv, proposers=3, layers=1)


@pytest.mark.parametrize(
    ("reply", "answer", "claims"),
    [(CITING, CITING_ANSWER, CITING_CLAIMS), (PLAIN, PLAIN, PLAIN_CLAIMS)],
    ids=["cites", "does-not-cite"],
)
async def test_attribution_of_a_synthesis(
    reply: str,
    answer: str,
    claims: list[dict[str, Any]],
    model_server: ModelServer,
    sqlite_url: str,
) -> None:
    spec = _scripted(model_server, reply)
    progress = RunProgress([["p1", "p2", "p3"]])
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Tell me about Paris.", on_event=progress.feed)
    synth = next(r for r in model_server.requests if r.model == "synth")
    assert "[1] p1\nThe capital of France is Paris." in synth.system
    assert "cite the numbers of the responses that support it in brackets" in synth.system
    assert result.answer == answer
    assert result.values["messages"][-1].content == answer
    assert result.attribution == claims
    assert result.to_json()["attribution"] == claims
    cited = sum(not c["inferred"] for c in claims)
    assert result.aggregation["1"]["cited"] == cited
    assert progress.attribution == claims  # the live view got them from the stream
    assert progress.rows["L1_synthesizer"].note == f"synthesized, {cited} claims cited"


def test_citations_are_read_and_removed_but_code_and_indexes_kept() -> None:
    agents = ["p1", "p2", "p3"]
    reply = (
        "Use a list [p2]. Index it with `xs[1]`[1][3].\n"
        "```python\nprint(xs[2]) [1]\n```\n"
        "Out of range [4]. Ranges work [1-2]."
    )
    answer, claims = attribute(reply, agents, ["a list", "index xs", "print xs 2 in python"])
    assert answer == (
        "Use a list. Index it with `xs[1]`.\n```python\nprint(xs[2]) [1]\n```\n"
        "Out of range [4]. Ranges work."
    )
    assert [(c["text"], c["proposals"], c["inferred"]) for c in claims] == [
        ("Use a list.", [2], False),
        ("Index it with `xs[1]`.", [1, 3], False),
        ("```python\nprint(xs[2]) [1]\n```", [3], True),
        ("Out of range [4].", [], True),
        ("Ranges work.", [1, 2], False),
    ]
    assert strip_citations("a[1] b [2]", agents) == "a[1] b"
    assert claims_of("e.g. pi is 3.14. Next!\n---\n- item") == [
        "e.g.",
        "pi is 3.14.",
        "Next!",
        "- item",
    ]


def _moa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_moa_run_json_carries_attribution(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_scripted(model_server, CITING)))
    done = _moa("run", "Paris?", "--spec", str(spec_file), "--db", sqlite_url, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["answer"] == CITING_ANSWER
    assert out["attribution"] == CITING_CLAIMS
    assert out["aggregation"]["1"]["mode"] == "synthesize"
    shown = _moa("run", "Paris?", "--spec", str(spec_file), "--db", sqlite_url)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == CITING_ANSWER
    assert '"It has about 2.1 million people." <- p2, p3' in shown.stderr  # the live view
    assert '"Its museums are famous." <- no proposal (inferred)' in shown.stderr


async def test_select_and_vote_attribute_the_copied_proposal(
    model_server: ModelServer, sqlite_url: str
) -> None:
    spec = _scripted(model_server, "[3]\nIt adds the river.")
    spec["layers"][0]["synthesizer"]["mode"] = "select"
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Paris?")
    assert result.answer == PROPOSALS["p3"]
    assert result.attribution == [
        {"text": PROPOSALS["p3"], "agents": ["p3"], "proposals": [3], "inferred": False}
    ]


@pytest.fixture
def served_citing(tmp_path: Path, model_server: ModelServer) -> Iterator[Served]:
    spec = _scripted(model_server, CITING)
    spec["name"] = "cites"
    yield from serve(tmp_path, [spec], f"sqlite:///{tmp_path / 'moa.sqlite'}")


async def test_server_state_and_dashboard_carry_attribution(served_citing: Served) -> None:
    client = get_client(url=served_citing.url)
    thread = await client.threads.create()
    values = await client.runs.wait(thread["thread_id"], "cites", input={"task": "Paris?"})
    assert isinstance(values, dict)
    assert values["answer"] == CITING_ANSWER
    assert values["attribution"] == CITING_CLAIMS
    state = await client.threads.get_state(thread["thread_id"])
    assert state["values"]["attribution"] == CITING_CLAIMS
    assert state["values"]["aggregation"]["1"]["cited"] == 3
    run = (await client.runs.list(thread["thread_id"]))[0]
    page = httpx.get(f"{served_citing.url}/ui/runs/{thread['thread_id']}/{run['run_id']}")
    assert page.status_code == 200
    assert 'id="attribution"' in page.text and "Sources (4 claims)" in page.text
    assert (
        '<li data-agents="p2,p3"><span class="text">It has about 2.1 million people.</span> '
        '<span class="sub">&larr; p2, p3</span></li>'
    ) in page.text
    assert "no proposal (inferred)" in page.text
    assert '<span class="aggregation">synthesized, 3 claims cited</span>' in page.text


def test_a_huge_citation_range_is_no_citation_and_costs_nothing() -> None:
    """A proposal or tool output can carry ``[1-99999999999]``: it is text, never a list of
    that many numbers (that took seconds, or all the memory)."""
    reply = "Paris is big [1-99999999999]. Lyon is not [2-1]. Nice is [1-2]."
    answer, claims = attribute(reply, ["p1", "p2"], ["paris big", "lyon", "nice"])
    assert answer == "Paris is big [1-99999999999]. Lyon is not [2-1]. Nice is."
    assert [(c["text"], c["proposals"], c["inferred"]) for c in claims][2] == (
        "Nice is.",
        [1, 2],
        False,
    )
    assert strip_citations(reply, ["p1", "p2"]).startswith("Paris is big [1-99999999999].")
