"""What ``moa eval`` does once its options are parsed (the options live in ``cli/evaluate.py``)."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from langgraph_moa.eval.dataset import EvalItem, dataset_digest
from langgraph_moa.eval.judge import PairwiseJudge
from langgraph_moa.eval.report import markdown_table, rich_table, write_chart
from langgraph_moa.eval.runner import EvalReport, run_evaluation
from langgraph_moa.eval.store import EvalStore
from langgraph_moa.eval.variants import EvalSpec, derive_specs, sampling, with_seed
from langgraph_moa.models.settings import local_model_identity
from langgraph_moa.persistence.calls import CallLedger, calls
from langgraph_moa.spec import GraphSpec, ModelSpec

__all__ = [
    "EvalOptions",
    "ReuseSourceError",
    "build_specs",
    "default_eval_id",
    "execute",
    "judge_model",
]


def build_specs(
    main: GraphSpec,
    extra: Sequence[GraphSpec] = (),
    *,
    baselines: bool = True,
    best: str | None = None,
    samples: int | None = None,
    temperature: float = 0.7,
    seed: int | None = 0,
    aggregations: Sequence[str] = (),
) -> list[EvalSpec]:
    """Single, Self-MoA and MoA of ``main`` (the MoA once per mode in ``aggregations``), or
    ``main`` alone, then the ``extra`` specs; with ``seed``, every spec that sets no seed of
    its own samples with it."""
    specs = (
        derive_specs(
            main, best=best, samples=samples, temperature=temperature, aggregations=aggregations
        )
        if baselines
        else [EvalSpec(main.name, main, "spec")]
    )
    for spec in extra:
        label = spec.name
        while label in {s.label for s in specs}:
            label += "'"
        specs.append(EvalSpec(label, spec, "spec"))
    if seed is not None:
        specs = [EvalSpec(s.label, with_seed(s.spec, seed), s.role) for s in specs]
    return specs


def judge_model(main: GraphSpec, judge: str | None, base_url: str | None) -> tuple[ModelSpec, str]:
    """The judge's model and label: a model entry of ``main``, a ``provider:model``, a
    model at ``base_url``, or by default the model of ``main``'s final synthesizer."""
    if judge is not None and base_url is not None:
        return ModelSpec(model=judge, base_url=base_url, max_retries=3), f"{judge} at {base_url}"
    if judge is not None and judge in main.models:
        return main.models[judge], judge
    if judge is not None:
        return ModelSpec(model=judge), judge
    name = main.layers[-1].synthesizer.model or main.defaults.model
    spec = main.model_spec(name)
    return spec, name or spec.model or "default model"


