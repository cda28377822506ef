"""Pure helpers of the nodes, checked value by value (fast: the mutation run of nodes/ uses
them): usage reports, budgets from the command line, the router's JSON reading, the
synthesizer's proposal fitting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from langgraph_moa.nodes import prompts
from langgraph_moa.nodes.budget import Budget, parse_budget, total_usage, usage_report
from langgraph_moa.nodes.router import PlanError, _json_in
from langgraph_moa.nodes.synthesizer import ContextWindowError, fit_proposals


def u(tokens: int, cost: float = 0.0, calls: int = 1) -> dict[str, float]:
    return {
        "input_tokens": tokens - 1,
        "output_tokens": 1,
        "total_tokens": tokens,
        "calls": calls,
        "cost": cost,
    }


def test_usage_report_sums_by_layer_and_in_total() -> None:
    values = {
        "usage": {
            "a": u(10, 0.1),
            "b": u(20),
            "router_L1": u(3),
            "synthesizer_L1": u(5),
            "synthesizer_L2": u(7),
            "router_X": u(1000),
        },
        "proposals": {
            "2": {"a": {"usage": u(4)}},
            "1": {"a": {"usage": u(6)}, "b": {"usage": u(20)}, "c": {"status": "failed"}},
            "10": {"b": {"usage": u(1)}},
        },
    }
    report = usage_report(values)
    assert report["total"] == {
        "input_tokens": 1039,
        "output_tokens": 6,
        "total_tokens": 1045,
        "calls": 6,
        "cost": 0.1,
    }
    assert list(report["by_layer"]) == ["1", "2", "10"]  # numeric order, not text order
    assert report["by_layer"]["1"] == {
        "input_tokens": 30,
        "output_tokens": 4,
        "total_tokens": 34,
        "calls": 4,
        "cost": 0.0,
    }
    assert report["by_layer"]["2"]["total_tokens"] == 4 + 7
    assert report["by_layer"]["10"]["total_tokens"] == 1
    assert report["by_agent"] == values["usage"]
    assert usage_report({}) == {"total": {}, "by_layer": {}, "by_agent": {}}
    assert total_usage(None) == {}


def test_parse_budget_forms_and_errors() -> None:
    assert parse_budget("20000") == {"max_total_tokens": 20000}
    assert parse_budget("$0.5") == {"max_cost": 0.5}
    assert parse_budget(" Tokens = 1_000 , cost=$2 ") == {"max_total_tokens": 1000, "max_cost": 2.0}
    assert parse_budget("tokens=none,cost=NONE") == {"max_total_tokens": None, "max_cost": None}
    for bad, words in [
        ("", "is empty"),
        ("tokens=1,tokens=2", "'tokens=2' is not understood"),
        ("gold=3", "'gold=3' is not understood"),
        ("tokens=0", "tokens must be a positive integer, got '0'"),
        ("tokens=1.5", "tokens must be a positive integer"),
        ("cost=-1", "cost must be a positive number, got '-1'"),
        ("cost=x", "cost must be a positive number"),
    ]:
        with pytest.raises(ValueError) as err:
            parse_budget(bad)
        assert words in str(err.value), (bad, str(err.value))


def test_budget_replaced_and_to_config() -> None:
    base = Budget(max_total_tokens=100, max_cost=1.0)
    assert base.to_config() == {"max_total_tokens": 100, "max_cost": 1.0}
    assert base.replaced(None) is base
    assert base.replaced({"max_cost": None}) == Budget(max_total_tokens=100, max_cost=None)
    assert base.replaced(Budget(max_total_tokens=5)) == Budget(max_total_tokens=5, max_cost=None)
    assert bool(Budget()) is False and bool(Budget(max_cost=0.1)) is True
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tokens'\]"):
        base.replaced({"tokens": 5})
    with pytest.raises(ValueError, match="max_total_tokens must be a positive integer"):
        base.replaced({"max_total_tokens": True})
    with pytest.raises(ValueError, match="max_cost must be positive, got 0"):
        base.replaced({"max_cost": 0})
    with pytest.raises(ValueError, match="max_total_tokens must be a positive integer, got 0"):
        base.replaced({"max_total_tokens": 0})
    assert base.replaced({"max_total_tokens": 1}) == Budget(max_total_tokens=1, max_cost=1.0)
    with pytest.raises(TypeError, match="must be a mapping"):
        base.replaced(5)  # type: ignore[arg-type]


def test_router_reads_json_wherever_the_model_put_it() -> None:
    assert _json_in('{"a": 1}') == {"a": 1}
    assert _json_in("  ```json\n[1, 2]\n```  ") == [1, 2]
    assert _json_in('```\n{"x": [1]}\n```') == {"x": [1]}
    assert _json_in('Plan: {"a": {"b": 2}} done.') == {"a": {"b": 2}}
    assert _json_in('Plan: [{"a": 1}] and more') == [{"a": 1}]
    with pytest.raises(PlanError, match="no JSON"):
        _json_in("no plan here")
    with pytest.raises(PlanError, match="not valid JSON: Expecting"):
        _json_in("Plan: {a: 1}")


def test_router_json_fences_brackets_and_the_no_json_error() -> None:
    """A fence wins over braces in the prose around it (its ``json`` tag is no part of the
    value); outside a fence, from the first opening to the last closing bracket."""
    assert _json_in('Use {x}.\n```json\n{"a": 1}\n```\nThen [y].') == {"a": 1}
    assert _json_in('```json\n"hello"\n```') == "hello"
    assert _json_in('{"a": 1} is the plan') == {"a": 1}
    assert _json_in("Plan: [[1, 2]] end") == [[1, 2]]
    assert _json_in('Plan: [{"a": [1]}] end') == [{"a": [1]}]
    assert _json_in('Plan: {"a": 1}.') == {"a": 1}
    for reply in ("no plan here", "ab}", "oops ]"):
        with pytest.raises(PlanError) as error:
            _json_in(reply)
        assert str(error.value) == "the reply contains no JSON"


def test_fit_proposals_water_fills_the_budget() -> None:
    short, long = "short answer", " ".join(["word"] * 400)
    same, notes = fit_proposals({"a": short, "b": long}, 10_000)
    assert same == {"a": short, "b": long} and notes == []
    fitted, notes = fit_proposals({"a": short, "b": long}, 120)
    assert fitted["a"] == short  # under the cap: whole
    assert fitted["b"].endswith(" [...]") and long.startswith(fitted["b"][:-6])
    assert len(fitted["b"]) < len(long)
    assert len(notes) == 1 and notes[0].startswith("proposal of b trimmed from about ")
    with pytest.raises(ContextWindowError, match="set `on_overflow: trim`"):
        fit_proposals({"a": long}, 50, on_overflow="fail")
    with pytest.raises(ContextWindowError, match="only 20 tokens are left for 2 proposals"):
        fit_proposals({"a": long, "b": long}, 20)


# -- one model call: seeds, the ledger's view, recording and answering from it --------


def test_call_seed_is_stable_and_depends_on_node_and_messages() -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from langgraph_moa.nodes._calls import call_seed

    hi = [HumanMessage("hi")]
    assert call_seed(None, "L1_a", hi) is None
    # the same seed in every process and release: a resume samples as the first run did
    assert call_seed(7, "L1_a", hi) == 427251186
    assert call_seed(7, "L1_b", hi) == 11845993
    assert call_seed(0, "L1_a", hi) not in (None, 427251186)
    assert call_seed(7, "L1_a", [HumanMessage("ho")]) != 427251186
    called = [AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "1"}])]
    assert call_seed(7, "L1_a", called) != call_seed(7, "L1_a", [AIMessage("")])
    assert all(0 <= call_seed(s, "n", hi) < 2**31 for s in range(50))  # type: ignore[operator]
    # the key order of a tool call's arguments does not change the seed
    xy = [AIMessage("", tool_calls=[{"name": "f", "args": {"x": 1, "y": 2}, "id": "1"}])]
    yx = [AIMessage("", tool_calls=[{"name": "f", "args": {"y": 2, "x": 1}, "id": "1"}])]
    assert call_seed(7, "L1_a", xy) == call_seed(7, "L1_a", yx)


def test_seeded_copies_only_models_with_a_seed() -> None:
    from langchain_core.language_models import GenericFakeChatModel

    from langgraph_moa.nodes._calls import seeded
    from tests.nodes_support import FakeChat, Script

    model = FakeChat(entry="a", script=Script())
    assert seeded(model, None) is model
    copy = seeded(model, 42)
    assert copy is not model and copy.seed == 42 and model.seed is None  # type: ignore[attr-defined]
    plain = GenericFakeChatModel(messages=iter([]))
    assert seeded(plain, 42) is plain


def test_canonical_messages() -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from pydantic import BaseModel

    from langgraph_moa.nodes._calls import canonical_message

    class Part(BaseModel):
        x: int

    assert canonical_message(HumanMessage("hi", id="x1")) == {"role": "human", "content": "hi"}
    assert canonical_message(HumanMessage("hi", name="ann")) == {
        "role": "human",
        "content": "hi",
        "name": "ann",
    }
    ai = AIMessage("", tool_calls=[{"name": "f", "args": {"p": Part(x=1)}, "id": "c1"}])
    assert canonical_message(ai) == {
        "role": "ai",
        "content": "",
        "tool_calls": [{"name": "f", "args": {"p": {"x": 1}}, "id": "c1"}],
    }
    assert canonical_message(AIMessage("plain")) == {"role": "ai", "content": "plain"}
    tool = ToolMessage("5", tool_call_id="c1", status="error")
    assert canonical_message(tool) == {
        "role": "tool",
        "content": "5",
        "tool_call_id": "c1",
        "status": "error",
    }
    odd = HumanMessage(content=[{"type": "text", "text": "a", "obj": {1: object}}])
    assert canonical_message(odd)["content"] == [
        {"type": "text", "text": "a", "obj": {"1": "<class 'object'>"}}
    ]


def test_call_request_is_what_the_model_really_gets() -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.tools import tool

    from langgraph_moa.nodes._calls import call_request, call_seed
    from langgraph_moa.nodes.router import Plan
    from tests.nodes_support import URL, context, spec_of

    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    msgs = [SystemMessage("s"), HumanMessage("hi")]
    ctx = context(spec_of(["a"]))
    req = call_request(ctx, "a", msgs, node="L1_a", temperature=0.5, max_tokens=10)
    assert (req.node, req.kind, req.model) == ("L1_a", "agent", "a")
    assert req.messages == [{"role": "system", "content": "s"}, {"role": "human", "content": "hi"}]
    assert req.params == {"model": "a", "temperature": 0.5, "max_tokens": 10}
    assert req.hash == "3bf4221ea5e93f90281e7b69bbcc5a539747b7d8d7866564f3dadc74435f4181"
    # the server beside the parameters (not hashed); sampled without a seed: not decided
    assert (req.endpoint, req.deterministic) == (URL, False)
    assert req.recorded_params == {**req.params, "endpoint": URL}
    spec = spec_of(
        ["a"],
        models={
            "a": {
                "model": "model-a",
                "base_url": "http://127.0.0.1:9/v1",
                "temperature": 0.0,
                "max_tokens": 77,
                "kwargs": {"top_p": 0.5},
            }
        },
        defaults={"seed": 3},
    )
    ctx = context(spec)
    req = call_request(
        ctx, "a", msgs, node="L2_a", temperature=0.5, max_tokens=10, tools=[add], tool_choice="none"
    )
    assert req.kind == "tool_step" and req.model == "model-a"
    assert (req.endpoint, req.deterministic) == ("http://127.0.0.1:9/v1", True)
    assert req.params == {
        "model": "model-a",
        "temperature": 0.0,
        "max_tokens": 77,
        "kwargs": {"top_p": 0.5},
        "seed": call_seed(3, "L2_a", msgs),
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "add",
                    "description": "Add.",
                    "parameters": {
                        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                        "required": ["a", "b"],
                        "type": "object",
                    },
                },
            }
        ],
        "tool_choice": "none",
    }
    plan = call_request(ctx, "a", msgs, node="L1_router", temperature=0, max_tokens=5, schema=Plan)
    assert plan.kind == "router" and plan.params["schema"] == Plan.model_json_schema()
    synth = call_request(ctx, "a", msgs, node="L1_synthesizer", temperature=0, max_tokens=5)
    assert synth.kind == "synthesizer" and "schema" not in synth.params
    assert "tools" not in synth.params and "tool_choice" not in synth.params
    seeded = spec_of(["a"], defaults={"seed": 3})
    sampled = call_request(context(seeded), "a", msgs, node="L1_a", temperature=0.5, max_tokens=1)
    assert sampled.deterministic and sampled.params["seed"] == call_seed(3, "L1_a", msgs)
    provider = spec_of(["a"], models={"a": {"model": "anthropic:x"}}, defaults={"seed": 3})
    unseeded = call_request(
        context(provider), "a", msgs, node="L1_a", temperature=0.5, max_tokens=1
    )
    assert (unseeded.endpoint, unseeded.deterministic) == (None, False)  # takes no seed
    for temperature, repeatable in ((0, True), (1, False)):  # without a seed: at 0 only
        call = call_request(
            context(provider), "a", msgs, node="L1_a", temperature=temperature, max_tokens=1
        )
        assert call.deterministic is repeatable
    # the hash covers messages and parameters, not the order of keys
    other = call_request(ctx, "a", msgs[:1], node="L1_synthesizer", temperature=0, max_tokens=5)
    assert other.hash != synth.hash


class Source:
    """A call ledger in memory (the CallSource protocol): answers from ``recorded``."""

    def __init__(self, recorded: dict[str, Any] | None = None, seq: int = 4) -> None:
        self.recorded, self.seq = recorded, seq
        self.lookups: list[tuple[str, str, str]] = []
        self.rows: list[dict[str, Any]] = []

        self.finished_calls: list[str] = []

    async def lookup(
        self, node: str, task_id: str, request_hash: str, *, request: Any = None
    ) -> tuple[int, Any]:
        assert request is not None and request.hash == request_hash
        self.lookups.append((node, task_id, request_hash))
        return self.seq, self.recorded

    async def record(self, **fields: Any) -> None:
        self.rows.append(fields)

    def finished(self, request: Any) -> None:
        self.finished_calls.append(request.hash)


async def test_call_model_records_the_call_in_the_ledger() -> None:
    from langchain_core.messages import HumanMessage

    from langgraph_moa.nodes._calls import CALLS_KEY, call_model, call_request
    from langgraph_moa.nodes.budget import Ledger
    from tests.nodes_support import Script, context, spec_of, usage

    spec = spec_of(
        ["a"],
        models={
            "a": {
                "model": "model-a",
                "base_url": "http://127.0.0.1:9/v1",
                "input_cost_per_mtok": 1.0,
                "output_cost_per_mtok": 2.0,
            }
        },
    )

    async def slow_hello(call: Any) -> str:
        await asyncio.sleep(0.05)  # the latency to measure
        return "hello"

    script = Script().on("a", slow_hello)
    ctx = context(spec, script)
    source = Source()
    ledger = Ledger(Budget())
    msgs = [HumanMessage("hi")]
    config: Any = {"configurable": {CALLS_KEY: source}}
    reply = await call_model(
        ctx, "a", msgs, config, temperature=0.1, max_tokens=9, ledger=ledger, node="L1_a"
    )
    want_usage = {**usage(), "calls": 1, "cost": (10 * 1.0 + 5 * 2.0) / 1e6}
    assert reply.message.text == "hello" and reply.usage == want_usage
    assert (script.calls[0].tools, script.calls[0].tool_choice) == (None, None)  # none offered
    assert (ledger.tokens, ledger.cost, ledger.reserved_tokens, ledger.reserved_cost) == (
        15,
        want_usage["cost"],
        0,
        0.0,
    )
    request = call_request(ctx, "a", msgs, node="L1_a", temperature=0.1, max_tokens=9)
    assert source.lookups == [("L1_a", "", request.hash)]
    (row,) = source.rows
    latency = row.pop("latency_ms")
    assert isinstance(latency, float) and 50 <= latency < 60_000
    message = row.pop("response")["message"]
    assert message["type"] == "ai" and message["data"]["content"] == "hello"
    assert row == {
        "node": "L1_a",
        "kind": "agent",
        "task_id": "",
        "seq": 4,
        "model": "model-a",
        "params": {
            "model": "model-a",
            "temperature": 0.1,
            "max_tokens": 9,
            "endpoint": "http://127.0.0.1:9/v1",
        },
        "request_hash": request.hash,
        "messages": [{"role": "human", "content": "hi"}],
        "usage": want_usage,
        "retries": 0,
        "status": "ok",
        "error": None,
    }

    # answered from the ledger: no model call, the recorded message and its usage
    recorded = {"content": "recorded", "usage_metadata": usage(100, 50), "type": "ai"}
    answered = Source(recorded={"message": {"type": "ai", "data": recorded}})
    config = {"configurable": {CALLS_KEY: answered}}
    again = await call_model(
        ctx, "a", msgs, config, temperature=0.1, max_tokens=9, ledger=ledger, node="L1_a"
    )
    assert again.message.text == "recorded"
    assert again.usage == {**usage(100, 50), "calls": 1, "cost": (100 + 100) / 1e6}
    assert again.parsed is None and again.parsing_error is None
    assert answered.rows == [] and len(script.calls) == 1
    assert (source.finished_calls, answered.finished_calls) == ([request.hash], [])
    assert ledger.tokens == 15 + 150

    # the reservation: the prompt and the reply's maximum (the model entry's own first), priced
    from langchain_core.messages.utils import count_tokens_approximately

    from langgraph_moa.nodes.budget import BudgetExceeded

    priced = spec_of(
        ["a"],
        models={
            "a": {
                "model": "model-a",
                "base_url": "http://127.0.0.1:9/v1",
                "input_cost_per_mtok": 1.0,
                "output_cost_per_mtok": 2.0,
                "max_tokens": 77,
            }
        },
    )
    prompt = count_tokens_approximately(msgs)
    for max_tokens, reply_max in [(9, 77)]:
        with pytest.raises(BudgetExceeded) as err:
            await call_model(
                context(priced, script),
                "a",
                msgs,
                {},
                temperature=0,
                max_tokens=max_tokens,
                ledger=Ledger(Budget(max_cost=1e-9)),
                node="L1_a",
            )
        assert err.value.info["next_call"] == {
            "total_tokens": prompt + reply_max,
            "cost": (prompt * 1.0 + reply_max * 2.0) / 1e6,
        }
    with pytest.raises(BudgetExceeded) as err:
        await call_model(
            ctx, "a", msgs, {}, temperature=0, max_tokens=9, ledger=Ledger(Budget(1)), node="n"
        )
    assert err.value.info["next_call"] == {
        "total_tokens": prompt + 9,
        "cost": (prompt * 1.0 + 9 * 2.0) / 1e6,
    }


async def test_ledger_call_records_answers_from_the_ledger_and_records_errors() -> None:
    from langchain_core.messages import HumanMessage

    from langgraph_moa.nodes._calls import ledger_call, model_request
    from tests.nodes_support import Script, context, spec_of, usage

    script = Script().on("a", "hello", RuntimeError("boom"))
    ctx = context(spec_of(["a"]), script)
    msgs = [HumanMessage("judge this")]
    request = model_request(
        ctx.models, "a", msgs, node="judge", temperature=0, max_tokens=9, kind="judge"
    )
    model = ctx.models.get("a", temperature=0, max_tokens=9)
    spec = ctx.models.spec("a")
    source = Source(seq=7)
    reply = await ledger_call(source, request, model, msgs, spec)
    assert reply.message.text == "hello" and reply.usage == {**usage(), "calls": 1, "cost": 0.0}
    assert source.lookups == [("judge", "", request.hash)]
    (row,) = source.rows
    assert isinstance(row.pop("latency_ms"), float)
    assert row.pop("response")["message"]["data"]["content"] == "hello"
    assert row == {
        "node": "judge",
        "kind": "judge",
        "task_id": "",
        "seq": 7,
        "model": request.model,
        "params": request.recorded_params,
        "request_hash": request.hash,
        "messages": [{"role": "human", "content": "judge this"}],  # whole, not hashed
        "usage": {**usage(), "calls": 1, "cost": 0.0},
        "retries": 0,
        "status": "ok",
        "error": None,
    }
    assert source.finished_calls == [request.hash]
    assert [c.human for c in script.calls] == ["judge this"]

    # a recorded reply answers: no call, nothing recorded, nothing to finish
    recorded = {"content": "recorded", "usage_metadata": usage(3, 2), "type": "ai"}
    answered = Source(recorded={"message": {"type": "ai", "data": recorded}})
    again = await ledger_call(answered, request, model, msgs, spec)
    assert again.message.text == "recorded" and again.usage["total_tokens"] == 5
    assert again.parsed is None and again.parsing_error is None
    assert (answered.rows, answered.finished_calls, len(script.calls)) == ([], [], 1)

    # a failed call is recorded with its error, finished, and raised
    failing = Source()
    with pytest.raises(RuntimeError, match=r"^boom$"):
        await ledger_call(failing, request, model, msgs, spec)
    (row,) = failing.rows
    assert (row["status"], row["error"], row["response"], row["usage"]) == (
        "error",
        "RuntimeError: boom",
        None,
        None,
    )
    assert failing.finished_calls == [request.hash]


async def test_a_made_call_has_its_latency_in_ms_and_its_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from langchain_core.messages import AIMessage

    from langgraph_moa.models.limits import on_request
    from langgraph_moa.nodes import _calls

    ticks = iter([10.0, 10.0123456, 20.0, 20.5])  # a scripted clock of _calls only
    monkeypatch.setattr(_calls, "time", SimpleNamespace(monotonic=lambda: next(ticks)))
    reply = _calls.Reply(AIMessage("ok"), {"calls": 1})

    async def three_requests() -> _calls.Reply:
        for _ in range(3):  # the first attempt and two client-side retries
            await on_request(None)
        return reply

    made = await _calls._Made.of(three_requests())
    assert (made.reply, made.error, made.latency_ms, made.retries) == (reply, None, 12.346, 2)

    async def fails() -> _calls.Reply:
        raise ValueError("no")

    failed = await _calls._Made.of(fails())
    assert failed.reply is None and isinstance(failed.error, ValueError)
    assert (failed.latency_ms, failed.retries) == (500.0, 0)


def test_invocation_ids_are_kept_for_the_newest_invocations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from collections import OrderedDict
    from types import SimpleNamespace

    import langgraph.runtime

    from langgraph_moa.nodes import _calls

    monkeypatch.setattr(_calls, "_invocations", OrderedDict())
    monkeypatch.setattr(_calls, "_MAX_INVOCATIONS", 2)
    now: list[object] = []
    monkeypatch.setattr(langgraph.runtime, "get_runtime", lambda: SimpleNamespace(control=now[-1]))
    c1, c2, c3 = object(), object(), object()
    ids = {}
    for control in (c1, c2):
        now.append(control)
        ids[control] = _calls.invocation_id({})
    assert len(set(ids.values())) == 2 and list(_calls._invocations) == [c1, c2]  # 2 kept
    now.append(c1)
    assert _calls.invocation_id({}) == ids[c1]
    now.append(c3)  # a third: the oldest goes
    ids[c3] = _calls.invocation_id({})
    assert list(_calls._invocations) == [c2, c3]
    now.append(c2)
    assert _calls.invocation_id({}) == ids[c2]


async def test_call_model_records_errors_and_hashes_only() -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from langgraph_moa.nodes._calls import CALLS_KEY, _digest, call_model, canonical_message
    from langgraph_moa.nodes.budget import Ledger
    from tests.nodes_support import Script, context, spec_of

    script = Script().on("a", RuntimeError("x" * 3000))
    ctx = context(spec_of(["a"]), script)
    source = Source()
    ledger = Ledger(Budget())
    config: Any = {"configurable": {CALLS_KEY: source}}
    with pytest.raises(RuntimeError):
        await call_model(
            ctx,
            "a",
            [HumanMessage("hi")],
            config,
            temperature=0,
            max_tokens=9,
            ledger=ledger,
            node="L1_a",
        )
    (row,) = source.rows
    assert (row["status"], row["response"], row["usage"]) == ("error", None, None)
    assert row["error"] == ("RuntimeError: " + "x" * 3000)[:2000]
    assert len(source.finished_calls) == 1  # told that the failed call is over
    assert (ledger.tokens, ledger.reserved_tokens) == (0, 0)

    spec = spec_of(["a"], ledger="hashes")
    answer = AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "c"}])
    script = Script().on("a", answer)
    source = Source()
    config = {"configurable": {CALLS_KEY: source}}
    reply = await call_model(
        context(spec, script),
        "a",
        [HumanMessage("hi")],
        config,
        temperature=0,
        max_tokens=9,
        ledger=Ledger(Budget()),
        node="L1_a",
    )
    (row,) = source.rows
    human = {"role": "human", "content": "hi"}
    assert row["messages"] == [{"role": "human", "hash": _digest(human)}]
    assert row["response"] == {
        "hash": _digest(canonical_message(reply.message)),
        "tool_calls": 1,
    }


async def test_call_model_waits_for_its_endpoint_slot_unless_answered_from_the_ledger() -> None:
    from langchain_core.messages import HumanMessage

    from langgraph_moa.nodes._calls import CALLS_KEY, call_model
    from langgraph_moa.nodes.budget import Ledger
    from tests.nodes_support import URL, Script, context, spec_of, usage

    entered, release = asyncio.Event(), asyncio.Event()

    async def held(call: Any) -> str:
        entered.set()
        await release.wait()
        return "first"

    script = Script().on("a", held, "second")
    one_slot = {"model": "one-slot-endpoint", "base_url": URL, "max_concurrency": 1}
    ctx = context(spec_of(["a"], models={"a": one_slot}), script)
    limiter = ctx.models.limiter("a")
    assert limiter is not None and limiter.limit == 1

    def call(text: str, config: Any) -> Any:
        return asyncio.ensure_future(
            call_model(
                ctx,
                "a",
                [HumanMessage(text)],
                config,
                temperature=0,
                max_tokens=9,
                ledger=Ledger(Budget()),
                node="L1_a",
            )
        )

    first = call("1", {})
    await entered.wait()
    second = call("2", {})
    recorded = {"content": "recorded", "usage_metadata": usage(), "type": "ai"}
    answered = call(
        "3", {"configurable": {CALLS_KEY: Source({"message": {"type": "ai", "data": recorded}})}}
    )
    for _ in range(50):  # let both run as far as they can
        await asyncio.sleep(0)
    # the second waits for the endpoint's one slot; a reply from the ledger does not
    assert [c.human for c in script.calls] == ["1"] and not second.done()
    assert answered.done() and answered.result().message.text == "recorded"
    assert limiter.in_use == 1
    release.set()
    assert (await first).message.text == "first" and (await second).message.text == "second"
    assert [c.human for c in script.calls] == ["1", "2"] and limiter.in_use == 0


async def test_call_model_with_a_schema_from_the_ledger() -> None:
    from langchain_core.messages import HumanMessage

    from langgraph_moa.nodes._calls import CALLS_KEY, call_model, call_request
    from langgraph_moa.nodes.budget import Ledger
    from langgraph_moa.nodes.router import Plan
    from tests.nodes_support import context, spec_of

    plan = {"plan": [{"agent": "a", "subtask": "s"}]}
    message = {"type": "ai", "data": {"content": "", "type": "ai"}}
    ctx = context(spec_of(["a"]))
    for recorded, parsed, error in [
        ({"message": message, "parsed": plan}, Plan.model_validate(plan), None),
        ({"message": message, "parsed": None, "parsing_error": "bad plan"}, None, "bad plan"),
    ]:
        config: Any = {"configurable": {CALLS_KEY: Source(recorded)}}
        reply = await call_model(
            ctx,
            "a",
            [HumanMessage("hi")],
            config,
            temperature=0,
            max_tokens=9,
            ledger=Ledger(Budget()),
            node="L1_router",
            schema=Plan,
        )
        assert reply.parsed == parsed
        assert (None if reply.parsing_error is None else str(reply.parsing_error)) == error
        # the ledger is asked with the hash of the structured request (the schema in it)
        structured = call_request(
            ctx,
            "a",
            [HumanMessage("hi")],
            node="L1_router",
            temperature=0,
            max_tokens=9,
            schema=Plan,
        )
        assert config["configurable"][CALLS_KEY].lookups[0][2] == structured.hash
        assert reply.usage["total_tokens"] == 0


async def test_invocation_and_checkpoint_ids() -> None:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, StateGraph
    from typing_extensions import TypedDict

    from langgraph_moa.nodes import _calls
    from langgraph_moa.nodes._calls import checkpoint_id, invocation_id

    # outside a graph: a fresh id each time, no checkpoint
    one, two = invocation_id({}), invocation_id({})
    assert one != two and len(one) == 32 and int(one, 16) >= 0
    assert checkpoint_id() == ""

    class S(TypedDict, total=False):
        ids: list[str]
        cps: list[str]

    def node(name: str) -> Any:
        def run(state: S, config: RunnableConfig) -> dict[str, Any]:
            return {
                "ids": [*state.get("ids", []), invocation_id(config), invocation_id(config)],
                "cps": [*state.get("cps", []), checkpoint_id()],
            }

        return run

    builder = StateGraph(S)
    builder.add_node("first", node("first"))
    builder.add_node("second", node("second"))
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    saver = InMemorySaver()
    graph = builder.compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": "t"}}
    out = graph.invoke({}, config)
    assert len(set(out["ids"])) == 1  # one invocation, one id, in every node
    history = [s.config["configurable"]["checkpoint_id"] for s in graph.get_state_history(config)]
    # each node runs on the checkpoint before its step: the 2nd and 3rd oldest
    assert out["cps"] == [history[-2], history[-3]]
    again = graph.invoke({}, {"configurable": {"thread_id": "u"}})
    assert set(again["ids"]).isdisjoint(out["ids"])  # another invocation, another id
    # the newest invocations keep their tokens; the oldest are dropped past the limit
    _calls._invocations.clear()
    keep = [object() for _ in range(_calls._MAX_INVOCATIONS)]
    for obj in keep:
        _calls._invocations[obj] = "old"
    third = graph.invoke({}, {"configurable": {"thread_id": "v"}})
    assert len(set(third["ids"])) == 1
    assert len(_calls._invocations) == _calls._MAX_INVOCATIONS
    assert keep[0] not in _calls._invocations and keep[1] in _calls._invocations
    _calls._invocations.clear()


def test_spec_budget() -> None:
    from langgraph_moa.nodes._calls import spec_budget
    from tests.nodes_support import context, spec_of

    ctx = context(spec_of(["a"], max_total_tokens=100, max_cost=0.5))
    assert spec_budget(ctx) == Budget(100, 0.5)
    assert spec_budget(context(spec_of(["a"]))) == Budget(None, None)


# -- the ledger of a run's budget ---------------------------------------------------------


async def test_ledger_reserves_refuses_and_settles() -> None:
    from langgraph_moa.nodes.budget import BudgetExceeded, Ledger, budget_of

    ledger = Ledger(
        Budget(max_total_tokens=100), {"total_tokens": 10, "cost": 0.5, "tool_calls": 2}
    )
    assert (ledger.tokens, ledger.cost, ledger.tool_calls) == (10, 0.5, 2)
    assert await ledger.reserve(60, 0.0, "n1") == (60, 0.0)
    assert ledger._overrun(31, 0.0, ledger.budget) == (
        "token budget: 10 used + 60 reserved + up to 31 for this call > max_total_tokens 100"
    )
    assert ledger._overrun(30, 0.0, ledger.budget) is None
    ledger.settle((60, 0.0), {"total_tokens": 20, "cost": 0.25})
    assert (ledger.tokens, ledger.cost, ledger.reserved_tokens) == (30, 0.75, 0)
    with pytest.raises(BudgetExceeded) as err:
        await ledger.reserve(71, 0.01, "n2")
    assert err.value.info == {
        "kind": "budget",
        "node": "n2",
        "reason": "n2: token budget: 30 used + up to 71 for this call > max_total_tokens 100; "
        "resume with a larger budget",
        "used": {"total_tokens": 30, "cost": 0.75},
        "next_call": {"total_tokens": 71, "cost": 0.01},
        "budget": {"max_total_tokens": 100, "max_cost": None},
    }
    assert str(err.value) == err.value.info["reason"]
    # a budget given for one call replaces the ledger's
    assert await ledger.reserve(71, 0.0, "n2", budget=Budget()) == (71, 0.0)
    ledger.settle((71, 0.0), None)  # a failed call uses nothing
    assert (ledger.tokens, ledger.reserved_tokens) == (30, 0)
    # reservations in flight add up
    both = Ledger(Budget())
    await both.reserve(10, 0.25, "a")
    await both.reserve(5, 0.5, "b")
    assert (both.reserved_tokens, both.reserved_cost) == (15, 0.75)
    # a usage without totals counts as nothing
    ledger.settle(await ledger.reserve(5, 0.0, "n3"), {"calls": 1})
    assert (ledger.tokens, ledger.cost, ledger.reserved_tokens) == (30, 0.75, 0)

    costly = Ledger(Budget(max_cost=1.0), {"cost": 0.5})
    await costly.reserve(0, 0.25, "c")
    assert costly._overrun(0, 0.3, costly.budget) == (
        "cost budget: 0.5 spent + 0.25 reserved + up to 0.3 for this call > max_cost 1"
    )
    assert Ledger(Budget(max_cost=1.0))._overrun(0, 1.5, Budget(max_cost=1.0)) == (
        "cost budget: 0 spent + up to 1.5 for this call > max_cost 1"
    )
    assert costly._overrun(0, 0.25, costly.budget) is None
    # tool calls
    assert costly.take_tool_call(None) and costly.tool_calls == 1
    assert costly.take_tool_call(2) and costly.tool_calls == 2
    assert not costly.take_tool_call(2) and costly.tool_calls == 2
    # the invocation's budget replaces the spec's
    assert budget_of(None, Budget(5)) == Budget(5)
    assert budget_of({"configurable": {"budget": {"max_cost": 2}}}, Budget(5)) == Budget(5, 2.0)


async def test_ledger_waits_for_calls_in_flight_before_refusing() -> None:
    from langgraph_moa.nodes.budget import BudgetExceeded, Ledger

    ledger = Ledger(Budget(max_total_tokens=100))
    first = await ledger.reserve(80, 0.0, "a")
    waiting = asyncio.ensure_future(ledger.reserve(50, 0.0, "b"))
    await asyncio.sleep(0)  # let it start waiting
    assert not waiting.done()
    ledger.settle(first, {"total_tokens": 30})  # the call used less than it reserved
    assert await waiting == (50, 0.0)
    assert (ledger.tokens, ledger.reserved_tokens) == (30, 50)
    # when what is in flight settles and it still does not fit: refused
    late = asyncio.ensure_future(ledger.reserve(71, 0.0, "c"))
    await asyncio.sleep(0)
    ledger.settle((50, 0.0), {"total_tokens": 50})
    with pytest.raises(BudgetExceeded, match="c: token budget: 80 used"):
        await late


# -- the layer gate ---------------------------------------------------------------------


async def test_layer_gate_quorum_grace_and_cut() -> None:
    from langgraph_moa.nodes._quorum import Cut, LayerGate, layer_gate
    from langgraph_moa.nodes.budget import Ledger

    ledger = Ledger(Budget())
    gate = LayerGate(layer=1, needed=2, grace=0.01, timeout=None, ledger=ledger, run_id="r")
    assert (gate.layer, gate.needed, gate.grace, gate.run_id) == (1, 2, 0.01, "r")
    assert gate.ledger is ledger and gate.answered == 0 and gate.reason is None
    gate.report(False)
    gate.report(True)
    assert gate.answered == 1 and not gate._timers
    gate.report(True)
    assert gate.answered == 2 and len(gate._timers) == 1
    never = asyncio.Event()
    with pytest.raises(
        Cut,
        match=r"^no answer within the grace period of 0\.01s after 2 agents "
        r"answered \(quorum 2\)$",
    ):
        await gate.guard(never.wait())
    assert not gate._calls
    # once cut, a new call is not started
    started: list[int] = []

    async def call() -> int:
        started.append(1)
        return 1

    with pytest.raises(Cut):
        await gate.guard(call())
    assert started == []
    gate.cut("another reason")
    assert gate.reason.startswith("no answer within the grace period")  # type: ignore[union-attr]
    gate.close()

    # a quorum of 0 (or less) starts the grace period at once; no grace, no timer
    zero = LayerGate(layer=2, needed=-1, grace=0.5, timeout=None, ledger=ledger, run_id="r")
    assert zero.needed == 0 and len(zero._timers) == 1
    zero.close()
    assert zero._timers[0].cancelled()
    none = LayerGate(layer=2, needed=0, grace=None, timeout=None, ledger=ledger, run_id="r")
    assert none._timers == []
    assert await none.guard(call()) == 1

    # a timeout cuts everything still running
    timed = LayerGate(layer=3, needed=1, grace=None, timeout=0.01, ledger=ledger, run_id="r")
    with pytest.raises(Cut, match=r"^no answer within the layer timeout of 0\.01s$"):
        await timed.guard(never.wait())
    # a cancellation that is not the gate's goes through
    task = asyncio.ensure_future(none.guard(never.wait()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # the agent's own task cancelled while its layer is cut: a cancellation, not a Cut
    cut_too = LayerGate(layer=4, needed=1, grace=None, timeout=None, ledger=ledger, run_id="r")
    task = asyncio.ensure_future(cut_too.guard(never.wait()))
    await asyncio.sleep(0)
    cut_too.cut("layer cut")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cut_too.reason == "layer cut"

    # agents of one layer share a gate; the last to leave closes it
    kwargs: dict[str, Any] = {
        "layer": 1,
        "needed": 1,
        "grace": 5.0,
        "timeout": 9.0,
        "ledger": ledger,
        "run_id": "r",
    }
    from langgraph_moa.nodes import _quorum

    with layer_gate(("k",), **kwargs) as g1:
        with layer_gate(("k",), **{**kwargs, "needed": 3}) as g2:
            assert g1 is g2 and g1.needed == 1
            assert _quorum._gates[("k",)] == (g1, 2)
        assert _quorum._gates[("k",)] == (g1, 1)
        assert not g1._timers[0].cancelled()
        with layer_gate(("other",), **kwargs) as g3:
            assert g3 is not g1
    assert ("k",) not in _quorum._gates and ("other",) not in _quorum._gates
    assert g1._timers[0].cancelled()


# -- conversations and prompts ----------------------------------------------------------


def test_turns_without_asked_and_history_notes() -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from langgraph_moa.nodes.conversation import (
        earlier_turns,
        fitted_history,
        history_note,
        with_history,
    )

    messages = [
        AIMessage("before any question"),
        HumanMessage("q1"),
        AIMessage(""),
        AIMessage("a1"),
        AIMessage(""),
        HumanMessage("q2"),
    ]
    assert earlier_turns({"messages": messages}) == [{"question": "q1", "answer": "a1"}]
    assert earlier_turns({"messages": messages, "asked": "missing"}) == [
        {"question": "q1", "answer": "a1"}
    ]
    assert earlier_turns({"messages": [AIMessage("x")]}) == []
    assert earlier_turns({}) == []
    assert history_note(0, 5) == ""
    assert history_note(2, 5) == prompts.HISTORY_TRIMMED.format(dropped=2, total=5)
    turns = [{"question": "q", "answer": "a"}]
    task = [HumanMessage("task")]
    assert with_history(task, [], 0) is task
    assert [(m.type, m.text) for m in with_history(task, turns, 1)] == [
        ("human", "task"),
        ("system", history_note(1, 2)),
        ("human", "q"),
        ("ai", "a"),
    ]
    base = [SystemMessage("sys"), HumanMessage("task")]
    assert [(m.type, m.text) for m in with_history(base, turns)] == [
        ("system", "sys"),
        ("human", "q"),
        ("ai", "a"),
        ("human", "task"),
    ]
    assert with_history(base, [], 3)[0].text == "sys\n\n" + history_note(3, 3)
    # fitting: the window minus the reply, the prompt and a margin
    from langgraph_moa.nodes.conversation import HISTORY_MARGIN, tokens_of, turn_messages

    state: Any = {"messages": [HumanMessage("q"), AIMessage("a"), HumanMessage("task")]}
    need = tokens_of(base) + HISTORY_MARGIN + tokens_of(turn_messages(turns))
    assert fitted_history(state, base, need + 10, 10) == (turns, 0)
    assert fitted_history(state, base, need + 9, 10) == ([], 1)
    assert fitted_history(state, base, 0, 10) == ([], 1)
    assert fitted_history({"messages": [HumanMessage("task")]}, base, 0, 10) == ([], 0)


def test_prompt_pieces() -> None:
    assert prompts.format_proposal(2, "a", None, "  text \n") == "2. [a]\ntext"
    assert prompts.format_proposal(1, "a", "sub", "t") == "1. [a] (subtask: sub)\nt"
    assert prompts.numbered_proposal(3, "b", "\n body ") == "[3] b\nbody"
    assert prompts.with_tools("answer", None) == "answer"
    assert prompts.with_tools("answer", {}) == "answer"
    assert prompts.with_tools("answer", {"add": 1, "py": 3}) == "(tools used: add, py x3)\nanswer"
    assert prompts.with_tools("a", {"add": 2}) == "(tools used: add x2)\na"  # 2 is counted


def test_usage_of_takes_the_reported_total_or_sums_in_and_out() -> None:
    from langchain_core.messages import AIMessage

    from langgraph_moa.nodes._context import usage_of
    from langgraph_moa.spec.model import ModelSpec

    spec = ModelSpec(model="fake:x", input_cost_per_mtok=2.0, output_cost_per_mtok=10.0)
    # a provider's total may count more than input + output (reasoning, cache): it is kept
    reported = AIMessage(
        "x", usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 9}
    )
    assert usage_of(reported, spec) == {
        "input_tokens": 3,
        "output_tokens": 2,
        "total_tokens": 9,
        "calls": 1,
        "cost": (3 * 2.0 + 2 * 10.0) / 1e6,
    }
    # no total reported: input + output
    partial = AIMessage("x")
    partial.usage_metadata = {"input_tokens": 7, "output_tokens": 4}  # type: ignore[typeddict-item]
    assert usage_of(partial, spec)["total_tokens"] == 11
    assert usage_of(AIMessage("x"), spec) == {
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "calls": 1,
        "cost": 0.0,
    }


# -- aggregation: final answers, votes, picks ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so \\boxed{1} then \\boxed{2}", "2"),
        ("answer: 3\nanswer is 4", "4"),
        ("The final answer was: 5", "5"),
        ("answer = 6", "6"),
        ("answer - 7", "7"),
        ("- **x**.", "x"),
        ("> quote", "quote"),
        ("## head", "head"),
        ('"quoted";', "quoted"),
        ("line1\n\nline2  ", "line2"),
        ("*_*", None),
        ("", None),
        ("answer: __42__", "42"),  # underlines dropped, not replaced
        ("answer: the __big__ one", "the big one"),  # inside too
        ("answer: 'Paris.'", "Paris"),  # decoration, then punctuation, then decoration
        ("answer: Malcolm X", "Malcolm X"),  # only punctuation is cut at the end
    ],
)
def test_extract_answer(text: str, answer: str | None) -> None:
    from langgraph_moa.nodes.aggregation import extract_answer

    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("token", "canonical"),
    [
        ("48.0", "48"),
        ("0.50", "0.5"),
        ("1/2", "1/2"),
        ("abc", "abc"),
        ("-3.10", "-3.1"),
        ("1e3", "1000"),
        ("0", "0"),
        ("100", "100"),
        ("0.00000010", "0.0000001"),
    ],
)
def test_canonical_number(token: str, canonical: str) -> None:
    from langgraph_moa.nodes.aggregation import canonical_number

    assert canonical_number(token) == canonical


@pytest.mark.parametrize(
    ("answer", "key"),
    [
        ("(B)", "(b)"),
        ("b)", "(b)"),
        ("B. Paris", "(b)"),
        ("option b", "(b)"),
        ("choice (c)", "(c)"),
        ("letter d", "(d)"),
        ("h", "(h)"),
        ("i", "i"),
        ("Yes indeed", "yes"),
        ("Nope", "no"),
        ("1,234,567", "1234567"),
        ("$48", "48"),
        ("seven", "7"),
        ("twenty", "20"),
        ("zero", "0"),
        ("the", "the"),
        ("The Dog", "dog"),
        ("a cat", "cat"),
        ("...", None),
        ("x1 and 2", "2"),
        ("1_000", "1000"),
        ("12,34", "34"),
        ("\uff14\uff18", "48"),
        ("*B*", "(b)"),
        ('"Yes"', "yes"),
    ],
)
def test_normalize_answer(answer: str, key: str | None) -> None:
    from langgraph_moa.nodes.aggregation import normalize_answer

    assert normalize_answer(answer) == key


def test_tally_order_ties_and_agreement() -> None:
    from langgraph_moa.nodes.aggregation import tally

    vote = tally({"a": "1", "b": "2", "c": "2", "d": "1", "e": "3"})
    assert vote.votes == {"1": 2, "2": 2, "3": 1}  # a tie at the top, in the agents' order
    assert vote.tie and vote.winner is None and vote.agent is None and vote.agreement == 0.4
    vote = tally({"a": "9", "b": "7", "c": "7"}, min_agreement=0.67)
    assert (vote.winner, vote.agent, vote.agreement) == (None, None, 0.6667)
    vote = tally({"a": "9", "b": "7", "c": "7"}, min_agreement=0.66)
    assert (vote.winner, vote.agent, vote.tie) == ("7", "b", False)
    assert vote.answers == {"a": "9", "b": "7", "c": "7"}
    assert vote.keys == {"a": "9", "b": "7", "c": "7"}
    one = tally({"a": "5", "b": "5"})
    assert (one.winner, one.agent, one.tie, one.agreement) == ("5", "a", False, 1.0)
    empty = tally({})
    assert (empty.votes, empty.agreement, empty.winner, empty.tie) == ({}, 0.0, None, False)
    assert empty.describe() == "no answers"
    silent = tally({"a": "", "b": "  "})
    assert silent.describe() == "no answer found (a, b)" and silent.agreement == 0.0


@pytest.mark.parametrize(
    ("reply", "choice", "reason"),
    [
        ('{"best": 2, "reason": " ok "}', 2, "ok"),
        ('{"proposal": "[3]"}', 3, ""),
        ('{"pick": "#1", "reason": null}', 1, ""),
        ('{"choice": 9, "reason": "x"} [2]', 2, None),
        ('{"choice": true}', None, None),
        ('{"choice": "two"}', None, None),
        ('{"choice": "X2"}', None, None),
        ('{"choice": 2, "meta": {"x": 1}}', 2, ""),
        ('{"choice": 2}.', 2, ""),
        ('{"reason": "x"} [2]', 2, None),
        ("[2]\nfirst reason\nmore", 2, "first reason\nmore"),
        ("{not json} [1]", 1, None),
        ("[ 2 ]\nReason: short", 2, "short"),
        ("I pick [3]\n", 3, "I pick [3]"),
        ("Some text\n[2] is best", 2, None),
        ("The best: 2\nbecause - it is", 2, "it is"),
        ("Option #3", 3, None),
        ("3\nWhy: it is", 3, "it is"),
        ("first line\n2", None, None),
        ("p1 and p2 both", None, None),
        ("response 0 then response 2", 2, None),
    ],
)
def test_parse_pick(reply: str, choice: int | None, reason: str | None) -> None:
    from langgraph_moa.nodes.aggregation import parse_pick

    pick = parse_pick(reply, 3, ["p1", "p2", "p3"])
    assert (pick.choice, pick.reason) == (choice, reply.strip() if reason is None else reason)


def test_parse_pick_without_agent_names() -> None:
    from langgraph_moa.nodes.aggregation import Pick, parse_pick

    assert parse_pick("[2]", 3) == Pick(2, "[2]")
    assert parse_pick("p2", 3) == Pick(None, "p2")
    assert parse_pick("[3]", 2) == Pick(None, "[3]")


# -- attribution --------------------------------------------------------------------------

AGENTS = ["p1", "p2", "p3"]


@pytest.mark.parametrize(
    ("text", "stripped", "cited"),
    [
        ("Fact [1-2].", "Fact.", [1, 2]),
        ("Fact [2\u20133]", "Fact", [2, 3]),
        ("Fact [p2]", "Fact", [2]),
        ("Fact [p1; 3]", "Fact", [1, 3]),
        ("Fact [1,1]", "Fact", [1]),
        ("Fact [2-2]", "Fact", [2]),
        ("Fact [ 1 , 2 ]", "Fact", [1, 2]),
        ("Fact  [1]", "Fact", [1]),
        ("[1] lead", " lead", [1]),
        ("Use `a[1]` [2].", "Use `a[1]`.", [2]),
        ("Fact [4]", "Fact [4]", None),
        ("Fact [0]", "Fact [0]", None),
        ("Fact [3-1]", "Fact [3-1]", None),
        ("Fact[2]", "Fact[2]", None),
        ("x[1] stays", "x[1] stays", None),
    ],
)
def test_citations(text: str, stripped: str, cited: list[int] | None) -> None:
    from langgraph_moa.nodes.attribution import attribute, strip_citations

    assert strip_citations(text, AGENTS) == stripped
    answer, (claim,) = attribute(text, AGENTS, ["", "", ""])
    assert answer == stripped.strip()
    assert claim["text"] == stripped.strip()
    assert claim["proposals"] == (cited or [])
    assert claim["agents"] == [AGENTS[n - 1] for n in cited or []]
    assert claim["inferred"] is (cited is None)


def test_sentences_claims_and_content_words() -> None:
    from langgraph_moa.nodes.attribution import _content_words, _sentences, claims_of, copied

    assert _sentences("Pi is 3.14 exactly. Next one! Third? [1] Fourth x.y ok.") == [
        "Pi is 3.14 exactly.",
        "Next one!",
        "Third? [1]",
        "Fourth x.y ok.",
    ]
    assert _sentences('He said "yes." Then [2] left.') == ['He said "yes."', "Then [2] left."]
    assert claims_of("Intro.\n\n```py\nx = 1. y\n```\n---\nAfter.") == [
        "Intro.",
        "```py\nx = 1. y\n```",
        "After.",
    ]
    assert claims_of("~~~\ncode [1]\n~~~") == ["~~~\ncode [1]\n~~~"]
    assert claims_of("A.\n```\nx\n```\nB.\n~~~\ny\n~~~\nC.") == [
        "A.",
        "```\nx\n```",
        "B.",
        "~~~\ny\n~~~",
        "C.",
    ]
    assert _content_words("The cat sat on 7 mats and answer is 42 ab which") == {
        "42",
        "7",
        "cat",
        "mats",
        "sat",
    }
    assert copied("One. Two.", [(2, "p2"), (1, "p1")]) == [
        {"text": "One.", "agents": ["p2", "p1"], "proposals": [2, 1], "inferred": False},
        {"text": "Two.", "agents": ["p2", "p1"], "proposals": [2, 1], "inferred": False},
    ]


def test_attribution_inferred_from_overlap() -> None:
    from langgraph_moa.nodes.attribution import attribute, strip_citations

    # half of the claim's content words is enough (2 of 4), less is not (1 of 4)
    answer, claims = attribute(
        "cats dogs birds fish", AGENTS, ["cats dogs", "birds", "cats dogs birds"]
    )
    assert answer == "cats dogs birds fish"
    assert claims == [
        {
            "text": "cats dogs birds fish",
            "agents": ["p1", "p3"],
            "proposals": [1, 3],
            "inferred": True,
        }
    ]
    # no content words: no support
    assert attribute("the and", AGENTS, ["the and"] * 3)[1][0]["agents"] == []
    # a claim that is only citations is dropped; code blocks are claims, never stripped
    text = "[1]\nReal claim [2].\n```\nx = [1]\n```"
    answer, claims = attribute(text, AGENTS, ["", "", ""])
    assert answer == "Real claim.\n```\nx = [1]\n```"
    assert [c["text"] for c in claims] == ["Real claim.", "```\nx = [1]\n```"]
    assert claims[1]["inferred"] is True and claims[1]["agents"] == []
    assert strip_citations("a [1]\n```\nb [1]\n```\nc [1]", AGENTS) == "a\n```\nb [1]\n```\nc"
    assert strip_citations("Fact [1].", []) == "Fact [1]."
    # names that begin or end with the letter X are cited by name too
    assert strip_citations("Fact [Xa; bX].", ["Xa", "bX"]) == "Fact."
    # a claim left with no word once its citation is gone is dropped
    answer, claims = attribute("Fact [1]. ?! [2]", AGENTS, ["", "", ""])
    assert [(c["text"], c["proposals"]) for c in claims] == [("Fact.", [1])]


def test_fit_proposals_finds_the_largest_cap_that_fits_for_every_budget() -> None:
    from langgraph_moa.nodes.synthesizer import MIN_PROPOSAL_TOKENS, _tokens

    texts = {"a": " ".join(["word"] * 60), "b": " ".join(["word"] * 200), "c": "short one"}
    sizes = {n: _tokens(t) for n, t in texts.items()}
    for budget in range(MIN_PROPOSAL_TOKENS * 3, sum(sizes.values())):
        cap = max(
            c
            for c in range(MIN_PROPOSAL_TOKENS, max(sizes.values()) + 1)
            if sum(min(s, c) for s in sizes.values()) <= budget
        )
        fitted, notes = fit_proposals(texts, budget)
        assert notes == [
            f"proposal of {n} trimmed from about {sizes[n]} to {cap} tokens to fit"
            for n in texts
            if sizes[n] > cap
        ], budget
        assert all(fitted[n] == texts[n] for n in texts if sizes[n] <= cap), budget
        for n in texts:  # a trimmed one: a prefix, no blank before the marker
            if sizes[n] > cap:
                kept = fitted[n].removesuffix(" [...]")
                assert texts[n].startswith(kept) and kept == kept.rstrip(), budget


def test_fit_proposals_exact_caps_boundaries_and_messages() -> None:
    long = " ".join(["word"] * 400)  # 504 tokens; "short answer" is 7
    texts = {"a": "short answer", "b": long}
    assert fit_proposals(texts, 511) == (texts, [])  # exactly the budget: whole
    assert fit_proposals(texts, 511, on_overflow="fail") == (texts, [])
    fitted, notes = fit_proposals(texts, 120)
    assert fitted == {"a": "short answer", "b": long[: len(long) * 113 // 504].rstrip() + " [...]"}
    assert notes == ["proposal of b trimmed from about 504 to 113 tokens to fit"]
    both, notes = fit_proposals({"x": long, "y": long}, 100)
    assert both["x"] == both["y"] == long[: len(long) * 50 // 504].rstrip() + " [...]"
    assert notes == [
        "proposal of x trimmed from about 504 to 50 tokens to fit",
        "proposal of y trimmed from about 504 to 50 tokens to fit",
    ]
    tiny, notes = fit_proposals({"x": long, "y": long}, 32)  # 16 tokens each: still allowed
    assert notes[0] == "proposal of x trimmed from about 504 to 16 tokens to fit"
    assert tiny["x"] == long[: len(long) * 16 // 504].rstrip() + " [...]"
    with pytest.raises(ContextWindowError) as err:
        fit_proposals({"x": long, "y": long}, 31)
    assert str(err.value) == (
        "only 31 tokens are left for 2 proposals in the synthesizer's context window; use a "
        "model with a larger `context_window` or a shorter task"
    )
    with pytest.raises(ContextWindowError) as err:
        fit_proposals(texts, 50, on_overflow="fail")
    assert str(err.value) == (
        "the proposals need about 511 tokens but only 50 are left in the synthesizer's context "
        "window; use a model with a larger `context_window`, lower the agents' `max_tokens`, or "
        "set `on_overflow: trim`"
    )


def test_parse_plan_forms_and_exact_errors() -> None:
    from langgraph_moa.nodes.router import Plan, parse_plan

    agents = ["a", "b"]
    want = [{"agent": "a", "subtask": "x"}, {"agent": "b", "subtask": "y"}]
    raw = [{"agent": " a ", "subtask": " x "}, {"agent": "b", "subtask": "y"}]
    assert parse_plan(raw, agents) == want
    assert parse_plan({"plan": raw}, agents) == want
    assert parse_plan(f'Here: {{"plan": {str(raw).replace(chr(39), chr(34))}}}', agents) == want
    assert parse_plan(Plan.model_validate({"plan": want}), agents) == want
    # an agent named twice gets one step with both subtasks
    twice = [
        {"agent": "a", "subtask": "x"},
        {"agent": "b", "subtask": "y"},
        {"agent": "a", "subtask": "z"},
    ]
    assert parse_plan(twice, agents) == [
        {"agent": "a", "subtask": "x\nz"},
        {"agent": "b", "subtask": "y"},
    ]
    for bad, message in [
        ({"plan": "x"}, 'expected {"plan": [{"agent": ..., "subtask": ...}]}'),
        (5, 'expected {"plan": [{"agent": ..., "subtask": ...}]}'),
        ([], "the plan is empty"),
        (["a"], "plan item 0 must be an object with string fields agent and subtask"),
        ([{"agent": 3}], "plan item 0 must be an object with string fields agent and subtask"),
        (
            [{"agent": "c", "subtask": "x"}],
            "plan item 0 names unknown agent 'c'; use one of ['a', 'b']",
        ),
        ([want[0], {"agent": "b", "subtask": " "}], "plan item 1 for 'b' has an empty subtask"),
        ([{"agent": "b"}], "plan item 0 for 'b' has an empty subtask"),
    ]:
        with pytest.raises(PlanError) as err:
            parse_plan(bad, agents)
        assert str(err.value) == message, bad


def test_parse_budget_exact_message() -> None:
    with pytest.raises(ValueError) as err:
        parse_budget("gold=3")
    assert str(err.value) == (
        "budget 'gold=3': 'gold=3' is not understood; write tokens=N, cost=X or both, "
        "e.g. --budget tokens=20000,cost=0.50"
    )
    with pytest.raises(ValueError) as err:
        parse_budget(" , ")
    assert str(err.value) == "budget ' , ' is empty; write tokens=N, cost=X or both"
    with pytest.raises(ValueError) as err:
        parse_budget("$0")
    assert str(err.value) == "budget '$0': cost must be a positive number, got '0'"
    assert parse_budget("tokens=none, cost=$1_0.5") == {"max_total_tokens": None, "max_cost": 10.5}
    # underscores go, wherever they are (Python's int() alone refuses these)
    assert parse_budget("tokens=1__000_,cost=_2") == {"max_total_tokens": 1000, "max_cost": 2.0}


def test_jsonable_dumps_pydantic_objects_in_json_mode_and_the_rest_as_text() -> None:
    from decimal import Decimal

    import pydantic

    from langgraph_moa.nodes._calls import _jsonable

    class Price(pydantic.BaseModel):
        amount: Decimal

    class Plain:
        def __repr__(self) -> str:
            return "<plain>"

    got = _jsonable({"p": Price(amount=Decimal("1.50")), "o": Plain(), "t": Price, 1: (2,)})
    assert got == {"p": {"amount": "1.50"}, "o": "<plain>", "t": repr(Price), "1": [2]}


def test_a_tool_result_as_text() -> None:
    from langgraph_moa.nodes.toolloop import _text

    assert _text("as is") == "as is"
    assert _text([{"type": "text", "text": "a"}, {"type": "image"}, 7]) == "a\n\n7"
    assert _text({"n": 1}) == "{'n': 1}"
