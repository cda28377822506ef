"""Budget parsing and merging: what ``--budget`` and ``configurable["budget"]`` accept."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from langgraph_moa.nodes.budget import (
    BUDGET_KEY,
    Budget,
    BudgetExceeded,
    Ledger,
    budget_of,
    parse_budget,
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("20000", {"max_total_tokens": 20000}),
        ("tokens=20_000", {"max_total_tokens": 20000}),
        ("cost=0.5", {"max_cost": 0.5}),
        ("$0.25", {"max_cost": 0.25}),
        ("tokens=100, cost=$2", {"max_total_tokens": 100, "max_cost": 2.0}),
        ("cost=none", {"max_cost": None}),
    ],
)
def test_parse_budget(text: str, want: dict[str, object]) -> None:
    assert parse_budget(text) == want


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "is empty"),
        ("tokens=-5", "tokens must be a positive integer"),
        ("tokens=1.5", "tokens must be a positive integer"),
        ("cost=free", "cost must be a positive number"),
        ("time=10", "'time=10' is not understood"),
        ("tokens=1,tokens=2", "is not understood"),
    ],
)
def test_parse_budget_names_the_problem(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_budget(text)


def test_configurable_budget_replaces_only_the_limits_it_names() -> None:
    spec = Budget(max_total_tokens=1000, max_cost=1.0)
    assert budget_of({}, spec) == spec
    config = {"configurable": {BUDGET_KEY: parse_budget("tokens=5000")}}
    assert budget_of(config, spec) == Budget(5000, 1.0)  # the cost limit stays
    config = {"configurable": {BUDGET_KEY: {"max_cost": None}}}
    assert budget_of(config, spec) == Budget(1000, None)
    assert not Budget() and Budget(max_cost=1.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tokens'\]"):
        budget_of({"configurable": {BUDGET_KEY: {"tokens": 5}}}, spec)
    with pytest.raises(TypeError, match="must be a mapping"):
        budget_of({"configurable": {BUDGET_KEY: 5}}, spec)


async def test_ledger_waits_for_calls_in_flight_before_refusing() -> None:
    ledger = Ledger(Budget(max_total_tokens=100), {"total_tokens": 10})
    first = await ledger.reserve(60, 0.0, "a")
    # 10 used + 60 reserved + 60 > 100: waits until the first call settles with 20 tokens
    second = asyncio.create_task(ledger.reserve(60, 0.0, "b"))
    await asyncio.sleep(0)
    assert not second.done()
    ledger.settle(first, {"total_tokens": 20})
    reserved = await second
    assert reserved == (60, 0.0)  # 30 used + 60 fits
    ledger.settle(reserved, {"total_tokens": 65})
    with pytest.raises(BudgetExceeded) as stop:  # nothing in flight to wait for: refuse
        await ledger.reserve(10, 0.0, "c")
    assert stop.value.info["node"] == "c" and stop.value.info["used"]["total_tokens"] == 95
    assert "max_total_tokens 100" in stop.value.info["reason"]


@pytest.mark.slow
def test_resilience_bench_runs(tmp_path: Path) -> None:
    """bench/resilience.py still runs (tiny arguments; its table and JSON, not timings)."""
    out = tmp_path / "resilience.json"
    bench = Path(__file__).resolve().parents[1] / "bench"
    done = subprocess.run(
        [sys.executable, str(bench / "resilience.py"), "--repeat", "1", "--latency", "0.01",
         "--straggle", "0.5", "--grace", "0.05", "--retry-after", "0.1", "--agents", "8",
         "--rps", "50", "--rps-agents", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=bench.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["scenario"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 6 and "scenario" in done.stdout
    assert rows["quorum 2/3 + grace"]["missing"] == 1 and rows["straggler"]["missing"] == 0
    assert rows["429 + Retry-After"]["calls"] == 5
    assert rows["max_concurrency 4, 8 agents"]["peak"] <= 4
