"""The scripted test model server, driven through ChatOpenAI and raw HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.tools import tool
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from langgraph_moa.testing import (
    ChatRequest,
    ModelServer,
    ModelServerClient,
    Reply,
    Rule,
    count_tokens,
)

WAIT = 60.0  # the bound of raw HTTP calls (httpx's 5 s default is short on a loaded machine)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class Person(BaseModel):
    name: str
    age: int


def test_invoke_default_reply_usage_and_record(model_server: ModelServer) -> None:
    assert model_server.base_url.startswith("http://127.0.0.1:")
    assert model_server.base_url.endswith("/v1")
    llm = model_server.chat_model("alpha")
    msg = llm.invoke([SystemMessage("be brief"), HumanMessage("what is two plus two")])
    assert msg.content == f"alpha answer {digest('be brief' + chr(10) + 'what is two plus two')}"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["input_tokens"] == 2 + 5
    assert msg.usage_metadata["output_tokens"] == 3
    assert msg.usage_metadata["total_tokens"] == 10
    # another model (and prompt) gives a distinguishable answer
    assert model_server.chat_model("beta").invoke("what is two plus two").content != msg.content
    assert model_server.calls("alpha") == 1 and model_server.calls() == 2
    first = model_server.requests[0]
    assert (first.model, first.status, first.rule, first.failure) == ("alpha", 200, None, None)
    assert first.system == "be brief" and first.last_user == "what is two plus two"
    assert first.finished is not None and first.finished >= first.started
    assert first.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_usage_sums_and_token_caps(model_server: ModelServer) -> None:
    model_server.add_rule(model="w", reply="one two three four five six")
    llm = model_server.chat_model("w")
    full = llm.invoke("a b c")
    capped = model_server.chat_model("w", max_tokens=4).invoke("a b")
    assert full.content == "one two three four five six"
    assert full.response_metadata["finish_reason"] == "stop"
    assert capped.content == "one two three four"
    assert capped.response_metadata["finish_reason"] == "length"
    stopped = llm.bind(stop=["four"]).invoke("x")
    assert stopped.content == "one two three "
    # max_completion_tokens is honoured as well (raw request)
    raw = httpx.post(
        f"{model_server.base_url}/chat/completions",
        json={
            "model": "w",
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 2,
        },
        timeout=WAIT,
    ).json()
    assert raw["choices"][0]["message"]["content"] == "one two"
    sums = model_server.stats()["usage"]
    assert sums["prompt_tokens"] == 3 + 2 + 1 + 1
    assert sums["completion_tokens"] == 6 + 4 + 3 + 2
    assert sums["total_tokens"] == sums["prompt_tokens"] + sums["completion_tokens"]
    assert count_tokens("  a\tb\nc ") == 3


def test_rules_in_order_with_matchers_templates_callables_and_times(
    model_server: ModelServer,
) -> None:
    srv = model_server
    srv.add_rule(model="agent-.*", last_user=r"capital of (\w+)", reply="Paris")
    srv.add_rule(model="agent-.*", system="pirate", template="{model} arr #{call}: {last_user}")
    srv.add_rule(prompt=r"(?i)shout", reply=lambda req: req.last_user.upper())
    srv.add_rule(Rule(model="once", reply="first", times=1))
    srv.add_rule({"model": "once", "reply": Reply(content="later")})
    assert srv.chat_model("agent-1").invoke("the capital of France?").content == "Paris"
    pirate = srv.chat_model("agent-2").invoke([SystemMessage("a pirate"), HumanMessage("hi")])
    assert pirate.content == "agent-2 arr #1: hi"
    assert srv.chat_model("x").invoke("please shout this").content == "PLEASE SHOUT THIS"
    once = srv.chat_model("once")
    assert [once.invoke("q").content for _ in range(3)] == ["first", "later", "later"]
    assert [r.rule for r in srv.requests] == [0, 1, 2, 3, 4, 4]
    # model is a full match: "agent-1x" matches agent-.*, "my-agent-1" does not
    assert srv.chat_model("my-agent-1").invoke("capital of Peru").content.startswith("my-agent-1 ")
    srv.reset()
    assert srv.calls() == 0 and srv.requests == []
    assert srv.chat_model("agent-1").invoke("capital of France").content != "Paris"


def test_bad_rules_are_rejected_with_clear_errors() -> None:
    with pytest.raises(ValueError, match="not a valid regex"):
        Rule(last_user="(")
    with pytest.raises(ValueError, match="400-599"):
        Rule(fail=200)
    with pytest.raises(ValueError, match="one of"):
        Rule(fail="explode")
    with pytest.raises(ValueError, match=r"unknown field \{usr\}"):
        Rule(template="{usr}")
    with pytest.raises(ValueError, match="at most one"):
        Rule(reply="a", json={"a": 1})
    with pytest.raises(ValueError, match="delay=-1: must be a number of seconds"):
        Rule(delay=-1)
    with pytest.raises(ValueError, match="rule reply mapping"):
        Rule.from_dict({"reply": {"text": "hi"}})
    assert Rule.from_dict({"reply": {"content": "hi"}}).reply == Reply(content="hi")
    with pytest.raises(ValueError, match=r"rules\[0\]: unknown key\(s\) \['replay'\]"):
        ModelServer([{"replay": "x"}])


def test_reply_callable_error_is_a_500_naming_the_rule(model_server: ModelServer) -> None:
    def boom(req: ChatRequest) -> str:
        raise RuntimeError("no answer for " + req.model)

    model_server.add_rule(reply=boom)
    with pytest.raises(openai.InternalServerError, match="rule #0 raised RuntimeError"):
        model_server.chat_model("m").invoke("x")
    assert model_server.requests[0].status == 500


def test_stream_chunks_and_usage(model_server: ModelServer) -> None:
    model_server.add_rule(reply="alpha beta gamma")
    chunks = list(model_server.chat_model("m").stream("one two"))
    assert len(chunks) > 3
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert isinstance(total, AIMessageChunk)
    assert total.content == "alpha beta gamma"
    assert total.usage_metadata is not None
    assert total.usage_metadata["input_tokens"] == 2
    assert total.usage_metadata["output_tokens"] == 3
    assert total.response_metadata["finish_reason"] == "stop"


def test_raw_wire_format_matches_openai_types(model_server: ModelServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    resp = httpx.post(f"{model_server.base_url}/chat/completions", json=body, timeout=WAIT)
    completion = ChatCompletion.model_validate(resp.json())
    assert completion.object == "chat.completion"
    assert completion.usage is not None and completion.usage.prompt_tokens == 2
    stream_body = body | {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{model_server.base_url}/chat/completions", json=stream_body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(x[6:])) for x in lines[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        completion.choices[0].message.content
    )
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == completion.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])
    models = httpx.get(f"{model_server.base_url}/models", timeout=WAIT).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "m"


async def test_ainvoke_and_astream(model_server: ModelServer) -> None:
    llm = model_server.chat_model("async-model")
    msg = await llm.ainvoke("hello async world")
    parts = [c async for c in llm.astream("hello async world")]
    assert "".join(str(p.content) for p in parts) == msg.content
    assert msg.content == f"async-model answer {digest('hello async world')}"
    assert model_server.calls("async-model") == 2


async def test_concurrent_calls_overlap(model_server: ModelServer) -> None:
    # each call is answered only once all 24 are in: served one after another, they never are
    everyone = threading.Barrier(24, timeout=WAIT)
    model_server.add_rule(
        model="slow", reply=lambda req: (everyone.wait(), f"answer to {req.last_user}")[1], times=24
    )
    llm = model_server.chat_model("slow", timeout=WAIT)
    # a burst of connections (more than a small listen backlog would take)
    answers = await asyncio.gather(*(llm.ainvoke(f"question {i}") for i in range(24)))
    assert len({a.content for a in answers}) == 24
    assert model_server.max_in_flight("slow") == 24
    assert model_server.in_flight("slow") == 0
    model_server.reset_counts()
    assert model_server.max_in_flight("slow") == 0
    # one at a time stays at one
    for i in range(2):
        await llm.ainvoke(f"q{i}")
    assert model_server.max_in_flight("slow") == 1


async def test_delay_holds_the_call_in_flight(model_server: ModelServer) -> None:
    model_server.add_rule(model="held", delay=0.3)
    answer = await model_server.chat_model("held").ainvoke("x")
    assert answer.content.startswith("held answer ")
    (req,) = model_server.requests  # in flight from its arrival until its answer was sent
    assert req.finished is not None and req.finished - req.started >= 0.3
    assert model_server.max_in_flight("held") == 1 and model_server.in_flight("held") == 0


def test_429_retry_after_then_success(model_server: ModelServer) -> None:
    model_server.add_rule(model="busy", fail=429, retry_after=0.05, times=2)
    raw = httpx.post(
        f"{model_server.base_url}/chat/completions",
        json={"model": "busy", "messages": [{"role": "user", "content": "x"}]},
        timeout=WAIT,
    )
    assert raw.status_code == 429 and raw.headers["retry-after"] == "0.05"
    assert raw.json()["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        model_server.chat_model("busy").invoke("x")
    # both scripted 429s are used up: the client's own retries reach the default reply
    model_server.reset_counts()
    model_server.add_rule(model="busy2", fail=429, retry_after=0.05, times=2)
    msg = model_server.chat_model("busy2", max_retries=2).invoke("x")
    assert msg.content == f"busy2 answer {digest('x')}"
    assert [r.status for r in model_server.requests] == [429, 429, 200]
    assert model_server.calls("busy2") == 3


def test_500_and_503(model_server: ModelServer) -> None:
    model_server.add_rule(model="broken", fail=500)
    model_server.add_rule(model="flaky", fail=503, times=1)
    with pytest.raises(openai.InternalServerError):
        model_server.chat_model("broken").invoke("x")
    with pytest.raises(openai.InternalServerError) as info:
        model_server.chat_model("flaky").invoke("x")
    assert info.value.status_code == 503
    assert model_server.chat_model("flaky").invoke("x").content.startswith("flaky answer")


def test_stall_hits_the_client_timeout_and_stop_releases_it() -> None:
    with ModelServer([Rule(model="stuck", fail="stall", stall=60)]) as srv:
        with pytest.raises(openai.APITimeoutError):
            srv.chat_model("stuck", timeout=0.3).invoke("x")
        assert srv.in_flight("stuck") == 1
    assert srv.in_flight("stuck") == 0  # stop() released the stalled call
    assert srv.requests[0].status is None and srv.requests[0].failure == "stall"


def test_malformed_json_and_truncated_bodies(model_server: ModelServer) -> None:
    model_server.add_rule(model="garbled", fail="bad_json")
    model_server.add_rule(model="cut", fail="truncated")
    with pytest.raises(json.JSONDecodeError):
        model_server.chat_model("garbled").invoke("x")
    with pytest.raises(json.JSONDecodeError):
        list(model_server.chat_model("garbled").stream("x"))
    with pytest.raises(openai.APIConnectionError):
        model_server.chat_model("cut").invoke("x")
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in model_server.chat_model("cut").stream("one two three four five six"):
            received.append(chunk)
    assert [r.failure for r in model_server.requests] == ["bad_json"] * 2 + ["truncated"] * 2


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def test_tool_calls_invoke_and_stream(model_server: ModelServer) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    model_server.add_rule(model="tooly", tool_calls=[call])
    llm = model_server.chat_model("tooly").bind_tools([get_weather])
    msg = llm.invoke("weather in Paris?")
    assert msg.tool_calls[0]["name"] == "get_weather"
    assert msg.tool_calls[0]["args"] == {"city": "Paris"}
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(llm.stream("weather in Paris?"))
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert isinstance(total, AIMessageChunk)
    assert total.tool_calls == msg.tool_calls
    sent = model_server.requests[0].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_structured_output_by_rule_and_by_default(model_server: ModelServer) -> None:
    model_server.add_rule(model="judge", json={"name": "Ada", "age": 36})
    judged = model_server.chat_model("judge").with_structured_output(Person).invoke("who?")
    assert judged == Person(name="Ada", age=36)
    assert model_server.requests[0].body["response_format"]["type"] == "json_schema"
    # without a rule, the reply is built from the schema (both json_schema and tool calling)
    llm = model_server.chat_model("free")
    for method in ("json_schema", "function_calling"):
        person = llm.with_structured_output(Person, method=method).invoke("who?")
        assert isinstance(person, Person)
        assert person.name == f"free answer {digest('who?')}" and person.age == 0
    as_json = llm.with_structured_output(method="json_mode").invoke("reply in json")
    assert as_json["model"] == "free"


def test_script_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "rules.yaml"
    yaml_file.write_text(
        "latency: 0\n"
        "model_latency: {slow: 0.01}\n"
        "rules:\n"
        "  - {model: judge, json: {name: Bo, age: 3}}\n"
        "  - model: echo\n"
        "    template: 'echo {last_user}'\n"
    )
    json_file = tmp_path / "rules.json"
    json_file.write_text(json.dumps([{"model": "fixed", "reply": "ok", "times": 1}]))
    with ModelServer(script=yaml_file) as srv:
        srv.load_script(json_file)
        assert srv.latency_for("slow") == 0.01
        assert srv.chat_model("echo").invoke("hi there").content == "echo hi there"
        assert srv.chat_model("fixed").invoke("x").content == "ok"
        assert srv.chat_model("judge").with_structured_output(Person).invoke("x").age == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {model: m}\n  - {model: m, fail: 700}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: rules\[1\]: rule fail=700"):
        ModelServer(script=bad)
    with pytest.raises(ValueError, match="cannot read script file"):
        ModelServer(script=tmp_path / "missing.yaml")


def test_http_introspection_and_remote_scripting(model_server: ModelServer) -> None:
    root = model_server.url
    rules = {"rules": [{"model": "remote", "reply": "scripted remotely"}], "latency": 0}
    assert httpx.post(f"{root}/_test/rules", json=rules, timeout=WAIT).json() == {
        "ok": True,
        "rules": 1,
    }
    assert model_server.chat_model("remote").invoke("x").content == "scripted remotely"
    model_server.chat_model("other").invoke("x")
    calls = httpx.get(f"{root}/_test/calls", timeout=WAIT).json()
    assert calls["total"] == 2 and calls["calls"] == {"remote": 1, "other": 1}
    assert calls["max_in_flight"] == {"remote": 1, "other": 1}
    assert calls["usage"]["prompt_tokens"] == 2
    recorded = httpx.get(f"{root}/_test/requests", timeout=WAIT).json()
    assert [r["model"] for r in recorded] == ["remote", "other"]
    assert recorded[0]["status"] == 200 and recorded[0]["messages"][0]["content"] == "x"
    bad = httpx.post(f"{root}/_test/rules", json=[{"model": "m", "wat": 1}], timeout=WAIT)
    assert bad.status_code == 400 and "unknown key(s) ['wat']" in bad.json()["error"]["message"]
    assert httpx.post(f"{root}/_test/reset_counts", timeout=WAIT).status_code == 200
    assert model_server.calls() == 0 and model_server.rule_count() == 1
    assert httpx.post(f"{root}/_test/reset", timeout=WAIT).json()["rules"] == 0
    assert httpx.get(f"{root}/nope", timeout=WAIT).status_code == 404
    missing = httpx.post(
        f"{model_server.base_url}/chat/completions", json={"model": "m"}, timeout=WAIT
    )
    assert missing.status_code == 400 and "'messages' is required" in missing.text


def test_standalone_cli(tmp_path: Path) -> None:
    script = tmp_path / "rules.json"
    script.write_text(json.dumps({"rules": [{"model": "cli", "reply": "from the cli"}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "langgraph_moa.testing", "--script", str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        srv = ModelServer()  # not started: only used to build a client for base_url
        llm = srv.chat_model("cli", base_url=base_url)
        assert llm.invoke("x").content == "from the cli"
        remote = ModelServerClient(base_url)
        assert remote.calls("cli") == 1 and remote.calls() == 1 and remote.max_in_flight() == 1
        assert remote.requests()[0]["status"] == 200
        assert remote.configure([{"model": "cli", "reply": "rescripted"}]) == 2
        remote.reset_counts()
        assert llm.invoke("x").content == "from the cli"  # earlier rules still win
        remote.reset()
        assert remote.configure({"rules": [{"model": "cli", "fail": 503}]}) == 1
        with pytest.raises(openai.InternalServerError):
            llm.invoke("x")
        assert remote.calls("cli") == 1 and remote.stats()["usage"]["total_tokens"] == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    bad = subprocess.run(
        [sys.executable, "-m", "langgraph_moa.testing", "--script", str(tmp_path / "no.yaml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "cannot read script file" in bad.stderr
