"""Run a dataset through several specs, score the answers, record every result.

Each (spec, item) answer and each pairwise judgment is written to the store as soon as it
is known, so an interrupted evaluation (Ctrl-C, a crash, ``kill -9``) resumes where it
stopped: a rerun with the same evaluation id skips the recorded results.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from langgraph_moa.eval.calls import EvalCalls
from langgraph_moa.eval.dataset import EvalItem
from langgraph_moa.eval.judge import PairwiseJudge
from langgraph_moa.eval.scoring import exact_match, regex_match, wilson_interval
from langgraph_moa.eval.stats import PairedComparison, compare_paired
from langgraph_moa.eval.store import EvalStore, ResultRow
from langgraph_moa.eval.variants import EvalSpec
from langgraph_moa.graphs import compile_graph
from langgraph_moa.persistence.calls import CALLS_KEY, CallLedger
from langgraph_moa.spec import GraphSpec
from langgraph_moa.state import Usage, add_usage

__all__ = [
    "EvalReport",
    "SpecSummary",
    "final_answer",
    "run_evaluation",
    "score_answer",
    "summarize",
]

Progress = Callable[[str, str], None]
"""Called with (``"answer"`` or ``"judge"``, spec label) after each recorded result."""


def final_answer(spec: GraphSpec, values: dict[str, Any]) -> str:
    """The answer of a run: the last synthesis, or the lone proposal of a closing
    ``concat`` layer (a single-model spec), without the concat header."""
    last = spec.layers[-1]
    if last.synthesizer.mode == "concat":
        layer = (values.get("proposals") or {}).get(str(len(spec.layers))) or {}
        ok = [p for p in layer.values() if p.get("status") == "ok"]
        if len(ok) == 1:
            return str(ok[0].get("content") or "")
    return str(values.get("answer") or "")


def score_answer(item: EvalItem, answer: str) -> tuple[float | None, dict[str, Any]]:
    """Score of a closed item (1 or 0) and what matched; None for a judged item."""
    if item.scorer == "regex":
        assert item.regex is not None
        matched = regex_match(answer, item.regex)
        return (1.0 if matched is not None else 0.0), {"scorer": "regex", "matched": matched}
    if item.scorer == "exact":
        matched = exact_match(answer, item.reference or [])
        return (1.0 if matched is not None else 0.0), {"scorer": "exact", "matched": matched}
    return None, {"scorer": "judge"}


async def _answer(
    eval_id: str,
    espec: EvalSpec,
    graph: CompiledStateGraph,
    item: EvalItem,
    calls: EvalCalls | None = None,
) -> ResultRow:
    t0 = time.perf_counter()
    thread_id = f"eval-{uuid.uuid4().hex}"
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    source = calls.for_item(thread_id) if calls is not None else None
    # where its calls are (`moa calls THREAD`), and how many the ledger answered
    where: dict[str, Any] = {}
    if source is not None:
        config["configurable"][CALLS_KEY] = source
        where["thread_id"] = thread_id
    try:
        values = await graph.ainvoke({"task": item.input}, config)
    except Exception as exc:  # a failed run is a wrong answer, recorded with its reason
        error = f"{type(exc).__name__}: {exc}"
        score = 0.0 if item.scorer != "judge" else None
        if source is not None and source.reused:
            where["calls_reused"] = source.reused
        return ResultRow(
            eval_id, "answer", espec.key, item.id, "error", score, None,
            {"error": error[:2000], "scorer": item.scorer, **where},
            latency_s=time.perf_counter() - t0,
        )  # fmt: skip
    latency = time.perf_counter() - t0
    if source is not None and source.reused:
        where["calls_reused"] = source.reused
    usage: Usage = Usage()
    for part in (values.get("usage") or {}).values():
        usage = add_usage(usage, part)
    answer = final_answer(espec.spec, values)
    score, details = score_answer(item, answer)
    return ResultRow(
        eval_id=eval_id,
        kind="answer",
        spec=espec.key,
        item_id=item.id,
        status="ok",
        score=score,
        answer=answer,
        details=details | where,
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        calls=int(usage.get("calls", 0)),
        cost=float(usage.get("cost", 0.0)),
        latency_s=latency,
    )


async def _judge(
    eval_id: str,
    judge: PairwiseJudge,
    item: EvalItem,
    candidate: ResultRow,
    baseline: ResultRow,
    baseline_spec: EvalSpec,
    calls: EvalCalls | None = None,
) -> ResultRow:
    details: dict[str, Any] = {"baseline": baseline_spec.key, "judge": judge.label}
    if candidate.status != "ok" or baseline.status != "ok":
        # a failed run loses to an answer; two failed runs tie; the judge is not asked
        score = 0.5 if candidate.status == baseline.status else float(candidate.status == "ok")
        details["note"] = "a run failed; scored without the judge"
        return ResultRow(eval_id, "judge", candidate.spec, item.id, "ok", score, None, details)
    t0 = time.perf_counter()
    # its calls are on a thread of their own, like those of each (spec, item) run
    source = calls.for_item(f"eval-{uuid.uuid4().hex}") if calls is not None else None
    judgment = await judge.compare(item, candidate.answer or "", baseline.answer or "", source)
    details |= {"verdicts": judgment.verdicts, "replies": [r[-500:] for r in judgment.replies]}
    if source is not None:
        details["thread_id"] = source.thread_id
        if source.reused:
            details["calls_reused"] = source.reused
    return ResultRow(
        eval_id=eval_id,
        kind="judge",
        spec=candidate.spec,
        item_id=item.id,
        status="ok",
        score=judgment.score,
        details=details,
        input_tokens=int(judgment.usage.get("input_tokens", 0)),
        output_tokens=int(judgment.usage.get("output_tokens", 0)),
        calls=int(judgment.usage.get("calls", 0)),
        latency_s=time.perf_counter() - t0,
    )


@dataclass
class SpecSummary:
    """Scores and costs of one spec over the items of an evaluation."""

    label: str
    key: str
    role: str
    items: int
    answered: int = 0
    errors: int = 0
    closed: int = 0
    correct: float = 0.0
    judged: int = 0
    win_points: float = 0.0
    tokens: int = 0
    calls: int = 0
    calls_reused: int = 0
    """Calls of these results answered from the call ledger (``moa eval --reuse``)."""
    cost: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds per answer, of the answers whose every call went to a model."""
    by_category: dict[str, tuple[float, int]] = field(default_factory=dict)
    is_baseline: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    """Closed items' scores by item id (what paired comparisons pair)."""

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.closed if self.closed else None

    @property
    def accuracy_ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.correct, self.closed) if self.closed else None

    @property
    def win_rate(self) -> float | None:
        return self.win_points / self.judged if self.judged else None

    @property
    def win_ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.win_points, self.judged) if self.judged else None

    @property
    def latency_p50(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON data (what ``--json`` writes per spec)."""

        def r(x: float | None, n: int = 4) -> float | None:
            return None if x is None else round(x, n)

        return {
            "label": self.label,
            "key": self.key,
            "role": self.role,
            "items": self.items,
            "answered": self.answered,
            "errors": self.errors,
            "closed": self.closed,
            "correct": self.correct,
            "accuracy": r(self.accuracy),
            "accuracy_ci95": [r(x) for x in self.accuracy_ci] if self.accuracy_ci else None,
            "judged": self.judged,
            "win_rate": r(self.win_rate),
            "win_rate_ci95": [r(x) for x in self.win_ci] if self.win_ci else None,
            "is_baseline": self.is_baseline,
            "tokens": self.tokens,
            "tokens_per_item": r(self.tokens / self.answered, 1) if self.answered else None,
            "calls": self.calls,
            "calls_reused": self.calls_reused,
            "cost": r(self.cost, 6),
            "latency_p50_s": r(self.latency_p50, 3),
            "latency_total_s": r(sum(self.latencies), 2),
            "scores": dict(sorted(self.scores.items())),
            "by_category": {
                c: {"correct": k, "n": n, "accuracy": r(k / n)}
                for c, (k, n) in self.by_category.items()
            },
        }


@dataclass
class EvalReport:
    """What an evaluation measured."""

    eval_id: str
    items: int
    specs: list[SpecSummary]
    baseline: str | None = None
    judge: str | None = None
    judge_usage: Usage = field(default_factory=lambda: Usage())
    ran: int = 0
    resumed: int = 0
    calls_live: int = 0
    """Model calls this run of the evaluation sent (the ones before a resume not counted)."""
    calls_reused: int = 0
    """Model calls this run answered from the call ledger (``reuse``)."""
    calls_sampled: int = 0
    """Of :attr:`calls_live`, calls sent with ``reuse`` on because they sample without a seed."""
    calls_run_id: str | None = None
    """``run_id`` of the calls this run recorded (``moa calls RUN_ID``)."""
    reference: str | None = None
    """Label of the spec every other one is compared with, paired by item (the single model)."""
    comparisons: dict[str, PairedComparison] = field(default_factory=dict)
    """Paired comparison against :attr:`reference`, by spec label."""

    def to_json(self) -> dict[str, Any]:
        return {
            "eval_id": self.eval_id,
            "items": self.items,
            "baseline": self.baseline,
            "judge": self.judge,
            "judge_usage": self.judge_usage,
            "ran": self.ran,
            "resumed": self.resumed,
            "calls": {
                "live": self.calls_live,
                "reused": self.calls_reused,
                "sampled_without_seed": self.calls_sampled,
                "run_id": self.calls_run_id,
            },
            "paired_reference": self.reference,
            "paired": {k: c.to_json() for k, c in self.comparisons.items()},
            "specs": [s.to_json() for s in self.specs],
        }


def summarize(
    eval_id: str,
    items: Sequence[EvalItem],
    specs: Sequence[EvalSpec],
    rows: Sequence[ResultRow],
    *,
    baseline: EvalSpec | None = None,
    judge: str | None = None,
) -> EvalReport:
    """Aggregate recorded rows into one :class:`SpecSummary` per spec, and compare every
    spec with the single-model one (role ``single``) item by item (:mod:`.stats`)."""
    by_id = {i.id: i for i in items}
    summaries = {
        s.key: SpecSummary(
            s.label, s.key, s.role, len(items), is_baseline=baseline is not None and s == baseline
        )
        for s in specs
    }
    judge_usage: Usage = Usage()
    for row in rows:
        summary = summaries.get(row.spec)
        item = by_id.get(row.item_id)
        if summary is None or item is None:
            continue
        if row.kind == "answer":
            summary.answered += 1
            summary.errors += row.status != "ok"
            summary.tokens += row.total_tokens
            summary.calls += row.calls
            reused = int(row.details.get("calls_reused") or 0)
            summary.calls_reused += reused
            summary.cost += row.cost
            if row.latency_s is not None and row.status == "ok" and not reused:
                summary.latencies.append(row.latency_s)
            if row.score is not None:
                summary.closed += 1
                summary.correct += row.score
                summary.scores[row.item_id] = row.score
                category = item.category or "-"
                k, n = summary.by_category.get(category, (0.0, 0))
                summary.by_category[category] = (k + row.score, n + 1)
        elif row.score is not None:
            summary.judged += 1
            summary.win_points += row.score
            judge_usage = add_usage(
                judge_usage,
                Usage(
                    input_tokens=row.input_tokens,
                    output_tokens=row.output_tokens,
                    total_tokens=row.total_tokens,
                    calls=row.calls,
                ),
            )
    reference = next((s for s in specs if s.role == "single"), None)
    comparisons: dict[str, PairedComparison] = {}
    if reference is not None and summaries[reference.key].scores:
        for spec in specs:
            if spec.key != reference.key and summaries[spec.key].scores:
                comparisons[spec.label] = compare_paired(
                    spec.label,
                    reference.label,
                    summaries[spec.key].scores,
                    summaries[reference.key].scores,
                )
    return EvalReport(
        eval_id=eval_id,
        items=len(items),
        specs=list(summaries.values()),
        baseline=baseline.label if baseline is not None else None,
        judge=judge,
        judge_usage=judge_usage,
        reference=reference.label if reference is not None else None,
        comparisons=comparisons,
    )


async def run_evaluation(
    items: Sequence[EvalItem],
    specs: Sequence[EvalSpec],
    store: EvalStore,
    *,
    eval_id: str,
    judge: PairwiseJudge | None = None,
    baseline: EvalSpec | None = None,
    concurrency: int = 4,
    progress: Progress | None = None,
    record_calls: bool = True,
    reuse: CallLedger | None = None,
) -> EvalReport:
    """Answer every item with every spec (skipping recorded results), judge the open
    items against ``baseline``, and return the summary of all recorded results.

    With ``record_calls`` the model calls of the runs are recorded in the call ledger of
    ``store``'s database (``moa_calls``); with ``reuse`` (a call ledger, e.g. that one), a
    call whose request is unchanged and decides its reply is answered from it (see
    :mod:`langgraph_moa.eval.calls`)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two specs under evaluation are the same: {keys}")
    judged_items = [i for i in items if i.scorer == "judge"]
    if judged_items and (judge is None or baseline is None):
        raise ValueError(
            f"{len(judged_items)} items have only a rubric and need a judge model and a "
            "baseline spec"
        )
    rows = await store.results(eval_id)
    done = {(r.kind, r.spec, r.item_id): r for r in rows}
    graphs = {s.key: compile_graph(s.spec) for s in specs}
    slots = asyncio.Semaphore(concurrency)
    ran = 0
    writer = None
    if record_calls:
        writer = CallLedger(store.engine)
        await writer.setup()
    calls = EvalCalls(writer, reuse) if writer is not None or reuse is not None else None

    async def answer(espec: EvalSpec, item: EvalItem) -> None:
        nonlocal ran
        async with slots:
            row = await _answer(eval_id, espec, graphs[espec.key], item, calls)
        if await store.record(row):
            ran += 1
        done[("answer", espec.key, item.id)] = row
        if progress is not None:
            progress("answer", espec.label)

    # items outer, specs inner: a partial evaluation covers every spec about equally
    todo = [answer(s, i) for i in items for s in specs if ("answer", s.key, i.id) not in done]
    resumed = len(items) * len(specs) - len(todo)
    try:
        await asyncio.gather(*todo)
    finally:
        if calls is not None:
            await calls.flush()

    if judged_items and judge is not None and baseline is not None:

        async def judgment(espec: EvalSpec, item: EvalItem) -> None:
            nonlocal ran
            candidate = done[("answer", espec.key, item.id)]
            base = done[("answer", baseline.key, item.id)]
            async with slots:
                row = await _judge(eval_id, judge, item, candidate, base, baseline, calls)
            if await store.record(row):
                ran += 1
            if progress is not None:
                progress("judge", espec.label)

        pairs = [
            judgment(s, i)
            for i in judged_items
            for s in specs
            if s.key != baseline.key and ("judge", s.key, i.id) not in done
        ]
        resumed += len(judged_items) * (len(specs) - 1) - len(pairs)
        try:
            await asyncio.gather(*pairs)
        finally:
            if calls is not None:
                await calls.flush()

    report = summarize(
        eval_id,
        items,
        specs,
        await store.results(eval_id),
        baseline=baseline,
        judge=judge.label if judge is not None else None,
    )
    report.ran, report.resumed = ran, resumed
    if calls is not None:
        report.calls_live, report.calls_reused = calls.live, calls.reused
        report.calls_sampled, report.calls_run_id = calls.sampled, calls.run_id
    return report
