"""Threads are conversations: a second turn answers the second question, with the first
turn (question and final answer, no proposals) as context; through the Python API, the
official SDK against ``moa serve``, and the CLI (``moa run --thread``, ``moa chat``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from langchain_core.messages import HumanMessage
from langgraph_sdk import get_client

from langgraph_moa.runtime import MoA
from langgraph_moa.testing import ChatRequest, ModelServer
from tests.helpers import layered_spec
from tests.test_server_support import Served, serve

Q1, Q2, Q3 = "What is a B-tree?", "And how does an LSM-tree differ?", "Which one for logs?"


def chat_spec(srv: ModelServer, **layer: Any) -> dict[str, Any]:
    """Two proposers and a synthesizer whose replies name the prompt they answered."""
    srv.add_rule(model="synth", template="ANSWER to [{last_user}] {digest}")
    srv.add_rule(template="{model} proposes {digest}")
    spec = layered_spec(srv, proposers=2, layers=1, **layer)
    spec["name"] = "moa"
    return spec


def check_second_turn(
    requests: list[ChatRequest], first: dict[str, Any], question: str, answer: str
) -> None:
    """Every call of the second turn: the earlier question and answer as chat context,
    then ``question`` as the task; none of the first turn's proposals."""
    assert {r.model for r in requests} == {"p1", "p2", "synth"}
    old_proposals = [p["content"] for p in first.values()]
    for req in requests:
        roles = [m["role"] for m in req.messages]
        assert roles == ["system", "user", "assistant", "user"], (req.model, roles)
        assert req.messages[1]["content"] == Q1
        assert req.messages[2]["content"] == answer
        assert req.last_user == question
        for text in old_proposals:
            assert text not in req.prompt


async def test_two_turns_python_api(model_server: ModelServer, sqlite_url: str) -> None:
    spec = chat_spec(model_server)
    async with MoA(spec, db_url=sqlite_url) as moa:
        first = await moa.ainvoke(Q1, thread_id="conv")
        turn1 = len(model_server.requests)
        # the second question as a chat message, as chat front ends send it
        second = await moa.ainvoke({"messages": [HumanMessage(Q2)]}, thread_id="conv")
        turn2 = model_server.requests[turn1:]
        third = await moa.ainvoke(Q3, thread_id="conv")

    assert first.answer and first.answer.startswith(f"ANSWER to [{Q1}]")
    assert second.answer and second.answer.startswith(f"ANSWER to [{Q2}]")
    check_second_turn(turn2, first.values["proposals"]["1"], Q2, first.answer)
    messages = third.values["messages"]
    assert [(m.type, m.text) for m in messages] == [
        ("human", Q1),
        ("ai", first.answer),
        ("human", Q2),
        ("ai", second.answer),
        ("human", Q3),
        ("ai", third.answer),
    ]
    # state does not grow with turns: this turn's proposals, syntheses and usage only
    assert list(third.values["proposals"]) == ["1"]
    assert third.values["syntheses"] == [third.answer]
    assert third.usage["calls"] == 3
    assert third.values["task"] == Q3


async def test_same_question_twice_is_asked_again(
    model_server: ModelServer, sqlite_url: str
) -> None:
    spec = chat_spec(model_server)
    async with MoA(spec, db_url=sqlite_url) as moa:
        await moa.ainvoke(Q1, thread_id="again")
        again = await moa.ainvoke(Q1, thread_id="again")
    assert [m.type for m in again.values["messages"]] == ["human", "ai", "human", "ai"]
    assert again.values["messages"][2].text == Q1


async def test_old_turns_are_left_out_first_with_a_note(
    model_server: ModelServer, sqlite_url: str
) -> None:
    spec = chat_spec(model_server)
    long_question = " ".join(["padding"] * 300)
    # p1's window holds the newest earlier turn but not the long first one
    spec["models"]["p1"]["context_window"] = 600
    spec["defaults"] = {"max_tokens": 64}
    async with MoA(spec, db_url=sqlite_url) as moa:
        await moa.ainvoke(long_question, thread_id="long")
        second = await moa.ainvoke(Q2, thread_id="long")
        mark = len(model_server.requests)
        third = await moa.ainvoke(Q3, thread_id="long")
    calls = {r.model: r for r in model_server.requests[mark:]}
    p1, p2 = calls["p1"], calls["p2"]
    assert long_question not in p1.prompt and "The 1 oldest of its 2 earlier turns" in p1.system
    assert [m["content"] for m in p1.messages[1:]] == [Q2, second.answer, Q3]
    assert long_question in p2.prompt and "oldest" not in p2.system  # p2's window holds both
    assert "layer 1: p1 saw 1 of 2 earlier turns (context window)" in third.notes


@pytest.fixture
def served(tmp_path: Path, model_server: ModelServer) -> Iterator[Served]:
    yield from serve(tmp_path, [chat_spec(model_server)], f"sqlite:///{tmp_path / 'moa.sqlite'}")


async def test_two_turns_through_the_sdk(served: Served, model_server: ModelServer) -> None:
    client = get_client(url=served.url)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    # Agent Chat UI sends only the new human message of each turn
    first = await client.runs.wait(
        tid, "moa", input={"messages": [{"type": "human", "content": Q1}]}
    )
    assert isinstance(first, dict)
    turn1 = len(model_server.requests)
    second = await client.runs.wait(
        tid, "moa", input={"messages": [{"type": "human", "content": Q2}]}
    )
    assert isinstance(second, dict)
    check_second_turn(model_server.requests[turn1:], first["proposals"]["1"], Q2, first["answer"])
    state = await client.threads.get_state(tid)
    values: Any = state["values"]
    assert [(m["type"], m["content"]) for m in values["messages"]] == [
        ("human", Q1),
        ("ai", first["answer"]),
        ("human", Q2),
        ("ai", second["answer"]),
    ]
    assert second["answer"].startswith(f"ANSWER to [{Q2}]")


