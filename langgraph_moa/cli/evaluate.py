"""`moa eval`: score specs on a dataset against their single-model baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from langgraph_moa.cli.common import (
    BaseUrlOpt,
    DbOpt,
    ModelOpt,
    PresetOpt,
    SpecOpt,
    err,
    fail,
    out,
    resolve_spec,
    uses_local_model,
)


def eval_command(
    dataset: Annotated[
        str, typer.Argument(help="JSONL dataset file, or a built-in dataset: basic, compute.")
    ],
    spec: SpecOpt = None,
    preset_name: PresetOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    compare: Annotated[
        list[Path] | None,
        typer.Option("--compare", help="Another spec file to evaluate too; repeatable."),
    ] = None,
    no_baselines: Annotated[
        bool,
        typer.Option(
            "--no-baselines",
            help="Evaluate the spec as it is, without its derived single-model and Self-MoA specs.",
        ),
    ] = False,
    best: Annotated[
        str | None,
        typer.Option(
            "--best",
            help="Agent whose model is the single model (default: the "
            "first agent of the first layer).",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", min=2, help="Self-MoA samples (default: first-layer width)."),
    ] = None,
    temperature: Annotated[
        float, typer.Option("--sample-temperature", min=0.01, max=2.0, help="Self-MoA sampling.")
    ] = 0.7,
    aggregation: Annotated[
        list[str] | None,
        typer.Option(
            "--aggregation",
            "-a",
            metavar="MODE",
            help="Evaluate the MoA with its last layer closed by MODE: synthesize, vote or "
            "select; repeatable (default: all three, on the same proposals).",
        ),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            "--judge",
            help="Judge model for rubric items: a model entry of the spec, 'provider:model', "
            "or a model name at --judge-base-url (default: the final synthesizer's model).",
        ),
    ] = None,
    judge_base_url: Annotated[
        str | None, typer.Option("--judge-base-url", help="OpenAI-compatible URL of --judge.")
    ] = None,
    db: DbOpt = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Evaluation id (default: dataset name + hash of its items)."),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Drop this evaluation's stored results first (with --shard, those of the "
            "shard's items only).",
        ),
    ] = False,
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse",
            help="Answer unchanged model calls from the call ledger of the store: a call "
            "whose request (model, server, parameters with temperature and seed, messages) "
            "was recorded by an earlier run, and whose reply the request decides (seeded or "
            "temperature 0), is not sent again. Changed calls go to the model and are "
            "recorded. Results already stored for this evaluation are kept: add --fresh (or "
            "another --name) to compute them again from the ledger.",
        ),
    ] = False,
    reuse_from: Annotated[
        str | None,
        typer.Option(
            "--reuse-from",
            metavar="STORE",
            help="--reuse with the call ledger of this store (a SQLAlchemy URL) instead of "
            "--db's; the calls sent are still recorded in --db.",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-j", min=1, help="Runs at once.")
    ] = 4,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            help="Only N items: a fixed subset covering the categories evenly (a larger N "
            "adds items, so results of a smaller N are reused).",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="K/N",
            help="Only the K-th of N shares of the items (each category dealt out evenly): N "
            "processes (or machines) with K = 1..N on the same --db compute the evaluation "
            "together; then the command without --shard prints the whole table from the store.",
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            min=0,
            max=2**31 - 1,
            help="Seed of the sampling (each call's seed derives from it, its node and its "
            "prompt), so the same command gives the same table; a spec's own defaults.seed wins.",
        ),
    ] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON here.")
    ] = None,
    chart: Annotated[
        Path | None, typer.Option("--chart", help="Write a PNG chart here (needs matplotlib).")
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the table as Markdown.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress view.")] = False,
) -> None:
    """Score specs on DATASET: the spec's best single model, Self-MoA of it and the MoA (closed
    by synthesize, vote and select) side by side (accuracy or win rate with 95% Wilson
    intervals, tokens, cost, latency), and each against the single model on the same items
    (paired difference with a bootstrap 95% interval, exact McNemar p-value). Sampling is
    seeded (--seed): a rerun gives the same table. The embedded model decodes one request
    at a time here, on one thread (MOA_LOCAL_PARALLEL=1 and MOA_LOCAL_THREADS=1, unless set):
    a seeded answer depended on what was decoded beside it and on the thread count, so the
    table does not depend on timing or on the number of CPUs. Use --shard K/N in N processes
    (one per core) for speed.

    Every result is stored (--db), and every model call in its call ledger (`moa calls`);
    rerunning an interrupted evaluation skips what is done, and --reuse answers unchanged
    calls from the ledger (a new synthesizer prompt pays only for the synthesizer)."""
    import asyncio
    import os

    from langgraph_moa.eval import ChartUnavailable, DatasetError, EvalSchemaError, load_dataset
    from langgraph_moa.eval.command import (
        EvalOptions,
        ReuseSourceError,
        build_specs,
        default_eval_id,
        execute,
        judge_model,
    )
    from langgraph_moa.eval.dataset import parse_shard, select_items, shard_items
    from langgraph_moa.eval.report import require_matplotlib
    from langgraph_moa.graphs import with_default_model
    from langgraph_moa.models import ModelConfigError
    from langgraph_moa.spec import ModelSpec, SpecError, load_spec

    # The embedded model decodes concurrent requests together, and the batch's make-up can
    # change a seeded answer's low bits: an evaluation decodes one request at a time
    # (unless MOA_LOCAL_PARALLEL says otherwise), so its table does not depend on timing.
    # So does the number of threads a step runs on: an evaluation decodes on one thread
    # (unless MOA_LOCAL_THREADS says otherwise), which turns the tuner off and makes the
    # table the same on any number of CPUs; --shard K/N uses the other cores.
    os.environ.setdefault("MOA_LOCAL_PARALLEL", "1")
    os.environ.setdefault("MOA_LOCAL_THREADS", "1")
    if reuse_from is not None:
        import sqlalchemy as sa

        try:
            sa.make_url(reuse_from)
        except sa.exc.ArgumentError:
            fail(f"--reuse-from {reuse_from!r}: not a database URL (e.g. sqlite:///moa.sqlite)", 2)
        reuse = True
    if chart is not None:
        try:
            require_matplotlib()
        except ChartUnavailable as exc:
            fail(str(exc), 2)
    try:
        items = load_dataset(dataset)
    except DatasetError as exc:
        fail(str(exc), 2)
    eval_id = name or default_eval_id(dataset, items)
    try:
        share = parse_shard(shard) if shard else None
        items = shard_items(select_items(items, limit), share)
    except ValueError as exc:
        fail(str(exc), 2)
    if share is not None and not items:
        err.print(f"[dim]--shard {shard}: this share has no items (more shards than items)[/]")
    main_spec = resolve_spec(spec, preset_name, model, base_url)
    modes = ("synthesize", "vote", "select")
    if bad := [m for m in aggregation or () if m not in modes]:
        fail(f"--aggregation {bad[0]!r}: use one of {', '.join(modes)}", 2)
    try:
        extra = [load_spec(p) for p in compare or []]
        if model or base_url:
            default = ModelSpec(model=model, base_url=base_url)
            extra = [with_default_model(s, default) for s in extra]
        specs = build_specs(
            main_spec,
            extra,
            baselines=not no_baselines,
            best=best,
            samples=samples,
            temperature=temperature,
            seed=seed,
            aggregations=aggregation or ("synthesize", "vote", "select"),
        )
    except (SpecError, ValueError) as exc:
        fail(str(exc), 2)
    if not quiet and any(uses_local_model(s.spec) for s in specs):
        err.print(
            "[dim]Using the embedded local model (SmolLM2-135M); point at a real model with "
            "--model/--base-url or MOA_MODEL (see `moa models`).[/]"
        )
    options = EvalOptions(
        items=items,
        specs=specs,
        eval_id=eval_id,
        db=db,
        judge=judge_model(main_spec, judge, judge_base_url),
        concurrency=concurrency,
        fresh=fresh,
        shard=share,
        reuse=reuse,
        reuse_from=reuse_from,
        json_path=json_path,
        chart=chart,
        markdown=markdown,
        quiet=quiet,
    )
    try:
        asyncio.run(execute(options, out, err))
    except (EvalSchemaError, ModelConfigError, ReuseSourceError) as exc:
        fail(str(exc), 2)
