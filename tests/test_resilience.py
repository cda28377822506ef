"""Agent calls that hold up, over real HTTP against the test model server's fault injection:
retries, timeouts, quorum with grace, in-flight and rate limits, usage, budgets."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
import yaml

from langgraph_moa.models import ModelResolver
from langgraph_moa.models.limits import DEFAULT_MAX_CONCURRENCY, CallLimiter
from langgraph_moa.nodes import QuorumError
from langgraph_moa.nodes.budget import usage_report
from langgraph_moa.runtime import MoA
from langgraph_moa.testing import ChatRequest, ModelServer


def spec_of(
    srv: ModelServer,
    agents: list[str],
    *,
    layers: int = 1,
    model: dict[str, Any] | None = None,
    synth: str = "synth",
    **layer: Any,
) -> dict[str, Any]:
    """Each agent on its own model of ``srv`` (named like the agent), a synthesizer model."""
    settings = {"base_url": srv.base_url, "max_retries": 0, **(model or {})}
    models = {n: {"model": n, **settings} for n in [*agents, "synth"]}
    return {
        "name": "resilience",
        "models": models,
        "agents": [{"name": n, "model": n} for n in agents],
        "layers": [{"agents": agents, "synthesizer": {"model": synth}, **layer}] * layers,
    }


def of(srv: ModelServer, model: str) -> list[ChatRequest]:
    return sorted((r for r in srv.requests if r.model == model), key=lambda r: r.started)


def served_usage(srv: ModelServer, model: str | None = None) -> dict[str, int]:
    reqs = srv.requests if model is None else of(srv, model)
    return {
        key: sum((r.usage or {}).get(key, 0) for r in reqs)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens")
    }


def assert_usage_matches(usage: dict[str, Any], served: dict[str, int]) -> None:
    assert usage.get("input_tokens", 0) == served["prompt_tokens"]
    assert usage.get("output_tokens", 0) == served["completion_tokens"]
    assert usage.get("total_tokens", 0) == served["total_tokens"]


# -- retries: the OpenAI client's own, configured per model entry ---------------------------


async def test_429_with_retry_after_is_honoured_then_succeeds(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="a", fail=429, retry_after=1.0, times=1)
    spec = spec_of(model_server, ["a"], model={"max_retries": 2})
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")

    assert result.status == "success"
    assert result.values["proposals"]["1"]["a"]["status"] == "ok"
    first, second = of(model_server, "a")
    assert (first.status, second.status) == (429, 200)
    # the client's own first backoff is at most 0.5 s: a 1 s gap means Retry-After was used
    assert second.started - first.started >= 1.0


async def test_500_burst_is_retried_with_growing_backoff(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="a", fail=500, times=3)
    model_server.add_rule(model="b", fail=503)  # never recovers: retries run out
    spec = spec_of(model_server, ["a", "b"], model={"max_retries": 3})
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")

    proposals = result.values["proposals"]["1"]
    assert proposals["a"]["status"] == "ok"
    assert [r.status for r in of(model_server, "a")] == [500, 500, 500, 200]
    starts = [r.started for r in of(model_server, "a")]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # exponential backoff with at most 25% jitter: 0.5, 1, 2 s times 0.75..1
    assert gaps[0] >= 0.375 and gaps[1] >= 0.75 and gaps[2] >= 1.5
    assert model_server.calls("b") == 4  # one call and max_retries=3 retries
    assert proposals["b"]["status"] == "failed"
    assert "InternalServerError" in proposals["b"]["error"] or "503" in proposals["b"]["error"]
    assert "b failed" in of(model_server, "synth")[0].system


async def test_defaults_retry_three_times_with_a_call_timeout(
    model_server: ModelServer, sqlite_url: str
) -> None:
    from langgraph_moa.models import DEFAULT_TIMEOUT, ModelResolver
    from langgraph_moa.spec import ModelSpec

    model_server.add_rule(model="a", fail=502, times=3)
    spec = {  # no max_retries, no timeout: the defaults
        "models": {"a": {"model": "a", "base_url": model_server.base_url}},
        "agents": [{"name": "a", "model": "a"}],
        "layers": [{"agents": ["a"], "synthesizer": "concat"}],
    }
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")
    assert result.values["proposals"]["1"]["a"]["status"] == "ok"
    assert [r.status for r in of(model_server, "a")] == [502, 502, 502, 200]
    resolver = ModelResolver({"a": ModelSpec(model="a", base_url=model_server.base_url)})
    model: Any = resolver.get("a", temperature=0, max_tokens=8)
    assert (model.max_retries, model.request_timeout) == (3, DEFAULT_TIMEOUT)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_4xx_that_cannot_succeed_is_not_retried(
    model_server: ModelServer, sqlite_url: str, status: int
) -> None:
    model_server.add_rule(model="bad", fail=status)
    spec = spec_of(model_server, ["bad", "good"], model={"max_retries": 5})
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")

    assert model_server.calls("bad") == 1
    bad = result.values["proposals"]["1"]["bad"]
    assert bad["status"] == "failed" and str(status) in bad["error"]
    assert result.status == "success"  # quorum 1: the good agent carries the layer


async def test_dropped_connection_is_retried(model_server: ModelServer, sqlite_url: str) -> None:
    model_server.add_rule(model="a", fail="stall", stall=0.2, times=1)  # closes, no response
    spec = spec_of(model_server, ["a"], model={"max_retries": 1, "timeout": 10})
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")

    assert result.values["proposals"]["1"]["a"]["status"] == "ok"
    assert [r.failure for r in of(model_server, "a")] == ["stall", None]


# -- timeouts --------------------------------------------------------------------------------


async def test_stalled_call_is_cut_by_its_timeout_then_retried(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="a", fail="stall", stall=60, times=1)
    model_server.add_rule(model="b", fail="stall", stall=60)
    spec = spec_of(model_server, ["a", "b"], model={"max_retries": 1, "timeout": 3})
    spec["models"]["b"]["max_retries"] = 0
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")

    proposals = result.values["proposals"]["1"]
    assert proposals["a"]["status"] == "ok"
    assert [r.failure for r in of(model_server, "a")] == ["stall", None]
    assert proposals["b"]["status"] == "failed"
    assert "Timeout" in proposals["b"]["error"] or "timed out" in proposals["b"]["error"]
    # the stalled calls still hang on the server (60 s): the client cut them, not the server
    assert model_server.in_flight("a") == 1 and model_server.in_flight("b") == 1


async def test_layer_timeout_cuts_stragglers(model_server: ModelServer, sqlite_url: str) -> None:
    model_server.add_rule(model="slow", fail="stall", stall=60)
    spec = spec_of(model_server, ["fast", "slow"], timeout=4)
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")

    assert result.status == "success"
    slow = result.values["proposals"]["1"]["slow"]
    assert slow["status"] == "missing" and "layer timeout of 4s" in slow["error"]
    assert model_server.in_flight("slow") == 1  # cut by the layer, still hanging upstream
    assert "slow did not answer in time" in of(model_server, "synth")[0].system
    assert any("slow did not answer in time" in n for n in result.notes)


# -- quorum ----------------------------------------------------------------------------------


async def test_quorum_two_of_three_cuts_the_hanging_agent_after_grace(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="p3", fail="stall", stall=120)
    spec = spec_of(model_server, ["p1", "p2", "p3"], min_proposals=2, grace_period=0.3)
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Name two uses of a B-tree.")

    assert result.status == "success"
    proposals = result.values["proposals"]["1"]
    assert [proposals[a]["status"] for a in ("p1", "p2", "p3")] == ["ok", "ok", "missing"]
    assert "grace period of 0.3s" in proposals["p3"]["error"]
    # the layer did not wait for p3: its call still hangs on the server
    assert model_server.in_flight("p3") == 1
    synth_prompt = of(model_server, "synth")[0].system
    assert "p3 did not answer in time" in synth_prompt
    assert proposals["p1"]["content"] in synth_prompt and proposals["p2"]["content"] in synth_prompt
    assert_usage_matches(result.usage, served_usage(model_server))


async def test_below_quorum_fails_and_resume_retries_only_the_failed_agents(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="p2", fail=500, times=2)
    model_server.add_rule(model="p3", fail=500, times=1)
    spec = spec_of(model_server, ["p1", "p2", "p3"], min_proposals=2)
    async with MoA(spec, db_url=sqlite_url) as moa:
        with pytest.raises(QuorumError, match=r"layer 1: 1 of 3 agents answered, 2 needed"):
            await moa.ainvoke("task", thread_id="t")
        assert [model_server.calls(m) for m in ("p1", "p2", "p3", "synth")] == [1, 1, 1, 0]

        # p2 still fails, p3 answers: 2 of 3 is a quorum
        resumed = await moa.ainvoke(None, thread_id="t")

    assert resumed.status == "success"
    assert [model_server.calls(m) for m in ("p1", "p2", "p3", "synth")] == [1, 2, 2, 1]
    proposals = resumed.values["proposals"]["1"]
    assert [proposals[a]["status"] for a in ("p1", "p2", "p3")] == ["ok", "failed", "ok"]
    assert "p2 failed" in of(model_server, "synth")[0].system
    assert_usage_matches(resumed.usage, served_usage(model_server))


async def test_quorum_failure_persists_until_the_models_recover(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.add_rule(model="p2", fail=503, times=2)
    spec = spec_of(model_server, ["p1", "p2"], min_proposals=2)
    async with MoA(spec, db_url=sqlite_url) as moa:
        for _ in range(2):  # the first run and one resume both fail on p2
            with pytest.raises(QuorumError, match="p2 failed"):
                await moa.ainvoke("task" if _ == 0 else None, thread_id="t")
        done = await moa.ainvoke(None, thread_id="t")
    assert done.status == "success"
    assert [model_server.calls(m) for m in ("p1", "p2", "synth")] == [1, 3, 1]


# -- in-flight and rate limits -----------------------------------------------------------------


async def test_fifty_agents_on_one_endpoint_never_exceed_its_concurrency(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.set_latency("w", 0.25)
    names = [f"a{i}" for i in range(1, 51)]
    spec = {
        "models": {"w": {"model": "w", "base_url": model_server.base_url, "max_concurrency": 4}},
        "agents": [{"name": n, "model": "w"} for n in names],
        "layers": [{"agents": names, "synthesizer": "concat"}],
    }
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")

    assert model_server.calls("w") == 50
    assert all(p["status"] == "ok" for p in result.values["proposals"]["1"].values())
    assert model_server.max_in_flight("w") == 4


async def test_an_endpoint_without_a_cap_gets_the_default_one(
    model_server: ModelServer, sqlite_url: str
) -> None:
    model_server.set_latency("w", 0.5)
    names = [f"a{i}" for i in range(1, DEFAULT_MAX_CONCURRENCY + 21)]
    spec = {
        "models": {"w": {"model": "w", "base_url": model_server.base_url}},
        "agents": [{"name": n, "model": "w"} for n in names],
        "layers": [{"agents": names, "synthesizer": "concat"}],
    }
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task")

    assert sum(p["status"] == "ok" for p in result.values["proposals"]["1"].values()) == len(names)
    assert model_server.max_in_flight("w") == DEFAULT_MAX_CONCURRENCY


async def test_models_of_one_endpoint_share_one_http_client(model_server: ModelServer) -> None:
    from langgraph_moa.spec import ModelSpec

    endpoint = ModelSpec(model="w", base_url=model_server.base_url)
    resolver = ModelResolver({"w": endpoint, "v": endpoint.model_copy(update={"model": "v"})})
    agent = resolver.get("w", temperature=0.7, max_tokens=64)
    synth = resolver.get("w", temperature=0.0, max_tokens=256)
    other = resolver.get("v", temperature=0.7, max_tokens=64)
    assert agent is not synth
    client = agent.http_async_client  # type: ignore[attr-defined]
    assert client is synth.http_async_client is other.http_async_client  # type: ignore[attr-defined]
    assert ModelResolver({}).limiter(None) is None  # the embedded model queues its own calls


def test_an_event_loops_http_clients_close_with_it(model_server: ModelServer) -> None:
    """``asyncio.run`` closes the clients its loop opened (no aiohttp session or socket is
    left for the garbage collector to warn about) and drops the loop's cached models, so
    that nothing keeps the closed loop alive; the next loop gets new clients."""
    from langgraph_moa.spec import ModelSpec

    resolver = ModelResolver({"w": ModelSpec(model="w", base_url=model_server.base_url)})
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def call() -> Any:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        model = resolver.get("w", temperature=0.0, max_tokens=16)
        reply = await model.ainvoke("hi")
        client = model.http_async_client  # type: ignore[attr-defined]
        assert reply.content and not client.is_closed
        assert resolver.get("w", temperature=0.0, max_tokens=16) is model
        return client

    first = asyncio.run(call())
    assert first.is_closed
    second = asyncio.run(call())
    assert second is not first and second.is_closed
    assert model_server.calls("w") == 2
    del first, second  # a closed aiohttp session still refers to its loop
    gc.collect()
    assert [ref() for ref in loops] == [None, None] and not resolver._by_loop


async def test_concurrency_cap_is_shared_by_runs_and_event_loops(
    model_server: ModelServer, tmp_path: Path
) -> None:
    model_server.set_latency("w", 0.3)
    names = [f"a{i}" for i in range(1, 9)]
    spec = {
        "models": {"w": {"model": "w", "base_url": model_server.base_url, "max_concurrency": 3}},
        "agents": [{"name": n, "model": "w"} for n in names],
        "layers": [{"agents": names, "synthesizer": "concat"}],
    }

    async def one_run(db: str, thread: str) -> str:
        async with MoA(spec, db_url=f"sqlite:///{tmp_path / db}") as moa:
            return (await moa.ainvoke(f"task {thread}", thread_id=thread)).status

    other_loop: list[str] = []
    thread = threading.Thread(target=lambda: other_loop.append(asyncio.run(one_run("b.db", "x"))))
    thread.start()
    here = await asyncio.gather(one_run("a.db", "y"), one_run("a.db", "z"))
    await asyncio.to_thread(thread.join)

    assert [*here, *other_loop] == ["success"] * 3
    assert model_server.calls("w") == 24
    spans = {}
    for run in ("x", "y", "z"):
        reqs = [r for r in of(model_server, "w") if r.last_user == f"task {run}"]
        assert len(reqs) == 8
        spans[run] = (min(r.started for r in reqs), max(r.finished or 0 for r in reqs))
    # the run in the other event loop overlapped the two in this one
    assert spans["x"][0] < max(spans["y"][1], spans["z"][1])
    assert min(spans["y"][0], spans["z"][0]) < spans["x"][1]
    assert model_server.max_in_flight("w") == 3


async def test_requests_per_second_spaces_the_calls(
    model_server: ModelServer, sqlite_url: str
) -> None:
    names = [f"a{i}" for i in range(1, 7)]
    spec = {
        "models": {
            "w": {"model": "w", "base_url": model_server.base_url, "requests_per_second": 5}
        },
        "agents": [{"name": n, "model": "w"} for n in names],
        "layers": [{"agents": names, "synthesizer": "concat"}],
    }
    async with MoA(spec, db_url=sqlite_url) as moa:
        await moa.ainvoke("task")

    starts = [r.started for r in of(model_server, "w")]
    assert len(starts) == 6
    # 5 requests per second, bucket of 1: six calls span at least five intervals of 0.2 s
    assert starts[-1] - starts[0] >= 5 * 0.2 * 0.9


async def test_call_limiter_survives_cancelled_waiters() -> None:
    limiter = CallLimiter(1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()  # gives up while queued
    with pytest.raises(asyncio.CancelledError):
        await waiter
    handed = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release()  # hands the slot to `handed`...
    handed.cancel()  # ...which is cancelled before it runs: the slot must come back
    with pytest.raises(asyncio.CancelledError):
        await handed
    await asyncio.sleep(0)
    assert limiter.in_use == 0
    async with limiter.slot():
        assert limiter.in_use == 1
    assert limiter.in_use == 0


# -- usage and cost --------------------------------------------------------------------------


async def test_usage_per_agent_layer_and_run_matches_the_server(
    model_server: ModelServer, sqlite_url: str
) -> None:
    prices = {"input_cost_per_mtok": 2.0, "output_cost_per_mtok": 10.0}
    spec = spec_of(model_server, ["p1", "p2", "p3"], layers=2, model=prices)
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("Compare B-trees and LSM-trees.", thread_id="t")
        assert moa.registry is not None
        record = await moa.registry.latest_run("t")

    assert record is not None and record.usage == result.usage  # the run registry has it
    report = usage_report(result.values)
    assert_usage_matches(report["total"], served_usage(model_server))
    assert report["total"] == result.usage
    for agent in ("p1", "p2", "p3"):
        assert_usage_matches(report["by_agent"][agent], served_usage(model_server, agent))
        assert report["by_agent"][agent]["calls"] == 2
    for layer in (1, 2):  # layer n: the n-th call of every model
        reqs = [r for r in model_server.requests if r.call == layer]
        served = {k: sum(r.usage[k] for r in reqs if r.usage) for k in ("prompt_tokens",)}
        assert report["by_layer"][str(layer)]["input_tokens"] == served["prompt_tokens"]
        assert report["by_layer"][str(layer)]["calls"] == 4
    served = served_usage(model_server)
    cost = (served["prompt_tokens"] * 2.0 + served["completion_tokens"] * 10.0) / 1e6
    assert report["total"]["cost"] == pytest.approx(cost)


# -- budgets ---------------------------------------------------------------------------------


async def _full_run_usage(srv: ModelServer, spec: dict[str, Any], db: str) -> tuple[int, int]:
    async with MoA(spec, db_url=db) as moa:
        full = await moa.ainvoke("task", thread_id="full")
    assert full.status == "success"
    calls, tokens = srv.calls(), full.usage["total_tokens"]
    srv.reset_counts()
    return calls, tokens


async def test_token_budget_stops_before_the_next_call_and_resumes_with_more(
    model_server: ModelServer, sqlite_url: str
) -> None:
    spec = spec_of(model_server, ["p1", "p2", "p3"], layers=2)
    spec["defaults"] = {"max_tokens": 8}
    full_calls, full_tokens = await _full_run_usage(model_server, spec, sqlite_url)

    budget = full_tokens // 2
    async with MoA({**spec, "max_total_tokens": budget}, db_url=sqlite_url) as moa:
        stopped = await moa.ainvoke("task", thread_id="t")
        assert stopped.status == "interrupted"
        (info,) = stopped.interrupts[:1]
        assert info["kind"] == "budget" and "token budget" in info["reason"]
        assert info["budget"]["max_total_tokens"] == budget
        assert stopped.usage["total_tokens"] <= budget  # it stopped before passing it
        assert served_usage(model_server)["total_tokens"] == stopped.usage["total_tokens"]
        calls_before = model_server.calls()
        assert 0 < calls_before < full_calls
        assert moa.registry is not None
        record = await moa.registry.latest_run("t")
        assert record is not None and record.status == "interrupted"
        assert record.usage == stopped.usage
        assert "token budget" in record.waiting_for[0]["reason"]

        # resuming with the same budget makes no call and stays paused
        again = await moa.ainvoke(None, thread_id="t")
        assert again.status == "interrupted" and model_server.calls() == calls_before

        done = await moa.ainvoke(None, thread_id="t", budget={"max_total_tokens": budget * 4})
        record = await moa.registry.latest_run("t")
        assert record is not None and record.status == "success"
        assert record.usage == done.usage

    assert done.status == "success" and done.answer
    assert model_server.calls() == full_calls  # nothing done before the stop was redone
    assert done.usage["total_tokens"] == full_tokens
    assert_usage_matches(done.usage, served_usage(model_server))


async def test_cost_budget_stops_and_resumes(model_server: ModelServer, sqlite_url: str) -> None:
    prices = {"input_cost_per_mtok": 1000.0, "output_cost_per_mtok": 4000.0}
    spec = spec_of(model_server, ["p1", "p2"], layers=2, model=prices)
    spec["defaults"] = {"max_tokens": 8}
    full_calls, _ = await _full_run_usage(model_server, spec, sqlite_url)
    async with MoA({**spec, "max_cost": 0.1}, db_url=sqlite_url) as moa:
        stopped = await moa.ainvoke("task", thread_id="t")
        assert stopped.status == "interrupted"
        assert "cost budget" in stopped.interrupts[0]["reason"]
        assert stopped.usage["cost"] <= 0.1
        done = await moa.ainvoke(None, thread_id="t", budget={"max_cost": None})  # no limit
    assert done.status == "success"
    assert model_server.calls() == full_calls
    assert_usage_matches(done.usage, served_usage(model_server))


# -- the CLI's live view -----------------------------------------------------------------------


async def test_live_view_shows_missing_agents_usage_cost_and_budget_pause(
    model_server: ModelServer, sqlite_url: str
) -> None:
    from rich.console import Console

    from langgraph_moa.runtime.progress import RunProgress

    model_server.add_rule(model="p3", fail="stall", stall=120)
    prices = {"input_cost_per_mtok": 3.0, "output_cost_per_mtok": 15.0}
    spec = spec_of(
        model_server, ["p1", "p2", "p3"], layers=2, model=prices, min_proposals=2, grace_period=0.2
    )
    spec["defaults"] = {"max_tokens": 8}
    view = RunProgress([["p1", "p2", "p3"]] * 2)
    async with MoA(spec, db_url=sqlite_url) as moa:
        result = await moa.ainvoke("task", on_event=view.feed)

    assert view.rows["L1_p3"].status == "missing" and "grace period" in view.rows["L1_p3"].note
    assert view.rows["L1_p1"].status == view.rows["L2_synthesizer"].status == "done"
    assert view.usage["total_tokens"] == result.usage["total_tokens"]
    assert view.usage["cost"] == pytest.approx(result.usage["cost"])
    console = Console(width=160, record=True)
    console.print(view.render())
    text = console.export_text()
    assert f"total: {result.usage['total_tokens']} tokens" in text and "cost" in text

    paused = RunProgress([["p1", "p2", "p3"]] * 2)
    async with MoA({**spec, "max_total_tokens": 200}, db_url=sqlite_url) as moa:
        stopped = await moa.ainvoke("task", thread_id="b", on_event=paused.feed)
    assert stopped.status == "interrupted"
    assert any(r.status == "paused" and "token budget" in r.note for r in paused.rows.values())


# -- the command line: --json and `moa resume --budget` ----------------------------------------


def _moa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_budget_stop_then_resume_with_a_larger_budget(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    spec = spec_of(model_server, ["p1", "p2", "p3"], layers=2)
    spec["defaults"] = {"max_tokens": 8}
    spec["max_total_tokens"] = 150
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    run = _moa("run", "task", "--spec", str(spec_file), "--db", sqlite_url, "-t", "b", "--json")
    assert run.returncode == 0, run.stderr
    stopped = json.loads(run.stdout)
    assert stopped["status"] == "interrupted"
    assert stopped["interrupts"][0]["kind"] == "budget"
    assert "max_total_tokens 150" in stopped["interrupts"][0]["reason"]
    assert stopped["usage"]["total"]["total_tokens"] <= 150
    assert stopped["usage"]["by_layer"]["1"]["calls"] >= 1
    calls_at_stop = model_server.calls()

    bare = _moa("resume", "b", "--db", sqlite_url)
    assert bare.returncode != 0 and "--budget tokens=N" in bare.stderr.replace("\n", "")
    assert model_server.calls() == calls_at_stop

    bad = _moa("resume", "b", "--db", sqlite_url, "--budget", "tokens=lots")
    assert bad.returncode == 2 and "tokens must be a positive integer" in bad.stderr

    done = _moa("resume", "b", "--db", sqlite_url, "--budget", "tokens=100000", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "success" and result["answer"]
    assert model_server.calls() == 8  # 3 agents + synthesizer, twice; nothing redone
    assert_usage_matches(result["usage"]["total"], served_usage(model_server))
    by_layer = result["usage"]["by_layer"]
    assert by_layer["1"]["calls"] == by_layer["2"]["calls"] == 4