def machine() -> dict[str, str | int | None]:
    """Where the numbers came from: CPU, cores, Python, OS, and the embedded model as this
    process would decode it (``local:<file>:<size>:threads=N``, as the call ledger names it;
    the shards that answered the items ran with their own environment)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "local_model": local_model_identity(),
    }


def default_eval_id(dataset: str, items: Sequence[EvalItem]) -> str:
    """``<dataset stem>-<hash of its items>``: the same command resumes the same evaluation."""
    return f"{Path(dataset).stem[:60]}-{dataset_digest(list(items))}"


@dataclass
class EvalOptions:
    """Everything ``moa eval`` was asked to do."""

    items: list[EvalItem]
    specs: list[EvalSpec]
    eval_id: str
    db: str | None = None
    judge: tuple[ModelSpec, str] | None = None
    concurrency: int = 4
    fresh: bool = False
    shard: tuple[int, int] | None = None
    """``--shard K/N``: ``items`` are that share; ``fresh`` drops their results only."""
    reuse: bool = False
    """Answer unchanged calls from the call ledger (``--reuse``)."""
    reuse_from: str | None = None
    """The store whose call ledger answers them (default: :attr:`db`)."""
    json_path: Path | None = None
    chart: Path | None = None
    markdown: bool = False
    quiet: bool = False
    notes: list[str] = field(default_factory=list)
    load_start: list[float] = field(default_factory=lambda: _load())


class ReuseSourceError(ValueError):
    """A ``--reuse-from`` store that has no call ledger to answer from."""


@asynccontextmanager
async def _reuse_ledger(options: EvalOptions, store: EvalStore) -> AsyncIterator[CallLedger | None]:
    """The call ledger ``--reuse`` answers from: the eval store's, or ``--reuse-from``'s
    (read only: never created nor upgraded; a store without one is a
    :class:`ReuseSourceError`)."""
    if not options.reuse:
        yield None
    elif options.reuse_from is None or options.reuse_from == options.db:
        yield CallLedger(store.engine)
    else:
        url = sa.make_url(options.reuse_from)
        shown = url.render_as_string(hide_password=True)
        path = url.database or ""
        on_disk = path not in ("", ":memory:") and not path.startswith("file:")
        if url.get_backend_name() == "sqlite" and on_disk and not Path(path).is_file():
            raise ReuseSourceError(
                f"--reuse-from {shown}: there is no SQLite file {path}; give the --db "
                "of an earlier `moa eval` whose calls to reuse"
            )
        ledger = CallLedger.from_url(options.reuse_from)
        try:
            try:
                async with ledger.engine.connect() as conn:
                    found = await conn.run_sync(lambda c: sa.inspect(c).has_table(calls.name))
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                why = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise ReuseSourceError(f"--reuse-from {shown}: cannot read it ({why})") from exc
            if not found:
                raise ReuseSourceError(
                    f"--reuse-from {shown}: this store has no call ledger (table {calls.name}); "
                    "give the --db of an earlier `moa eval` whose calls to reuse"
                )
            yield ledger
        finally:
            await ledger.aclose()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def execute(options: EvalOptions, out: Console, err: Console) -> EvalReport:
    """Run the evaluation with a progress view, print the table, write JSON and chart."""
    judge = None
    if options.judge is not None and any(i.scorer == "judge" for i in options.items):
        model_spec, label = options.judge
        judge = PairwiseJudge(model_spec, label)
        judge.model  # noqa: B018 - built now: a missing API key fails before any run
    baseline = options.specs[0] if judge is not None else None
    async with EvalStore.from_url(options.db) as store, _reuse_ledger(options, store) as reuse:
        if options.fresh:  # a shard's only: the other shards share the evaluation
            mine = [i.id for i in options.items] if options.shard else None
            removed = await store.clear(options.eval_id, mine)
            if removed and not options.quiet:
                err.print(
                    f"[dim]--fresh: dropped {removed} earlier results of {options.eval_id}[/]"
                )
        n = len(options.items)
        judged = sum(i.scorer == "judge" for i in options.items)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=options.quiet,
            transient=False,
        ) as bar:
            tasks = {s.label: bar.add_task(s.label, total=n) for s in options.specs}
            judge_task = (
                bar.add_task(f"judge ({judge.label})", total=judged * (len(options.specs) - 1))
                if judge is not None
                else None
            )
            # results recorded by an earlier, interrupted run count as done at once
            for row in await store.results(options.eval_id):
                spec = next((s for s in options.specs if s.key == row.spec), None)
                if spec is None or row.item_id not in {i.id for i in options.items}:
                    continue
                if row.kind == "answer":
                    bar.advance(tasks[spec.label])
                elif judge_task is not None:
                    bar.advance(judge_task)

            def advance(kind: str, label: str) -> None:
                bar.advance(tasks[label] if kind == "answer" or judge_task is None else judge_task)

            report = await run_evaluation(
                options.items,
                options.specs,
                store,
                eval_id=options.eval_id,
                judge=judge,
                baseline=baseline,
                concurrency=options.concurrency,
                progress=advance,
                reuse=reuse,
            )
    if options.markdown:
        out.print(markdown_table(report), markup=False, highlight=False)
    else:
        wide = out if out.is_terminal else Console(file=out.file, width=160)
        wide.print(rich_table(report))
    if not options.quiet:
        err.print(
            f"[dim]{report.ran} results computed, {report.resumed} taken from the store "
            f"(evaluation {report.eval_id}; rerun the same command to resume)[/]"
        )
        said = f"model calls: {report.calls_live} sent"
        if options.reuse:
            said += f", {report.calls_reused} answered from the call ledger (--reuse)"
            if report.calls_sampled:
                said += (
                    f"; {report.calls_sampled} of those sent sample without a seed (or on "
                    "the embedded model in a batch or on its tuner's threads), so no "
                    "recorded reply decides them"
                )
        if report.calls_live:
            said += f"; `moa calls {report.calls_run_id}` lists the calls sent"
        err.print(f"[dim]{said}[/]", highlight=False)
        if report.judge_usage:
            err.print(
                f"[dim]judge {report.judge}: {report.judge_usage.get('calls', 0)} calls, "
                f"{report.judge_usage.get('total_tokens', 0)} tokens[/]"
            )
    if options.json_path is not None:
        data = report.to_json() | {
            "command": ["moa", *sys.argv[1:]],
            "machine": machine(),
            "dataset_items": len(options.items),
            "shard": list(options.shard) if options.shard else None,
            "specs_used": {
                s.label: s.spec.model_dump(mode="json", exclude_unset=True) for s in options.specs
            },
            "sampling": {s.label: sampling(s.spec) for s in options.specs},
            "load_average": {"start": options.load_start, "end": _load()},
            "notes": options.notes,
        }
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(data, indent=1, default=str))
    if options.chart is not None:
        write_chart(report, options.chart)
        if not options.quiet:
            err.print(f"[dim]wrote {options.chart}[/]")
    return report
