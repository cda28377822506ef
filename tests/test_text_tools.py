"""Tool calling through text for the embedded model (``models/_text_tools.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from langgraph_moa.models._text_tools import decode_reply, encode_messages, parse_calls


@tool
def python(code: str) -> str:
    """Run Python code; returns what it prints."""
    return code


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


PY = [convert_to_openai_tool(python)]
BOTH = [convert_to_openai_tool(python), convert_to_openai_tool(add)]


def functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t["function"] for t in tools]


def test_a_json_call_of_a_known_tool_is_parsed() -> None:
    text = 'Let me add.\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 40}}</tool_call>'
    rest, calls = parse_calls(text, functions(BOTH))
    assert rest == "Let me add."
    assert [(c["name"], c["args"]) for c in calls] == [("add", {"a": 2, "b": 40})]
    again = parse_calls(text, functions(BOTH))[1]
    assert calls[0]["id"] == again[0]["id"] and calls[0]["id"].startswith("call_")


def test_unknown_tools_broken_json_and_string_arguments() -> None:
    text = (
        '<tool_call>{"name": "rm", "arguments": {}}</tool_call>'
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}'  # no end tag
    )
    _, calls = parse_calls(text, functions(BOTH))
    assert [(c["name"], c["args"]) for c in calls] == [("add", {"a": 1, "b": 2})]


def test_a_python_block_calls_the_only_code_tool() -> None:
    text = "Here:\n```python\nprint('ab'[::-1])\n```\nOutput:\n```\nba\n```"
    rest, calls = parse_calls(text, functions(PY))
    assert [(c["name"], c["args"]) for c in calls] == [("python", {"code": "print('ab'[::-1])"})]
    assert rest == text  # a block is left in the text as written
    # with two tools offered, a code block is just text
    assert parse_calls(text, functions(BOTH))[1] == []
    # an untagged block is never run
    assert parse_calls("```\nprint(1)\n```", functions(PY))[1] == []


def test_messages_are_written_out_as_text() -> None:
    call = {"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}
    messages = [
        SystemMessage("You are an analyst."),
        HumanMessage("1+2?"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("3", tool_call_id="c1", name="add"),
    ]
    out = encode_messages(messages, BOTH, None)
    assert out[0].text.startswith("You are an analyst.\n\nYou can use tools.")
    assert "- add(a: integer, b: integer): Add two integers." in out[0].text
    assert out[2].text == '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    assert not out[2].tool_calls
    assert isinstance(out[3], HumanMessage) and out[3].text == "Result of add:\n3"
    # the last step of a tool loop (tool_choice="none"): history as text, no tool guide
    last = encode_messages(messages, BOTH, "none")
    assert last[0].text == "You are an analyst." and last[3].text == "Result of add:\n3"
    # no system message: one is added
    assert encode_messages([HumanMessage("hi")], PY, None)[0].type == "system"


def test_decode_reply_keeps_usage_and_ignores_none_choice() -> None:
    usage = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    text = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>'

    def result() -> ChatResult:
        message = AIMessage(text, usage_metadata=usage, response_metadata={"finish_reason": "stop"})
        return ChatResult(generations=[ChatGeneration(message=message)])

    decoded = decode_reply(result(), BOTH, None).generations[0].message
    assert isinstance(decoded, AIMessage)
    assert decoded.tool_calls[0]["args"] == {"a": 1, "b": 1} and decoded.text == ""
    assert decoded.usage_metadata == usage
    assert decoded.response_metadata == {"finish_reason": "stop"}
    untouched = decode_reply(result(), BOTH, "none").generations[0].message
    assert isinstance(untouched, AIMessage) and untouched.text == text
    assert not untouched.tool_calls


@pytest.mark.slow
@pytest.mark.usefixtures("bwrap")
async def test_embedded_model_runs_python_through_the_tool_loop(tmp_path: Any) -> None:
    """The embedded model (temperature 0) writes a Python block, the sandboxed tool runs
    it, and the agent's proposal records the call; before, bind_tools raised."""
    from langgraph_moa.models.local import LocalModelUnavailable, local_model_path
    from langgraph_moa.runtime.api import MoA

    try:
        local_model_path()
    except LocalModelUnavailable as exc:
        from tests.conftest import missing

        missing(str(exc))
    spec = {
        "name": "local-tools",
        "defaults": {"temperature": 0, "seed": 1, "max_tokens": 128},
        "tools": {"py": {"builtin": "python", "timeout": 20}},
        "agents": [
            {
                "name": "coding",
                "role": "You are a coding agent. Answer with a short Python program.",
                "tools": ["py"],
                "max_steps": 2,
            }
        ],
        "layers": [{"agents": ["coding"], "synthesizer": "concat"}],
    }
    async with MoA(spec, db_url=f"sqlite:///{tmp_path / 'moa.sqlite'}") as moa:
        result = await moa.ainvoke("Reverse the string 'langgraph'. Use Python.", thread_id="t")
    assert result.status == "success", result
    proposal = result.values["proposals"]["1"]["coding"]
    assert proposal["status"] == "ok" and proposal["tools"] == {"py": 1}
    assert proposal["usage"]["tool_calls"] == 1 and proposal["usage"]["calls"] == 2
