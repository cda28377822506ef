"""`moa eval`: scorers, datasets, derived specs, the results store, and whole evaluations over
the test model server with scripted answers (so the expected scores are known)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from langgraph_moa.eval import (
    ChartUnavailable,
    DatasetError,
    EvalItem,
    EvalSchemaError,
    EvalSpec,
    EvalStore,
    PairwiseJudge,
    ResultRow,
    derive_specs,
    exact_match,
    load_dataset,
    normalize,
    parse_verdict,
    regex_match,
    run_evaluation,
    wilson_interval,
    write_chart,
)
from langgraph_moa.eval.command import build_specs
from langgraph_moa.eval.dataset import parse_shard, select_items, shard_items
from langgraph_moa.eval.runner import EvalReport, SpecSummary
from langgraph_moa.graphs import preset
from langgraph_moa.spec import load_spec
from langgraph_moa.testing import ChatRequest, ModelServer
from tests.helpers import served_models

# -- scorers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "references", "matched"),
    [
        ("48", ["48"], True),
        ("The answer is 48.", ["48"], True),
        ("12 x 4 = 48", ["48"], True),  # last number (GSM8K rule)
        ("It costs $1,024.00 in total", ["1024"], True),
        ("Seven.", ["7"], True),
        ("  PARIS \n", ["paris"], True),
        ("**Au**\n\nGold comes from Latin aurum.", ["AU"], True),
        ("The output is [0, 2, 4, 6]", ["[0, 2, 4, 6]"], True),
        ("The capital of France is Paris.", ["Paris"], False),  # exact: use a regex for this
        ("48 muffins, no: 49", ["48"], False),
        ("[0, 2, 4]", ["[0, 2, 4, 6]"], False),
        ("3.50", ["3.5"], True),
        ("-2", ["2"], False),
    ],
)
def test_exact_match_normalizes_numbers_case_and_whitespace(
    answer: str, references: list[str], matched: bool
) -> None:
    assert (exact_match(answer, references) is not None) is matched


def test_normalize() -> None:
    assert normalize("  The ANSWER is 1,000.50!\n") == "answer is 1000.5"
    assert normalize("Twelve") == normalize("12.0") == "12"


def test_regex_match_is_case_sensitive_unless_asked() -> None:
    assert regex_match("It prints True", r"\bTrue\b") == "True"
    assert regex_match("it prints true", r"\bTrue\b") is None
    assert regex_match("PARIS", r"(?i)\bparis\b") == "PARIS"


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0 and round(wilson_interval(0, 10)[1], 4) == 0.2775
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Both are fine but A is more precise.\nWinner: A", "A"),
        ("Winner: **B**", "B"),
        ("winner: Tie", "tie"),
        ("B", "B"),
        ("Response A is longer. Winner: Response B", "B"),
        ("I cannot tell.", "invalid"),
    ],
)
def test_parse_verdict(reply: str, verdict: str) -> None:
    assert parse_verdict(reply) == verdict


# -- datasets --------------------------------------------------------------------------------

BAD_DATASETS = {
    "bad_json": ('{"input": "a", "reference": "1"}\n{"input": "b", \n', ":2: not valid JSON"),
    "no_input": ('{"reference": "1"}\n', ":1: input: Field required"),
    "nothing_to_score": ('{"input": "a"}\n', ":1: item 'line-1' has nothing to score against"),
    "bad_regex": ('{"input": "a", "regex": "("}\n', ":1: regex: Value error, regex '('"),
    "duplicate_id": (
        '{"id": "x", "input": "a", "reference": 1}\n{"id": "x", "input": "b", "reference": 2}\n',
        ":2: duplicate id 'x' (first on line 1)",
    ),
    "unknown_field": ('{"input": "a", "answer": "1"}\n', ":1: answer: unknown field"),
    "not_object": ('["a"]\n', ":1: each line must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_names_file_line_and_field(case: str, tmp_path: Path) -> None:
    text, expected = BAD_DATASETS[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_text(text)
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    assert f"{path}{expected}" in str(info.value)


def test_builtin_dataset_is_well_formed_and_its_code_answers_are_right() -> None:
    items = load_dataset("basic")
    assert len(items) >= 200  # sources and answers: tests/test_eval_stats.py
    assert {i.category for i in items} >= {"arithmetic", "facts", "code"}
    assert all(i.scorer in ("exact", "regex") for i in items)
    code = [i for i in items if i.category == "code"]
    for item in code:  # the reference is what Python really prints
        source = item.input.split("\n\n")[1]
        printed = io.StringIO()
        with redirect_stdout(printed):
            exec(source, {})
        output = printed.getvalue().strip()
        assert item.reference == [output]
        if item.regex:
            assert regex_match(output, item.regex)
        else:
            assert exact_match(output, item.reference)


def test_builtin_dataset_ships_in_the_wheel(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            root,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import zipfile

    (wheel,) = tmp_path.glob("langgraph_moa-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "langgraph_moa/eval/data/basic.jsonl" in names
    # so does the dashboard (package data, no Node build at install)
    ui = "langgraph_moa/server/ui/"
    assert {ui + "static/ui.js", ui + "static/ui.css", ui + "templates/run.html"} <= set(names)


# -- derived specs ---------------------------------------------------------------------------


def trio(srv: ModelServer) -> dict[str, Any]:
    """One layer of p1, p2, p3 synthesized by 'synth'; a 'judge' model entry."""
    names = ["p1", "p2", "p3"]
    return {
        "name": "trio",
        "models": served_models(srv, *names, "synth", "judge"),
        "agents": [{"name": n, "model": n} for n in names],
        "layers": [{"agents": names, "synthesizer": {"model": "synth"}}],
    }


def test_derived_specs_single_self_moa_moa() -> None:
    moa = preset("layered", proposers=3, layers=2)
    single, self_moa, same = derive_specs(moa, samples=4, temperature=0.9)
    assert same.spec is moa and same.role == "moa"
    assert [a.name for a in single.spec.agents] == ["analyst"]
    assert len(single.spec.layers) == 1 and single.spec.layers[0].synthesizer.mode == "concat"
    assert [a.name for a in self_moa.spec.agents] == [f"analyst_{i}" for i in range(1, 5)]
    assert {a.temperature for a in self_moa.spec.agents} == {0.9}
    assert {a.description for a in self_moa.spec.agents} == {moa.agent("analyst").description}
    (layer,) = self_moa.spec.layers
    assert layer.synthesizer.mode == "synthesize"
    assert layer.synthesizer.model == moa.agent("analyst").model
    assert len({single.key, self_moa.key, same.key}) == 3
    with pytest.raises(ValueError, match="not an agent"):
        derive_specs(moa, best="ghost")


def test_self_moa_samples_a_model_pinned_to_greedy(model_server: ModelServer) -> None:
    data = trio(model_server)
    data["models"]["p2"]["temperature"] = 0.0
    single, self_moa, _ = derive_specs(load_spec(data), best="p2")
    assert single.spec.agents[0].model == "p2"
    sampled = self_moa.spec.agents[0].model
    assert sampled != "p2" and self_moa.spec.models[sampled or ""].temperature == 0.7
    assert self_moa.spec.layers[0].synthesizer.model == "p2"


# -- the store -------------------------------------------------------------------------------


async def test_store_records_once_and_guards_its_schema_version(db_url: str) -> None:
    row = ResultRow("e1", "answer", "spec@1", "item-1", "ok", 1.0, "48", {"matched": "48"}, 3, 2, 1)
    async with EvalStore.from_url(db_url) as store:
        assert await store.setup() == 2  # idempotent
        assert await store.record(row) is True
        assert await store.record(row) is False  # (eval, kind, spec, item) is recorded once
        (back,) = await store.results("e1")
        assert (back.answer, back.details, back.total_tokens) == ("48", {"matched": "48"}, 5)
        assert await store.results("other") == []
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO moa_schema_migrations (component, version, name, applied_at) "
                    "VALUES ('eval', 99, 'from the future', CURRENT_TIMESTAMP)"
                )
            )
    with pytest.raises(EvalSchemaError, match="schema version 99"):
        async with EvalStore.from_url(db_url):
            pass


# -- whole evaluations over the test model server ---------------------------------------------

ITEMS = [
    {"id": "a", "input": "Q-a: 4 trays of 12 muffins?", "reference": "48"},
    {
        "id": "b",
        "input": "Q-b: capital of France?",
        "reference": "Paris",
        "regex": "(?i)\\bparis\\b",
    },
    {"id": "c", "input": "Q-c: 17 x 23?", "reference": "391"},
    {"id": "d", "input": "Q-d: continents?", "reference": ["seven", "7"]},
    {"id": "e", "input": "Q-e: [x*2 for x in range(4)]?", "reference": "[0, 2, 4, 6]"},
    {"id": "f", "input": "Q-f: 3 == 3.0?", "reference": "True", "regex": "\\bTrue\\b"},
]
# (single p1, self-MoA synthesis by p1, MoA synthesis by synth): scripted answers
ANSWERS = {
    "a": ("The answer is 48.", "48", "Final answer: 48"),
    "b": ("It is Paris.", "paris", "Paris"),
    "c": ("17 x 23 = 391", "**391**", "391"),
    "d": ("I think 6", "Seven.", "7"),
    "e": ("[0, 2, 4]", "0 2 4 6 8", "The output is [0, 2, 4, 6]"),
    "f": ("true", "TRUE", "It prints True"),
}
EXPECTED_CORRECT = {"single": 3, "self-MoA": 4, "MoA": 6}
CALLS_PER_ITEM = {"single": 1, "self-MoA": 4, "MoA": 4}


def by_item(column: int) -> Callable[[ChatRequest], str]:
    def reply(req: ChatRequest) -> str:
        item_id = req.last_user.split(":")[0].removeprefix("Q-")
        return ANSWERS[item_id][column]

    return reply


def script_answers(srv: ModelServer) -> None:
    srv.add_rule(model="p1", system="set of responses", reply=by_item(1))  # self-MoA synthesis
    srv.add_rule(model="p1", reply=by_item(0))
    srv.add_rule(model="synth", reply=by_item(2))


def write_items(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def role_of(spec_key: str) -> str:
    return spec_key.split(" ")[0]


async def test_scores_tokens_and_calls_match_the_scripted_answers(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    script_answers(model_server)
    items = load_dataset(write_items(tmp_path / "d.jsonl", ITEMS))
    specs = derive_specs(load_spec(trio(model_server)))
    async with EvalStore.from_url(sqlite_url) as store:
        report = await run_evaluation(items, specs, store, eval_id="t1", concurrency=3)
        rows = await store.results("t1", "answer")

    assert [s.label for s in report.specs] == ["single (p1)", "self-MoA (p1 x3)", "MoA (trio)"]
    for summary in report.specs:
        role = role_of(summary.label)
        n = len(ITEMS)
        assert (summary.answered, summary.errors, summary.closed) == (n, 0, n)
        assert summary.correct == EXPECTED_CORRECT[role]
        assert summary.accuracy == EXPECTED_CORRECT[role] / n
        assert summary.accuracy_ci == wilson_interval(EXPECTED_CORRECT[role], n)
        assert summary.calls == CALLS_PER_ITEM[role] * n
        assert summary.win_rate is None
    answers = {(role_of(r.spec), r.item_id): r.answer for r in rows}
    assert answers[("single", "a")] == "The answer is 48."  # the lone proposal, no header
    assert answers[("MoA", "e")] == "The output is [0, 2, 4, 6]"
    assert model_server.calls() == sum(CALLS_PER_ITEM.values()) * len(ITEMS)
    served = model_server.stats()["usage"]["total_tokens"]
    assert sum(s.tokens for s in report.specs) == served
    assert report.ran == 18 and report.resumed == 0

    model_server.reset_counts()  # a rerun finds everything done and calls nothing
    async with EvalStore.from_url(sqlite_url) as store:
        again = await run_evaluation(items, specs, store, eval_id="t1")
    assert model_server.calls() == 0
    assert (again.ran, again.resumed) == (0, 18)
    assert [s.correct for s in again.specs] == [s.correct for s in report.specs]


RUBRIC_ITEMS = [
    {"id": f"open-{i}", "input": f"Open question {i}: explain WAL.", "rubric": "Correct, clear."}
    for i in range(3)
]


def _responses(req: ChatRequest) -> tuple[str, str]:
    text = req.last_user
    a = text.split("Response A:\n", 1)[1].split("\n\nResponse B:", 1)[0]
    b = text.split("Response B:\n", 1)[1].split("\n\nWhich response", 1)[0]
    return a, b


async def test_judge_is_asked_in_both_orders_so_position_bias_cancels(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    model_server.add_rule(model="judge", reply="Looks fine to me.\nWinner: A")  # always A
    items = load_dataset(write_items(tmp_path / "open.jsonl", RUBRIC_ITEMS))
    specs = derive_specs(load_spec(trio(model_server)))
    judge = PairwiseJudge(model_server.chat_model("judge"), "judge")
    async with EvalStore.from_url(sqlite_url) as store:
        report = await run_evaluation(
            items, specs, store, eval_id="biased", judge=judge, baseline=specs[0]
        )
        judged = await store.results("biased", "judge")

    single, self_moa, moa = report.specs
    assert single.is_baseline and single.judged == 0
    for summary in (self_moa, moa):
        assert summary.judged == 3 and summary.win_rate == 0.5
        assert summary.closed == 0 and summary.accuracy is None
    assert {tuple(r.details["verdicts"]) for r in judged} == {("A", "A")}
    assert model_server.calls("judge") == 2 * 3 * 2  # two orders x items x candidates
    assert report.judge_usage["calls"] == 12


async def test_judge_prefers_the_better_answer_in_either_position(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    model_server.add_rule(model="p1", system="set of responses", reply="plain synthesis")
    model_server.add_rule(model="p1", reply="plain answer")
    model_server.add_rule(model="synth", reply="GOOD synthesis")

    def judge_reply(req: ChatRequest) -> str:
        a, b = _responses(req)
        if ("GOOD" in a) == ("GOOD" in b):
            return "Both are alike.\nWinner: tie"
        return "Winner: A" if "GOOD" in a else "Winner: B"

    model_server.add_rule(model="judge", reply=judge_reply)
    items = load_dataset(write_items(tmp_path / "open.jsonl", RUBRIC_ITEMS))
    specs = derive_specs(load_spec(trio(model_server)))
    judge = PairwiseJudge(model_server.chat_model("judge"), "judge")
    async with EvalStore.from_url(sqlite_url) as store:
        report = await run_evaluation(
            items, specs, store, eval_id="fair", judge=judge, baseline=specs[0]
        )
        judged = {(role_of(r.spec), r.item_id): r for r in await store.results("fair", "judge")}

    _, self_moa, moa = report.specs
    assert moa.win_rate == 1.0 and self_moa.win_rate == 0.5
    assert moa.win_ci == wilson_interval(3, 3)
    for item in RUBRIC_ITEMS:  # MoA's answer was shown once as A and once as B
        assert judged[("MoA", item["id"])].details["verdicts"] == ["A", "B"]
        assert judged[("self-MoA", item["id"])].details["verdicts"] == ["tie", "tie"]
        positions = [
            _responses(r).index("GOOD synthesis")
            for r in model_server.requests
            if r.model == "judge" and item["input"] in r.last_user and "GOOD" in r.last_user
        ]
        assert sorted(positions) == [0, 1]


async def test_judge_calls_are_ledger_rows_and_reuse_answers_them_with_the_server_stopped(
    tmp_path: Path,
) -> None:
    from langgraph_moa.persistence.calls import CallLedger

    url = f"sqlite:///{tmp_path / 'judged.sqlite'}"
    items = load_dataset(write_items(tmp_path / "open.jsonl", RUBRIC_ITEMS))

    def judge_reply(req: ChatRequest) -> str:  # the longer response wins, in either position
        a, b = _responses(req)
        return "Winner: A" if len(a) > len(b) else "Winner: B" if len(b) > len(a) else "tie"

    async def judged(specs: list[EvalSpec], judge: PairwiseJudge, eval_id: str) -> EvalReport:
        async with EvalStore.from_url(url) as store:
            return await run_evaluation(
                items, specs, store, eval_id=eval_id, judge=judge, baseline=specs[0],
                reuse=CallLedger(store.engine),
            )  # fmt: skip

    with ModelServer() as srv:
        srv.add_rule(model="judge", reply=judge_reply)
        srv.add_rule(model="synth", reply="a long and careful synthesis")
        srv.add_rule(model="p1", system="set of responses", reply="self-MoA's synthesis")
        srv.add_rule(reply="short")
        spec = load_spec(trio(srv))
        specs = build_specs(spec, aggregations=["synthesize"])
        judge = PairwiseJudge(spec.models["judge"], "judge")
        first = await judged(specs, judge, "first")
        sent = [r for r in srv.requests if r.model == "judge"]
    async with EvalStore.from_url(url) as store:
        verdicts = {(r.spec, r.item_id): r for r in await store.results("first", "judge")}
    rows = [r for r in await _calls_of(url, first.calls_run_id) if r.kind == "judge"]
    # every judge call is a row: 2 orders x 3 items x 2 candidates, with its reply
    assert len(sent) == len(rows) == 12 == first.judge_usage["calls"]
    assert {(r.node, r.model, r.status, r.params["endpoint"]) for r in rows} == {
        ("judge", "judge", "ok", srv.base_url)
    }
    assert {r.params["temperature"] for r in rows} == {0.0}
    replies = sorted(r.response["message"]["data"]["content"] for r in rows)  # type: ignore[index]
    assert replies == sorted(judge_reply(r) for r in sent)
    for row in verdicts.values():  # each judgment's two calls are on its thread
        mine = [r for r in rows if r.thread_id == row.details["thread_id"]]
        assert mine[0].thread_id.startswith("eval-") and len(mine) == 2
        assert [parse_verdict(r.response["message"]["data"]["content"]) for r in mine] == (  # type: ignore[index]
            row.details["verdicts"]
        )
    moa = next(s for s in first.specs if s.role == "moa")
    assert moa.win_rate == 1.0  # the longer synthesis wins in both positions

    # the server is stopped: every answer and every verdict comes from the ledger
    again = await judged(specs, judge, "again")
    assert (again.calls_live, again.calls_reused) == (0, first.calls_live + first.calls_reused)
    async with EvalStore.from_url(url) as store:
        redone = {(r.spec, r.item_id): r for r in await store.results("again", "judge")}
    assert {k: r.details["verdicts"] for k, r in redone.items()} == {
        k: r.details["verdicts"] for k, r in verdicts.items()
    }
    assert {r.details["calls_reused"] for r in redone.values()} == {2}
    assert [s.win_rate for s in again.specs] == [s.win_rate for s in first.specs]


async def test_a_failed_run_is_a_wrong_answer_with_its_reason(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    model_server.add_rule(model="p1", fail=400)  # the single model always fails
    items = load_dataset(write_items(tmp_path / "d.jsonl", ITEMS[:2]))
    specs = derive_specs(load_spec(trio(model_server)))[:1]
    async with EvalStore.from_url(sqlite_url) as store:
        report = await run_evaluation(items, specs, store, eval_id="fail")
        rows = await store.results("fail")
    (single,) = report.specs
    assert (single.answered, single.errors, single.correct, single.closed) == (2, 2, 0, 2)
    assert all(r.status == "error" and "QuorumError" in r.details["error"] for r in rows)


# -- the command line ------------------------------------------------------------------------


def _spec_file(srv: ModelServer, tmp_path: Path) -> Path:
    path = tmp_path / "trio.yaml"
    path.write_text(yaml.safe_dump(trio(srv)))
    return path


def _answer_rows(db_url: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT spec, item_id FROM moa_eval_results WHERE kind = 'answer'")
            ).all()
    except sa.exc.OperationalError:  # the table is not created yet
        return []
    finally:
        engine.dispose()
    return [(str(s), str(i)) for s, i in rows]


@pytest.mark.slow
def test_cli_eval_resumes_after_sigkill_and_skips_done_items(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    script_answers(model_server)
    model_server.set_latency(None, 0.15)
    dataset = write_items(tmp_path / "d.jsonl", ITEMS)
    args = [
        sys.executable, "-m", "langgraph_moa.cli", "eval", str(dataset),
        "--spec", str(_spec_file(model_server, tmp_path)), "--db", sqlite_url,
        "--concurrency", "1", "--aggregation", "synthesize",
    ]  # fmt: skip
    first = subprocess.Popen([*args, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_answer_rows(sqlite_url)) < 5 and first.poll() is None:
        assert time.monotonic() < deadline, "the evaluation made no progress"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while model_server.in_flight():  # calls the killed process had sent
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = _answer_rows(sqlite_url)
    total = len(ITEMS) * 3
    assert 5 <= len(done) < total
    model_server.reset_counts()

    second = subprocess.run(
        [*args, "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=240
    )
    assert second.returncode == 0, second.stderr
    expected_calls = sum(CALLS_PER_ITEM.values()) * len(ITEMS) - sum(
        CALLS_PER_ITEM[role_of(spec)] for spec, _ in done
    )
    assert model_server.calls() == expected_calls  # the done items were not asked again
    assert f"{total - len(done)} results computed, {len(done)} taken from the store" in (
        second.stderr.replace("\n", " ")
    )
    result = json.loads((tmp_path / "r.json").read_text())
    assert [(s["correct"], s["answered"]) for s in result["specs"]] == [(3, 6), (4, 6), (6, 6)]
    assert "single (p1)" in second.stdout and "66.7% [30%, 90%]" in second.stdout
    # the embedded model as the evaluation would decode it: one thread, whatever the CPUs
    assert re.fullmatch(r"local:.+\.gguf:\d+:threads=1", result["machine"]["local_model"])


@pytest.mark.slow
def test_cli_eval_shards_on_one_store_give_the_whole_table(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    """Two processes with --shard 1/2 and 2/2 at once on one SQLite store: each answers its
    own items only, and the command without --shard then prints the whole table from the
    store, as one process computing it all does."""
    script_answers(model_server)
    dataset = write_items(tmp_path / "d.jsonl", ITEMS)
    spec = _spec_file(model_server, tmp_path)
    args = [
        sys.executable, "-m", "langgraph_moa.cli", "eval", str(dataset), "--spec", str(spec),
        "--aggregation", "synthesize", "--markdown",
    ]  # fmt: skip
    shards = [
        subprocess.Popen(
            [*args, "--db", sqlite_url, "--shard", f"{k}/2", "--json", str(tmp_path / f"{k}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (1, 2)
    ]
    for shard in shards:
        _, stderr = shard.communicate(timeout=240)
        assert shard.returncode == 0, stderr
    answered = [json.loads((tmp_path / f"{k}.json").read_text()) for k in (1, 2)]
    ids = [i.id for i in select_items(load_dataset(str(dataset)), None)]  # the run's order
    for k, part in enumerate(answered):
        assert part["dataset_items"] == 3
        assert {i for s in part["specs"] for i in s["scores"]} == set(ids[k::2])
    assert model_server.calls() == sum(CALLS_PER_ITEM.values()) * len(ITEMS)  # each item once

    model_server.reset_counts()
    merged = subprocess.run(
        [*args, "--db", sqlite_url], capture_output=True, text=True, timeout=240
    )
    assert merged.returncode == 0, merged.stderr
    assert model_server.calls() == 0
    assert f"0 results computed, {len(ITEMS) * 3} taken from the store" in (
        merged.stderr.replace("\n", " ")
    )
    other = f"sqlite:///{tmp_path / 'one.sqlite'}"
    whole = subprocess.run([*args, "--db", other], capture_output=True, text=True, timeout=240)
    assert whole.returncode == 0, whole.stderr
    assert _measures(merged.stdout) == _measures(whole.stdout)
    assert "| single (p1) | 6/6 | 3/6 |" in merged.stdout


def test_fresh_in_a_shard_drops_that_shards_results_only(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    """--fresh with --shard 2/2 computes shard 2's items again and keeps shard 1's results
    (the shards share the evaluation). Fails with --fresh clearing the whole evaluation:
    shard 1's rows are gone, and the command without --shard pays for them again."""
    script_answers(model_server)
    dataset = write_items(tmp_path / "d.jsonl", ITEMS)
    spec = _spec_file(model_server, tmp_path)
    base = [str(dataset), "--spec", str(spec), "--db", sqlite_url, "-a", "synthesize", "-q"]
    _, one = _eval(*base, "--shard", "1/2", "--json", str(tmp_path / "1.json"))
    _, two = _eval(*base, "--shard", "2/2", "--json", str(tmp_path / "2.json"))
    assert (one["shard"], two["shard"], one["ran"], two["ran"]) == ([1, 2], [2, 2], 9, 9)
    assert len(_answer_rows(sqlite_url)) == 18

    model_server.reset_counts()
    _, again = _eval(*base, "--shard", "2/2", "--fresh", "--json", str(tmp_path / "3.json"))
    assert (again["ran"], again["resumed"]) == (9, 0)
    assert model_server.calls() == sum(CALLS_PER_ITEM.values()) * 3  # shard 2's items only
    model_server.reset_counts()
    _, whole = _eval(*base, "--json", str(tmp_path / "4.json"))
    assert (whole["ran"], whole["resumed"], whole["shard"]) == (0, 18, None)
    assert model_server.calls() == 0


