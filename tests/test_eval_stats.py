"""Evaluation that can decide: paired statistics against hand-computed values, the shipped
dataset's sources of truth, the deterministic ``--limit`` subset, and seeded sampling that
makes two runs of the same evaluation give the same answers (over the scripted server)."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from contextlib import redirect_stdout
from fractions import Fraction
from math import comb
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from langgraph_moa.eval import (
    EvalStore,
    bootstrap_interval,
    compare_paired,
    load_dataset,
    mcnemar_exact,
    normalize,
    paired_bootstrap,
    run_evaluation,
    score_answer,
    select_items,
)
from langgraph_moa.eval.command import build_specs
from langgraph_moa.eval.variants import sampling
from langgraph_moa.spec import load_spec
from langgraph_moa.testing import ChatRequest, ModelServer
from tests.helpers import served_models

# -- McNemar and the bootstraps ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, Fraction(1)),  # no discordant item: nothing tells them apart
        (0, 7, Fraction(2, 2**7)),  # 2 * P[X <= 0], X ~ Bin(7, 1/2)
        (1, 5, Fraction(2 * (1 + 6), 2**6)),  # 2 * (C(6,0) + C(6,1)) / 2^6 = 0.21875
        (10, 2, Fraction(2 * (1 + 12 + 66), 2**12)),  # 0.03857...
        (5, 5, Fraction(1)),  # 2 * 638/1024 > 1, capped
        (3, 12, Fraction(2 * (1 + 15 + 105 + 455), 2**15)),  # 0.03515...
    ],
)
def test_mcnemar_exact_against_hand_computed_binomial_tails(
    b: int, c: int, expected: Fraction
) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(float(expected), abs=1e-12)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)  # two-sided: symmetric


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_exact(-1, 3)


def _binomial_quantile(n: int, p: float, q: float) -> int:
    total = 0.0
    for k in range(n + 1):
        total += comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def test_bootstrap_intervals_match_the_binomial_quantiles() -> None:
    # 0/1 scores: a bootstrap mean is Binomial(n, p) / n, so the percentile interval is
    # (up to resampling noise of one step) the binomial 2.5% and 97.5% quantiles
    n, right = 100, 10
    scores = [1.0] * right + [0.0] * (n - right)
    low, high = bootstrap_interval(scores, seed=3)
    q_low = _binomial_quantile(n, 0.1, 0.025) / n  # 0.05
    q_high = _binomial_quantile(n, 0.1, 0.975) / n  # 0.16
    assert (q_low, q_high) == (0.05, 0.16)
    assert abs(low - q_low) <= 0.011 and abs(high - q_high) <= 0.011
    assert bootstrap_interval(scores, seed=3) == (low, high)  # seeded: the same interval

    # paired: the candidate is right on the baseline's 10 items and 10 more
    candidate = [1.0] * 20 + [0.0] * 80
    diff, d_low, d_high = paired_bootstrap(candidate, scores, seed=3)
    assert diff == pytest.approx(0.1)
    assert abs(d_low - q_low) <= 0.011 and abs(d_high - q_high) <= 0.011
    assert paired_bootstrap(candidate, scores, seed=3) == (diff, d_low, d_high)


def test_paired_bootstrap_of_identical_differences_is_a_point() -> None:
    assert paired_bootstrap([1.0] * 8, [0.0] * 8) == (1.0, 1.0, 1.0)
    assert paired_bootstrap([1.0, 0.0], [1.0, 0.0]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_compare_paired_counts_discordant_items_on_shared_items_only() -> None:
    baseline = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0, "e": 1.0, "only-base": 1.0}
    candidate = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 1.0, "e": 1.0, "only-cand": 0.0}
    c = compare_paired("moa", "single", candidate, baseline)
    assert (c.items, c.both, c.only_baseline, c.only_candidate, c.neither) == (5, 2, 1, 2, 0)
    assert c.difference == pytest.approx(0.2)
    assert c.p_value == pytest.approx(1.0)  # 2 * (1 + 3) / 8 = 1
    assert c.ci95[0] <= c.difference <= c.ci95[1]
    assert c.to_json()["mcnemar_p"] == 1.0


# -- the shipped dataset -----------------------------------------------------------------------

KINDS = ("arithmetic: ", "python: ", "python program: ", "definition: ", "fact: ")
SAFE = {"len": len, "sum": sum, "sorted": sorted, "min": min, "max": max, "range": range,
        "str": str, "int": int}  # fmt: skip


def _value(expression: str) -> Any:
    return eval(expression, {"__builtins__": {}, **SAFE})


def test_shipped_dataset_has_200_items_each_with_its_source_of_truth() -> None:
    items = load_dataset("basic")
    assert len(items) >= 200
    counts = Counter(i.category for i in items)
    assert set(counts) == {"arithmetic", "units", "strings", "facts", "choice", "code"}
    assert min(counts.values()) >= 15
    for item in items:
        assert item.scorer in ("exact", "regex") and item.reference
        assert item.source and item.source.startswith(KINDS), item.id
        reference = item.reference[0]
        computed = re.search(r"(?:^|; )arithmetic: (.+)$", item.source)
        if computed and item.category != "choice":
            assert float(_value(computed.group(1))) == float(reference), item.id
        elif item.source.startswith("python: "):
            assert str(_value(item.source.removeprefix("python: "))) == reference, item.id
        elif item.source.startswith("python program: "):
            printed = io.StringIO()
            with redirect_stdout(printed):
                exec(item.input.split("\n\n")[1], {})
            assert printed.getvalue().strip() == reference, item.id
        # the reference itself scores, and echoing the question never does
        assert score_answer(item, reference)[0] == 1.0, item.id
        assert score_answer(item, item.input)[0] == 0.0, item.id


def test_compute_dataset_needs_computing_and_its_answers_are_computed() -> None:
    """``compute``: the questions of the tools eval (issue 18), each answer recomputed."""
    items = load_dataset("compute")
    assert len(items) == 16
    assert Counter(i.category for i in items) == {"arithmetic": 8, "strings": 8}
    for item in items:
        assert item.source is not None and item.reference
        kind, _, expression = item.source.partition(": ")
        assert kind in ("arithmetic", "python"), item.id
        assert str(_value(expression)) == item.reference[0], item.id
        assert score_answer(item, item.reference[0])[0] == 1.0, item.id
        assert score_answer(item, item.input)[0] == 0.0, item.id


def test_multiple_choice_accepts_the_letter_or_the_option_and_nothing_else() -> None:
    items = {i.id: i for i in load_dataset("basic") if i.category == "choice"}
    assert len(items) >= 30
    letters = Counter(i.reference[0] for i in items.values())  # type: ignore[index]
    assert set(letters) == {"A", "B", "C", "D"}
    item = items["mc-01"]  # B) dolphin
    for answer in ("B", "B) dolphin", "**B**", "The answer is B.", "dolphin"):
        assert score_answer(item, answer)[0] == 1.0, answer
    for answer in ("A", "C) trout", "shark"):
        assert score_answer(item, answer)[0] == 0.0, answer
    first = items["mc-04"]  # A) Jupiter: a lone "A" is a letter, not an article
    assert score_answer(first, "A")[0] == 1.0 and score_answer(first, "B")[0] == 0.0
    assert normalize("A") == "a" and normalize("a dog") == "dog"


def test_limit_is_a_fixed_even_subset_and_grows_by_adding_items() -> None:
    items = load_dataset("basic")
    twelve = select_items(items, 12)
    assert [i.id for i in twelve] == [i.id for i in select_items(items, 12)]
    assert Counter(i.category for i in twelve) == dict.fromkeys(
        ["arithmetic", "units", "strings", "facts", "choice", "code"], 2
    )
    assert [i.category for i in twelve[:6]] == sorted(Counter(i.category for i in items))
    forty = select_items(items, 40)
    assert len(forty) == 40 and forty[:12] == twelve  # a longer run starts with these
    whole = select_items(items, None)  # every item, in the same order: a whole run stopped
    assert whole[:40] == forty and select_items(items, 10_000) == whole  # early did these first
    assert sorted(i.id for i in whole) == sorted(i.id for i in items) and len(whole) == 207


# -- seeded sampling ---------------------------------------------------------------------------


def _request(body: dict[str, Any]) -> ChatRequest:
    return ChatRequest("m", [{"role": "user", "content": "q"}], body, call=1)


def test_scripted_server_samples_choices_from_the_seed() -> None:
    choices = [f"answer {i}" for i in range(20)]
    drawn = {s: _request({"seed": s, "temperature": 0.7}).sample(choices) for s in range(10)}
    again = {s: _request({"seed": s, "temperature": 0.7}).sample(choices) for s in range(10)}
    assert drawn == again and len(set(drawn.values())) > 1
    assert _request({"seed": 5, "temperature": 0}).sample(choices) == "answer 0"


SAMPLED_ITEMS = [
    {"id": f"q{i}", "input": f"Q{i}: what is {i} + {i}?", "reference": str(2 * i)}
    for i in range(1, 7)
]


def sampled_trio(srv: ModelServer) -> dict[str, Any]:
    names = ["p1", "p2", "p3"]
    return {
        "name": "trio",
        "models": served_models(srv, *names, "synth"),
        "agents": [{"name": n, "model": n} for n in names],
        "layers": [{"agents": names, "synthesizer": {"model": "synth"}}],
    }


def script_sampling(srv: ModelServer) -> None:
    """Every model answers one of several texts, drawn from the request's seed."""

    def choices(req: ChatRequest) -> str:
        q = re.search(r"Q(\d+)", req.prompt)
        n = int(q.group(1)) if q else 0
        return req.sample([str(2 * n), str(2 * n + 1), f"The answer is {2 * n}.", "not sure"])

    srv.add_rule(reply=choices)


