"""Pure helpers of the nodes, checked value by value (fast: the mutation run of nodes/ uses
them): usage reports, budgets from the command line, the router's JSON reading, the
synthesizer's proposal fitting."""

from __future__ import annotations

import pytest

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