def test_a_shard_without_items_says_so(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    from langgraph_moa.cli import app

    dataset = write_items(tmp_path / "d.jsonl", ITEMS)
    spec = _spec_file(model_server, tmp_path)
    args = [str(dataset), "--spec", str(spec), "--db", sqlite_url, "--limit", "1", "-q"]
    result = CliRunner().invoke(app, ["eval", *args, "--shard", "2/2"])
    assert result.exit_code == 0, result.output
    assert "--shard 2/2: this share has no items" in result.stderr
    assert model_server.calls() == 0


def test_shard_items_partition_the_selection() -> None:
    """Shares are disjoint, cover the items, keep their order, and split every category
    within one item (the basic dataset has 6 categories: every 2nd or 3rd item of the even
    order would give each share whole categories). An item's share does not depend on
    --limit."""
    dataset = load_dataset("basic")
    items = select_items(dataset, 40)
    shares = [shard_items(items, (k, 3)) for k in (1, 2, 3)]
    assert [len(s) for s in shares] == [14, 13, 13]
    assert sorted(i.id for s in shares for i in s) == sorted(i.id for i in items)
    assert (
        all(s == [i for i in items if i in s] for s in shares) and shard_items(items, None) == items
    )
    categories = sorted({i.category for i in items})
    for n in (2, 3):
        split = [Counter(i.category for i in shard_items(items, (k, n))) for k in range(1, n + 1)]
        for c in categories:
            assert max(s[c] for s in split) - min(s[c] for s in split) <= 1, (n, c, split)
    whole = {i.id: k for k in (1, 2, 3) for i in shard_items(select_items(dataset, None), (k, 3))}
    assert all(whole[i.id] == k for k, s in enumerate(shares, 1) for i in s)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/2", "0/2", "2", "a/b", "1/0", ""):
        with pytest.raises(ValueError, match="use K/N with 1 <= K <= N"):
            parse_shard(bad)


def test_cli_eval_markdown_and_chart(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOA_LOCAL_PARALLEL", raising=False)
    monkeypatch.setenv("MOA_LOCAL_THREADS", "3")  # restored as it was after the test
    monkeypatch.delenv("MOA_LOCAL_THREADS")
    script_answers(model_server)
    dataset = write_items(tmp_path / "d.jsonl", ITEMS)
    chart = tmp_path / "eval.png"
    from langgraph_moa.cli import app

    result = CliRunner().invoke(
        app,
        [
            "eval", str(dataset), "--spec", str(_spec_file(model_server, tmp_path)),
            "--db", sqlite_url, "--markdown", "--chart", str(chart), "--quiet",
            "--aggregation", "synthesize",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| MoA (trio, synthesize) | 6/6 | 6/6 | 100.0% [61%, 100%] |" in result.stdout
    assert "| single (p1) | 6/6 | 3/6 | 50.0% [19%, 81%] |" in result.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an embedded model started by the evaluation would decode one request at a time
    assert os.environ["MOA_LOCAL_PARALLEL"] == "1"
    # ... on one thread, not the tuner's choice from timings nor the machine's CPU count
    assert os.environ["MOA_LOCAL_THREADS"] == "1"


def test_chart_without_matplotlib_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises
    report = EvalReport("x", 1, [SpecSummary("s", "s@1", "spec", 1, answered=1, closed=1)])
    with pytest.raises(ChartUnavailable, match="pip install matplotlib"):
        write_chart(report, tmp_path / "x.png")
    from langgraph_moa.cli import app

    result = CliRunner().invoke(app, ["eval", "basic", "--chart", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert "--chart needs matplotlib" in result.output
    assert not (tmp_path / "x.png").exists()


def test_build_specs_adds_compared_specs_after_the_derived_ones(model_server: ModelServer) -> None:
    main = load_spec(trio(model_server))
    other = preset("team")
    specs = build_specs(main, [other, other])
    assert [s.role for s in specs] == ["single", "self-moa", "moa", "spec", "spec"]
    assert [s.label for s in specs[3:]] == ["team", "team'"]
    assert [s.label for s in build_specs(main, baselines=False)] == ["trio"]
    assert isinstance(specs[0], EvalSpec) and isinstance(load_dataset("basic")[0], EvalItem)


# -- reusing unchanged calls (--reuse) -------------------------------------------------------


def script_drawn(srv: ModelServer) -> None:
    """Every model answers one of several texts drawn from the request's seed (the same
    request, the same draw); the synthesizers' texts say which prompt they were given."""

    def draw(req: ChatRequest) -> str:
        item = req.prompt.split("Q-", 1)[1].split(":", 1)[0] if "Q-" in req.prompt else "?"
        right = {i["id"]: str(i["reference"]) for i in ITEMS}
        return req.sample([right.get(item, "?"), "not sure", f"maybe {right.get(item)}", "1"])

    srv.add_rule(reply=draw)


def _eval(*args: str) -> tuple[str, dict[str, Any]]:
    """``moa eval ARGS --json`` in this process: its Markdown table and its JSON."""
    from langgraph_moa.cli import app

    out = Path(args[args.index("--json") + 1])
    result = CliRunner().invoke(app, ["eval", *args, "--markdown"])
    assert result.exit_code == 0, result.output
    return result.stdout, json.loads(out.read_text())


def _measures(table: str) -> list[list[str]]:
    """The table's rows without the columns that differ between runs or with --reuse (calls
    from the ledger, latencies)."""
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")]
    return [[*cells[:-5], cells[-5].split(" (")[0], cells[-4], cells[-1]] for cells in rows[1:]]


async def _calls_of(db_url: str, run_id: str) -> list[Any]:
    from langgraph_moa.persistence.calls import CallLedger

    async with CallLedger.from_url(db_url) as ledger:
        return await ledger.list(run_id=run_id)


def test_reuse_with_the_model_server_stopped_gives_the_same_table(
    sqlite_url: str, tmp_path: Path
) -> None:
    dataset = write_items(tmp_path / "d.jsonl", ITEMS)
    with ModelServer() as srv:
        script_drawn(srv)
        spec = _spec_file(srv, tmp_path)
        base = [str(dataset), "--spec", str(spec), "--db", sqlite_url, "--quiet"]
        table, first = _eval(*base, "--json", str(tmp_path / "1.json"))
        sent = srv.calls()
    calls = {s["label"]: s["calls"] for s in first["specs"]}
    # every call went out, and is in the ledger of the store under the run's id
    assert first["calls"]["live"] == sent == sum(calls.values()) and sent > 0
    assert first["calls"]["reused"] == 0 and all(s["calls_reused"] == 0 for s in first["specs"])
    recorded = asyncio.run(_calls_of(sqlite_url, first["calls"]["run_id"]))
    assert len(recorded) == sent and {r.status for r in recorded} == {"ok"}
    assert {r.params["endpoint"] for r in recorded} == {srv.base_url}

    # the server is stopped: a call that went out would fail, and change the table
    reused_table, again = _eval(*base, "--fresh", "--reuse", "--json", str(tmp_path / "2.json"))
    assert again["calls"] == {
        "live": 0,
        "reused": sent,
        "sampled_without_seed": 0,
        "run_id": again["calls"]["run_id"],
    }
    assert [(s["calls"], s["calls_reused"]) for s in again["specs"]] == [
        (n, n) for n in calls.values()
    ]
    assert [s["scores"] for s in again["specs"]] == [s["scores"] for s in first["specs"]]
    assert _measures(reused_table) == _measures(table)
    assert "calls/item (from the ledger)" in reused_table
    assert f"| 1.0 ({calls['single (p1)']}/{calls['single (p1)']} reused) |" in reused_table
    assert all(s["latency_p50_s"] is None for s in again["specs"])  # no model's time to show

    # another store, taking the calls from the first one's ledger
    other = f"sqlite:///{tmp_path / 'other.sqlite'}"
    args = [str(dataset), "--spec", str(spec), "--db", other, "--quiet"]
    from_table, elsewhere = _eval(
        *args, "--reuse-from", sqlite_url, "--json", str(tmp_path / "3.json")
    )
    assert (elsewhere["calls"]["live"], elsewhere["calls"]["reused"]) == (0, sent)
    assert _measures(from_table) == _measures(table)


@pytest.mark.parametrize("change", ["prompt", "model"])
def test_reuse_sends_only_the_changed_synthesizer_calls(
    change: str, model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    srv = model_server
    script_drawn(srv)
    dataset = write_items(tmp_path / "d.jsonl", ITEMS)
    data = trio(srv)
    data["models"]["synth2"] = dict(data["models"]["synth"], model="synth2")
    spec = tmp_path / "trio.yaml"
    spec.write_text(yaml.safe_dump(data))
    base = [str(dataset), "--spec", str(spec), "--db", sqlite_url, "--quiet"]
    base += ["--aggregation", "synthesize"]
    _, first = _eval(*base, "--json", str(tmp_path / "1.json"))
    assert first["calls"]["live"] == srv.calls() == 9 * len(ITEMS)  # 1 + 4 + 4 per item
    srv.reset_counts()

    if change == "prompt":
        data["layers"][0]["synthesizer"]["prompt"] = "NEW PROMPT. Combine these.\n\n{proposals}"
    else:
        data["layers"][0]["synthesizer"]["model"] = "synth2"
    spec.write_text(yaml.safe_dump(data))
    _, second = _eval(*base, "--reuse", "--json", str(tmp_path / "2.json"))
    sent = list(srv.requests)
    by_label = {s["label"]: s for s in second["specs"]}
    if change == "prompt":
        # the Self-MoA synthesizer takes the prompt (not the model) too: both are asked
        # again, once per item; the 3 + 3 proposals of each item come from the ledger
        assert sorted(r.model for r in sent) == ["p1"] * 6 + ["synth"] * 6
        assert all(r.system.startswith("NEW PROMPT.") for r in sent)
        again = ["self-MoA (p1 x3)", "MoA (trio, synthesize)"]
    else:
        assert [r.model for r in sent] == ["synth2"] * 6
        again = ["MoA (trio, synthesize)"]
    assert second["ran"] == len(ITEMS) * len(again)  # the others were taken from the store
    assert second["calls"]["live"] == len(sent)
    assert second["calls"]["reused"] == 3 * len(ITEMS) * len(again)
    for label in again:
        assert (by_label[label]["calls"], by_label[label]["calls_reused"]) == (24, 18)
    rows = asyncio.run(_calls_of(sqlite_url, second["calls"]["run_id"]))
    assert {r.kind for r in rows} == {"synthesizer"} and len(rows) == len(sent)


def _sent(srv: ModelServer) -> list[str]:
    """Each request the server answered, as the JSON of its body (the same body, the same
    request: model, messages, seed, temperature, max_tokens)."""
    return [json.dumps(r.body, sort_keys=True) for r in srv.requests]


async def _evaluate(
    url: str,
    items: list[EvalItem],
    specs: list[EvalSpec],
    eval_id: str,
    *,
    reuse: bool = False,
    concurrency: int = 4,
) -> tuple[EvalReport, dict[tuple[str, str], str | None]]:
    from langgraph_moa.persistence.calls import CallLedger

    async with EvalStore.from_url(url) as store:
        report = await run_evaluation(
            items, specs, store, eval_id=eval_id, concurrency=concurrency,
            reuse=CallLedger(store.engine) if reuse else None,
        )  # fmt: skip
        rows = await store.results(eval_id, "answer")
    labels = {s.key: s.label for s in specs}
    return report, {(labels[r.spec], r.item_id): r.answer for r in rows}


async def test_reuse_within_an_evaluation_merges_only_identical_seeded_requests(
    model_server: ModelServer, tmp_path: Path
) -> None:
    srv = model_server
    script_drawn(srv)
    items = load_dataset(write_items(tmp_path / "d.jsonl", ITEMS))
    specs = build_specs(load_spec(trio(srv)), seed=3)  # single, self-MoA, MoA x3 closings
    plain, answers = await _evaluate(f"sqlite:///{tmp_path / 'a.sqlite'}", items, specs, "a")
    without = _sent(srv)
    assert len(without) == plain.calls_live == sum(s.calls for s in plain.specs)
    srv.reset_counts()

    # an empty ledger: nothing to take from earlier runs, but one evaluation asks the same
    # seeded request several times (the MoA's proposals once per closing, its p1 proposal
    # is the single model's call): each distinct request goes out once
    url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    merged, same = await _evaluate(url, items, specs, "b", reuse=True, concurrency=6)
    sent = _sent(srv)
    assert sorted(sent) == sorted(set(without)) and len(without) > len(sent)
    assert same == answers  # the same answers, the same table
    assert (merged.calls_live, merged.calls_reused) == (len(sent), len(without) - len(sent))
    # the three Self-MoA copies have seeds of their own: none is the single model's call
    first = ITEMS[0]["input"]
    p1 = [r for r in srv.requests if r.model == "p1" and r.last_user == first]
    proposals = [r for r in p1 if "responses" not in r.system]
    assert len(proposals) == 4 and len({r.seed for r in proposals}) == 4


async def test_reuse_never_answers_a_call_sampled_without_a_seed_or_sent_elsewhere(
    model_server: ModelServer, tmp_path: Path
) -> None:
    srv = model_server
    script_drawn(srv)
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    items = load_dataset(write_items(tmp_path / "d.jsonl", ITEMS))
    unseeded = build_specs(load_spec(trio(srv)), seed=None, aggregations=["synthesize"])
    first, _ = await _evaluate(url, items, unseeded, "a")
    srv.reset_counts()
    again, _ = await _evaluate(url, items, unseeded, "b", reuse=True)
    # each sample is a new draw: every call went out again
    assert srv.calls() == first.calls_live == again.calls_live == again.calls_sampled > 0
    assert again.calls_reused == 0

    # seeded calls of the same model name on another server are not the same calls
    seeded = build_specs(load_spec(trio(srv)), seed=5, aggregations=["synthesize"])
    srv.reset_counts()
    recorded, _ = await _evaluate(url, items, seeded, "c", reuse=True)
    assert srv.calls() == recorded.calls_live > 0
    with ModelServer() as other:
        script_drawn(other)
        elsewhere = build_specs(load_spec(trio(other)), seed=5, aggregations=["synthesize"])
        moved, _ = await _evaluate(url, items, elsewhere, "d", reuse=True)
        assert other.calls() == moved.calls_live == recorded.calls_live
        assert moved.calls_reused == recorded.calls_reused  # merged within the run only
    srv.reset_counts()  # on the server that answered them, they are all in the ledger
    back, _ = await _evaluate(url, items, seeded, "e", reuse=True)
    assert srv.calls() == back.calls_live == 0
    assert back.calls_reused == recorded.calls_live + recorded.calls_reused


async def test_reuse_a_call_cancelled_while_reading_the_ledger_leaves_no_one_waiting(
    tmp_path: Path,
) -> None:
    from langchain_core.messages import HumanMessage

    from langgraph_moa.eval.calls import EvalCalls
    from langgraph_moa.nodes._calls import CALLS_KEY, call_model
    from langgraph_moa.nodes.budget import Budget, Ledger
    from langgraph_moa.persistence.calls import CallLedger, CallRow
    from tests.nodes_support import Script, context, spec_of

    class Gated(CallLedger):
        """A ledger whose first read waits until the test lets it go (it never does)."""

        reading = asyncio.Event()
        go = asyncio.Event()

        async def reusable(
            self, request_hash: str, endpoint: str | None = None, *, scan: int = 20
        ) -> CallRow | None:
            if not self.reading.is_set():
                self.reading.set()
                await self.go.wait()
            return await super().reusable(request_hash, endpoint, scan=scan)

    script = Script().on("a", "from the model")
    ctx = context(spec_of(["a"]), script)
    async with CallLedger.from_url(f"sqlite:///{tmp_path / 'calls.sqlite'}") as ledger:
        calls = EvalCalls(ledger, Gated(ledger.engine))

        def ask(thread: str) -> Any:
            config: Any = {"configurable": {CALLS_KEY: calls.for_item(thread)}}
            return call_model(
                ctx, "a", [HumanMessage("Q")], config,
                temperature=0, max_tokens=9, ledger=Ledger(Budget()), node="L1_a",
            )  # fmt: skip

        leader = asyncio.ensure_future(ask("eval-1"))
        await Gated.reading.wait()
        waiter = asyncio.ensure_future(ask("eval-2"))  # the same request: waits for the leader
        await asyncio.sleep(0)  # one turn of the loop: it reaches its wait
        assert not waiter.done() and script.calls == []
        leader.cancel()  # a layer gate cuts the leader while it reads the ledger
        with pytest.raises(asyncio.CancelledError):
            await leader
        # the waiter is woken and makes the call (before the fix it waited forever)
        reply = await asyncio.wait_for(waiter, 30)
        assert reply.message.text == "from the model" and len(script.calls) == 1
        await calls.flush()
        (row,) = await ledger.list(thread_id="eval-2")
        assert row.status == "ok" and row.run_id == calls.run_id
        # a later identical request is answered from the ledger, not waiting on anyone
        again = await asyncio.wait_for(ask("eval-3"), 30)
        assert again.message.text == "from the model" and len(script.calls) == 1
        assert (calls.live, calls.reused) == (1, 1)


async def test_reuse_tells_embedded_model_files_apart_and_not_batched_decoding(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from langchain_core.messages import HumanMessage

    from langgraph_moa.eval.calls import EvalCalls
    from langgraph_moa.models import ModelResolver
    from langgraph_moa.nodes import NodeContext
    from langgraph_moa.nodes._calls import call_request
    from langgraph_moa.persistence.calls import CallLedger
    from tests.nodes_support import spec_of

    for name in ("MOA_MODEL", "MOA_BASE_URL", "MOA_LOCAL_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    small, other = tmp_path / "small.gguf", tmp_path / "other.gguf"
    small.write_bytes(b"g" * 10)
    other.write_bytes(b"g" * 20)
    spec = spec_of(["a"], models={"a": {}}, defaults={"seed": 3})  # "a": the embedded model
    ctx = NodeContext(spec=spec, models=ModelResolver(spec.models, spec.defaults.model))

    def ask(temperature: float = 0.7) -> Any:
        msgs = [HumanMessage("hi")]
        return call_request(ctx, "a", msgs, node="L1_a", temperature=temperature, max_tokens=5)

    monkeypatch.setenv("MOA_LOCAL_PARALLEL", "1")  # as `moa eval` sets them
    monkeypatch.setenv("MOA_LOCAL_THREADS", "1")
    monkeypatch.setenv("MOA_LOCAL_MODEL", str(small))
    first = ask()
    assert (first.model, first.endpoint, first.deterministic) == (
        "local",
        "local:small.gguf:10:threads=1",
        True,
    )
    assert first.recorded_params == {**first.params, "endpoint": first.endpoint}
    monkeypatch.setenv("MOA_LOCAL_MODEL", str(other))
    moved = ask()  # the same request (hash) to another model file: not the same call
    assert (moved.hash, moved.endpoint) == (first.hash, "local:other.gguf:20:threads=1")
    monkeypatch.setenv("MOA_LOCAL_MODEL", str(small))
    monkeypatch.setenv("MOA_LOCAL_THREADS", "2")  # nor on another number of threads
    two = ask()
    assert (two.hash, two.endpoint) == (first.hash, "local:small.gguf:10:threads=2")
    # the tuner picks the threads from timings (more than one CPU, MOA_LOCAL_THREADS unset):
    # the reply is not decided by the request, and the identity names no thread count
    monkeypatch.delenv("MOA_LOCAL_THREADS")
    monkeypatch.setattr("langgraph_moa.models.settings.default_local_threads", lambda: 4)
    tuned = ask()
    assert (tuned.endpoint, tuned.deterministic) == ("local:small.gguf:10", False)
    monkeypatch.setattr("langgraph_moa.models.settings.default_local_threads", lambda: 1)
    assert ask().deterministic  # one CPU: one thread, nothing to tune
    monkeypatch.setenv("MOA_LOCAL_THREADS", "1")

    async with CallLedger.from_url(f"sqlite:///{tmp_path / 'calls.sqlite'}") as ledger:
        writer = EvalCalls(ledger)
        await writer.for_item("eval-1").record(
            node="L1_a", kind="agent", task_id="", seq=0, model="local",
            params=first.recorded_params, request_hash=first.hash, messages=first.messages,
            response={"message": {"type": "ai", "data": {"content": "small says"}}},
            usage=None, latency_ms=1.0, retries=0, status="ok", error=None,
        )  # fmt: skip
        await writer.flush()
        item = EvalCalls(None, ledger).for_item("eval-2")
        assert await item.lookup("L1_a", "", moved.hash, request=moved) == (0, None)
        threads = EvalCalls(None, ledger).for_item("eval-3")
        assert await threads.lookup("L1_a", "", two.hash, request=two) == (0, None)
        _, reply = await item.lookup("L1_a", "", first.hash, request=first)
        assert reply is not None and reply["message"]["data"]["content"] == "small says"

    # decoded in batches, a reply depends on what ran beside it: never taken as decided
    monkeypatch.setenv("MOA_LOCAL_PARALLEL", "4")
    assert not ask().deterministic and not ask(temperature=0).deterministic
    monkeypatch.setenv("MOA_LOCAL_RUNTIME", "server")  # serves one request at a time
    assert ask().deterministic
    monkeypatch.setenv("MOA_LOCAL_THREADS", "many")  # no thread count to name it by
    assert (ask().endpoint, ask().deterministic) == ("local:small.gguf:10", False)


def test_reuse_from_a_store_without_a_call_ledger_is_refused_and_left_as_it_was(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    import sqlite3

    from langgraph_moa.cli import app

    dataset = write_items(tmp_path / "d.jsonl", ITEMS)
    base = [str(dataset), "--spec", str(_spec_file(model_server, tmp_path)), "--quiet"]
    base += ["--db", sqlite_url]
    typo = tmp_path / "tpyo.sqlite"
    result = CliRunner().invoke(app, ["eval", *base, "--reuse-from", f"sqlite:///{typo}"])
    assert result.exit_code == 2, result.output
    said, flat = " ".join(result.output.split()), result.output.replace("\n", "")
    assert "there is no SQLite file" in said and f"sqlite:///{typo}" in flat
    assert not typo.exists() and model_server.calls() == 0  # nothing created, nothing paid

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    result = CliRunner().invoke(app, ["eval", *base, "--reuse-from", f"sqlite:///{other}"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "this store has no call ledger (table moa_calls)" in said
    with sqlite3.connect(other) as conn:  # not migrated: no table was added
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"notes"} and model_server.calls() == 0