async def _answers(
    srv: ModelServer, url: str, tmp_path: Path, eval_id: str, seed: int, concurrency: int
) -> dict[tuple[str, str], str | None]:
    items = load_dataset(_write(tmp_path / "sampled.jsonl", SAMPLED_ITEMS))
    specs = build_specs(load_spec(sampled_trio(srv)), seed=seed)
    async with EvalStore.from_url(url) as store:
        await run_evaluation(items, specs, store, eval_id=eval_id, concurrency=concurrency)
        rows = await store.results(eval_id, "answer")
    return {(r.spec, r.item_id): r.answer for r in rows}


def _write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


async def test_two_runs_give_the_same_answers_whatever_the_concurrency(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    script_sampling(model_server)
    first = await _answers(model_server, sqlite_url, tmp_path, "run-1", 7, concurrency=1)
    sent = list(model_server.requests)
    second = await _answers(model_server, sqlite_url, tmp_path, "run-2", 7, concurrency=9)
    assert len(first) == 3 * len(SAMPLED_ITEMS)
    assert second == first
    # every call carried a seed, and the 3 Self-MoA copies of one prompt got 3 different ones
    assert all(isinstance(r.body.get("seed"), int) for r in sent)
    proposals = [
        r
        for r in sent
        if r.model == "p1"
        and r.last_user == SAMPLED_ITEMS[0]["input"]
        and "responses" not in r.system
    ]  # single, the 3 Self-MoA copies and MoA's p1 (whose node and prompt are the single's)
    assert len(proposals) == 5 and len({r.body["seed"] for r in proposals}) == 4
    assert len(set(first.values())) > 3  # the answers really are sampled
    other = await _answers(model_server, sqlite_url, tmp_path, "run-3", 8, concurrency=4)
    assert {(k[0].split("@")[0], k[1]): v for k, v in other.items()} != {
        (k[0].split("@")[0], k[1]): v for k, v in first.items()
    }


def test_cli_json_records_seeds_temperatures_and_paired_comparisons(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    script_sampling(model_server)
    spec = tmp_path / "trio.yaml"
    spec.write_text(yaml.safe_dump(sampled_trio(model_server)))
    dataset = _write(tmp_path / "sampled.jsonl", SAMPLED_ITEMS)
    from langgraph_moa.cli import app

    outputs = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.json"
        result = CliRunner().invoke(
            app,
            [
                "eval", str(dataset), "--spec", str(spec), "--db", sqlite_url,
                "--name", f"cli-{run}", "--seed", "11", "--json", str(out), "--markdown",
                "--quiet",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs.append((result.stdout, json.loads(out.read_text())))
    (table_a, data_a), (table_b, data_b) = outputs
    assert [s["scores"] for s in data_a["specs"]] == [s["scores"] for s in data_b["specs"]]
    assert data_a["paired"] == data_b["paired"]
    strip = re.compile(r"\| [\d.]+ \| [\d.]+ \| \d+ \|$", re.MULTILINE)  # the timing columns
    assert strip.sub("", table_a) == strip.sub("", table_b)

    used = data_a["sampling"]
    assert used["single (p1)"] == {
        "seed": 11,
        "seed_per_call": "sha256(seed, node, messages)",
        "agent_temperatures": {"p1": 0.7},
        "synthesizer_temperatures": {},
    }
    assert used["self-MoA (p1 x3)"]["agent_temperatures"] == {"p1_1": 0.7, "p1_2": 0.7, "p1_3": 0.7}
    assert used["MoA (trio, synthesize)"]["synthesizer_temperatures"] == {"layer 1": 0.2}
    assert [s["label"] for s in data_a["specs"]] == [
        "single (p1)",
        "self-MoA (p1 x3)",
        "MoA (trio, synthesize)",
        "MoA (trio, vote)",
        "MoA (trio, select)",
    ]
    assert data_a["paired_reference"] == "single (p1)"
    scores = {s["label"]: s["scores"] for s in data_a["specs"]}
    labels = list(scores)
    for label in labels[1:]:
        paired = data_a["paired"][label]
        mine, ref = scores[label], scores["single (p1)"]
        only_ref = sum(1 for i in ref if ref[i] == 1 and mine[i] == 0)
        only_mine = sum(1 for i in ref if ref[i] == 0 and mine[i] == 1)
        assert (paired["only_baseline_right"], paired["only_candidate_right"]) == (
            only_ref,
            only_mine,
        )
        assert paired["mcnemar_p"] == pytest.approx(mcnemar_exact(only_ref, only_mine), abs=1e-6)
        assert paired["difference"] == pytest.approx((only_mine - only_ref) / 6, abs=1e-4)
        assert f"{paired['mcnemar_p']:.3g} ({only_ref}/{only_mine})" in table_a
    assert "load_average" in data_a and set(data_a["load_average"]) == {"start", "end"}
    # the three MoA closings saw the same proposals: p2 (an agent of the MoA only) was
    # asked the same prompt with the same seed once per closing
    asked = [
        (r.body["seed"], r.digest)
        for r in model_server.requests
        if r.model == "p2" and r.last_user == SAMPLED_ITEMS[0]["input"]
    ]
    assert len(asked) == 2 * 3 and len(set(asked)) == 1  # 2 runs x 3 closings
    assert sampling(load_spec(sampled_trio(model_server)))["seed"] is None


def test_derived_specs_close_the_moa_once_per_aggregation() -> None:
    from langgraph_moa.eval import derive_specs
    from langgraph_moa.graphs import preset

    moa = preset("layered", proposers=3, layers=2)
    specs = derive_specs(moa, aggregations=["select", "vote", "synthesize", "vote"])
    assert [s.label for s in specs] == [
        "single (analyst)",
        "self-MoA (analyst x3)",
        "MoA (layered, synthesize)",
        "MoA (layered, select)",
        "MoA (layered, vote)",
    ]
    assert specs[2].spec is moa
    assert [s.spec.layers[-1].synthesizer.mode for s in specs[2:]] == [
        "synthesize",
        "select",
        "vote",
    ]
    # only the closing differs: the same agents and layers before it
    for s in specs[3:]:
        assert s.spec.agents == moa.agents and s.spec.layers[0] == moa.layers[0]
    assert [s.label for s in derive_specs(moa)][-1] == "MoA (layered)"