def _moa(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def test_two_turns_through_the_cli(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    spec_file = tmp_path / "chat.yaml"
    spec_file.write_text(yaml.safe_dump(chat_spec(model_server)))
    common = ["--spec", str(spec_file), "--db", sqlite_url, "--json"]
    done = _moa("run", Q1, "--thread", "cli-chat", *common)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    turn1 = len(model_server.requests)
    done = _moa("run", Q2, "--thread", "cli-chat", *common)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    proposals = {  # what the proposers' rule answered in the first turn
        r.model: {"content": f"{r.model} proposes {r.digest}"}
        for r in model_server.requests[:turn1]
        if r.model != "synth"
    }
    check_second_turn(model_server.requests[turn1:], proposals, Q2, first["answer"])
    assert second["answer"].startswith(f"ANSWER to [{Q2}]")


def test_moa_chat_holds_a_conversation_on_stdin(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    spec_file = tmp_path / "chat.yaml"
    spec_file.write_text(yaml.safe_dump(chat_spec(model_server)))
    common = ["--spec", str(spec_file), "--db", sqlite_url]
    done = _moa("chat", "--thread", "tty", *common, stdin=f"{Q1}\n\n{Q2}\n")
    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.splitlines() if line.startswith("moa> ")]
    assert len(answers) == 2
    assert answers[0].startswith(f"moa> ANSWER to [{Q1}]")
    assert answers[1].startswith(f"moa> ANSWER to [{Q2}]")
    synth = [r for r in model_server.requests if r.model == "synth"]
    assert [m["content"] for m in synth[1].messages[1:]] == [Q1, answers[0][5:], Q2]
    assert "moa chat --thread tty" in done.stderr

    # a later session shows the conversation so far and continues it
    again = _moa("chat", "--thread", "tty", *common, stdin=f"{Q3}\n/exit\nnot sent\n")
    assert again.returncode == 0, again.stderr
    assert f"you> {Q1}" in again.stderr and answers[1] in again.stderr
    assert again.stdout.count("moa> ") == 1
    last = [r for r in model_server.requests if r.model == "synth"][-1]
    assert last.last_user == Q3 and len(last.messages) == 6  # system, 2 turns, the question


def _ids(messages: list[Any]) -> list[Any]:
    for i, m in enumerate(messages):
        m.id = m.id or f"m{i}"
    return messages


def test_prepare_picks_the_question_of_the_turn() -> None:
    from langchain_core.messages import AIMessage

    from langgraph_moa.graphs import prepare
    from langgraph_moa.graphs.builder import TaskError

    h1, a1 = HumanMessage(Q1, id="h1"), AIMessage("A1", id="a1")
    # a new human message after the previous question is this turn's question
    update = prepare({"task": Q1, "asked": "h1", "messages": [h1, a1, HumanMessage(Q2, id="h2")]})
    assert (update["task"], update["asked"]) == (Q2, "h2") and "messages" not in update
    # a task given with this input is appended as the turn's human message
    update = prepare({"task": Q2, "asked": "h1", "messages": [h1, a1]})
    assert update["task"] == Q2 and [m.text for m in update["messages"]] == [Q2]
    assert update["asked"] == update["messages"][0].id
    # threads from before `asked`: the answered question is the last human before an answer
    update = prepare({"task": Q1, "messages": _ids([h1, a1, HumanMessage(Q3)])})
    assert update["task"] == Q3
    update = prepare({"task": Q3, "messages": [h1, a1]})
    assert update["task"] == Q3 and update["messages"][0].text == Q3
    # an unanswered question stays a turn of its own; the new message is asked
    update = prepare({"task": Q1, "asked": "h1", "messages": [h1, HumanMessage(Q2, id="h2")]})
    assert update["task"] == Q2
    with pytest.raises(TaskError, match="no task given"):
        prepare({"task": "   ", "messages": []})


def test_earlier_turns_and_fitting() -> None:
    from langchain_core.messages import AIMessage

    from langgraph_moa.nodes.conversation import (
        earlier_turns,
        fit_turns,
        tokens_of,
        turn_messages,
        with_history,
    )

    messages = [
        HumanMessage("q1", id="h1"),
        AIMessage("a1"),
        HumanMessage("q2 unanswered", id="h2"),
        HumanMessage("q3", id="h3"),
        AIMessage("a3"),
        HumanMessage("now", id="h4"),
    ]
    turns = earlier_turns({"messages": messages, "asked": "h4"})
    assert turns == [
        {"question": "q1", "answer": "a1"},
        {"question": "q2 unanswered", "answer": ""},
        {"question": "q3", "answer": "a3"},
    ]
    assert earlier_turns({"messages": messages, "asked": "h3"}) == turns[:2]
    newest_two = tokens_of(turn_messages(turns[1:]))
    assert fit_turns(turns, budget=newest_two + 1) == (turns[1:], 1)  # oldest left out first
    assert fit_turns(turns, budget=newest_two - 1) == (turns[2:], 2)
    kept, dropped = turns[1:], 1
    assert fit_turns(turns, budget=0) == ([], 3)
    from langchain_core.messages import SystemMessage

    prompt = with_history([SystemMessage("sys"), HumanMessage("now")], kept, dropped)
    assert [m.type for m in prompt] == ["system", "human", "human", "ai", "human"]
    assert "The 1 oldest of its 3 earlier turns were left out" in prompt[0].text
