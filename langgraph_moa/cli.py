"""The ``moa`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live

from langgraph_moa.graphs import preset
from langgraph_moa.graphs.dsl import with_default_model
from langgraph_moa.models import ModelConfigError, describe_default
from langgraph_moa.spec import GraphSpec, ModelSpec, SpecError, load_spec

app = typer.Typer(
    name="moa",
    help="Mixture-of-Agents on LangGraph, checkpointed to SQL.\n\n"
    "The store is --db or MOA_DB_URL (a SQLAlchemy URL such as sqlite:///moa.sqlite or "
    "postgresql://user@host/db); the default is a SQLite file in your user data directory "
    "(on Linux ~/.local/share/langgraph-moa/moa.sqlite).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
spec_app = typer.Typer(help="Work with spec files.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SpecOpt = Annotated[
    Path | None, typer.Option("--spec", "-s", help="Spec file (YAML, TOML or JSON).")
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", "-p", help="Built-in spec: layered or team.")
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="MOA_DB_URL",
        help="SQLAlchemy URL of the store; default: a SQLite file in your user data directory "
        "(~/.local/share/langgraph-moa/moa.sqlite on Linux).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Default model: 'provider:model', or a model name with "
        "--base-url. Agents that name a model keep theirs.",
    ),
]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint for --model.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a view.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error (no traceback) and exit."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def resolve_spec(
    spec: Path | None,
    preset_name: str | None,
    model: str | None = None,
    base_url: str | None = None,
) -> GraphSpec:
    """The spec from a file or a preset (``layered`` by default), with an optional model."""
    if spec is not None and preset_name is not None:
        fail("give --spec or --preset, not both", 2)
    try:
        graph_spec = load_spec(spec) if spec is not None else preset(preset_name or "layered")
    except SpecError as exc:
        fail(str(exc), 2)
    except ValueError as exc:
        fail(str(exc), 2)
    if model or base_url:
        graph_spec = with_default_model(graph_spec, ModelSpec(model=model, base_url=base_url))
    return graph_spec


def uses_local_model(spec: GraphSpec) -> bool:
    """True when some node of ``spec`` falls back to the embedded local model."""
    if os.environ.get("MOA_MODEL") or os.environ.get("MOA_BASE_URL"):
        return False
    names: list[str | None] = [a.model for a in spec.agents]
    names += [layer.synthesizer.model for layer in spec.layers]
    return any(spec.model_spec(n).is_local for n in names)


@app.command()
def run(
    task: Annotated[str, typer.Argument(help="The task for the agents.")],
    spec: SpecOpt = None,
    preset_name: PresetOpt = None,
    db: DbOpt = None,
    thread: Annotated[str | None, typer.Option("--thread", "-t", help="Thread id to use.")] = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    as_json: JsonOpt = False,
    submit: Annotated[
        bool,
        typer.Option(
            "--submit",
            help="Queue the run for `moa worker` processes instead of running it here "
            "(needs a PostgreSQL --db); prints its ids.",
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="With --submit: follow the run and print the answer.")
    ] = False,
    queue: Annotated[
        str, typer.Option("--queue", help="With --submit: the worker queue to use.")
    ] = "moa",
    pause_after: Annotated[
        list[str] | None,
        typer.Option(
            "--pause-after",
            help="Pause after this node or agent (L1_router, router, an agent name); "
            "repeatable. Go on with `moa resume THREAD --approve` or --edit.",
        ),
    ] = None,
) -> None:
    """Run TASK through a mixture of agents and print the answer.

    The run is recorded in the store and checkpointed after every step: if it dies, `moa
    resume THREAD` continues it. Ctrl-C stops it resumably; a second Ctrl-C exits at once.
    """
    graph_spec = resolve_spec(spec, preset_name, model, base_url)
    if submit or wait:
        if not submit:
            fail("--wait goes with --submit", 2)
        asyncio.run(_submit(graph_spec, task, db, thread, queue, wait, as_json))
        return
    if uses_local_model(graph_spec) and not as_json:
        err.print(
            "[dim]Using the embedded local model (SmolLM2-135M): fine for trying things out, "
            "weak at real work. Point at a real model with --model/--base-url or MOA_MODEL "
            "(see `moa models`).[/]"
        )
    thread = thread or uuid.uuid4().hex
    if not as_json:
        err.print(f"[dim]thread {thread} (if it stops, `moa resume {thread}` continues it)[/]")

    async def start(on_event: Any) -> Any:
        from langgraph_moa.runtime import MoA

        source = spec.resolve() if spec is not None and not (model or base_url) else None
        async with MoA(
            graph_spec, db_url=db, spec_source=source, interrupt_after=pause_after or ()
        ) as moa:
            return await moa.ainvoke(task, thread_id=thread, on_event=on_event)

    result = _execute(graph_spec, thread, as_json, start)
    _print_result(result, as_json)


def _execute(graph_spec: GraphSpec, thread: str, quiet: bool, start: Any) -> Any:
    """Run ``await start(on_event)`` with a live view; Ctrl-C/SIGTERM stop it resumably."""
    from langgraph_moa.persistence.registry import RegistryError
    from langgraph_moa.runtime.progress import RunProgress
    from langgraph_moa.runtime.signals import EXIT_CODE, cancel_on_signals

    def stopping(signum: int) -> None:
        err.print(
            "\n[yellow]stopping[/]: saving what finished (press Ctrl-C again to exit at once)"
        )

    async def main() -> Any:
        with cancel_on_signals(stopping):
            if quiet:
                return await start(None)
            progress = RunProgress([list(layer.agents) for layer in graph_spec.layers])
            with Live(progress.render(), console=err, refresh_per_second=8) as live:

                def on_event(mode: str, chunk: Any) -> None:
                    progress.feed(mode, chunk)
                    live.update(progress.render())

                return await start(on_event)

    try:
        return asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        err.print(f"run interrupted; continue it with `moa resume {thread}`")
        raise typer.Exit(EXIT_CODE) from None
    except (SpecError, ModelConfigError, ValueError) as exc:
        fail(str(exc), 2)
    except RegistryError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"{type(exc).__name__}: {exc}; continue the run with `moa resume {thread}`")


async def _submit(
    graph_spec: GraphSpec,
    task: str,
    db: str | None,
    thread: str | None,
    queue: str,
    wait: bool,
    as_json: bool,
) -> None:
    from langgraph_moa.runtime.progress import RunProgress
    from langgraph_moa.runtime.workers import RunQueue, WorkerConfigError, result_of

    try:
        async with RunQueue(db, queue=queue) as runs:
            sub = await runs.submit(graph_spec, task, thread_id=thread)
            if not wait:
                if as_json:
                    out.print_json(json.dumps({**vars(sub), "status": "pending"}))
                else:
                    err.print(
                        f"queued run {sub.run_id} on thread {sub.thread_id} (queue {sub.queue}); "
                        "a `moa worker` on this database will run it"
                    )
                return
            if as_json:
                record = await runs.wait(sub.run_id)
            else:
                progress = RunProgress([list(layer.agents) for layer in graph_spec.layers])
                with Live(progress.render(), console=err, refresh_per_second=8) as live:
                    async for event in runs.follow(sub.run_id):
                        progress.feed(event.event, event.data)
                        live.update(progress.render())
                record = await runs.wait(sub.run_id)
    except (WorkerConfigError, SpecError) as exc:
        fail(str(exc), 2)
    except Exception as exc:
        fail(f"{type(exc).__name__}: {exc}")
    assert record is not None
    if record.status == "error":
        fail(f"run {record.run_id} failed: {record.error}")
    _print_result(result_of(record), as_json)


def _print_result(result: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(result.to_json()))
        return
    if result.status == "interrupted":
        from rich.markup import escape

        what = escape(json.dumps(result.interrupts or [{"next": result.next}], default=str))
        err.print(
            f"[magenta]run paused[/] (thread {result.thread_id}), waiting for: {what}\n"
            f"go on with `moa resume {result.thread_id} --approve`, or replace a proposal "
            "with --edit AGENT=TEXT / --edit-file FILE",
            markup=True,
            highlight=False,
        )
    else:
        out.print(result.answer or "", markup=False, highlight=False)
    tokens = result.usage.get("total_tokens", 0)
    err.print(
        f"[dim]thread {result.thread_id} · run {result.run_id} · {result.status} · "
        f"{tokens} tokens[/]"
    )


@spec_app.command("validate")
def spec_validate(file: Annotated[Path, typer.Argument(help="Spec file to check.")]) -> None:
    """Check a spec file and say what is wrong, with file, line and field."""
    try:
        graph_spec = load_spec(file)
    except SpecError as exc:
        fail(str(exc), 2)
    layers = " -> ".join(f"[{', '.join(layer.agents)}]" for layer in graph_spec.layers)
    out.print(
        f"{file}: ok · {graph_spec.name}: {len(graph_spec.agents)} agents, "
        f"{len(graph_spec.layers)} layers {layers}",
        markup=False,
    )


@app.command()
def graph(
    file: Annotated[Path | None, typer.Argument(help="Spec file (default: --preset).")] = None,
    preset_name: PresetOpt = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Write a PNG here (needs pygraphviz).")
    ] = None,
) -> None:
    """Draw a spec's graph: Mermaid text, or a PNG with --png."""
    from langgraph_moa.graphs import build_graph

    graph_spec = resolve_spec(file, preset_name)
    drawable = build_graph(graph_spec).compile(name=graph_spec.name).get_graph()
    if png is None:
        out.print(drawable.draw_mermaid(), markup=False, highlight=False)
        return
    try:
        drawable.draw_png(str(png))
    except ImportError:
        fail(
            "drawing a PNG needs pygraphviz (apt-get install graphviz libgraphviz-dev && "
            "pip install pygraphviz); or paste the Mermaid text of `moa graph` into "
            "https://mermaid.live",
            2,
        )
    err.print(f"wrote {png}")


@app.command()
def models(
    spec: SpecOpt = None,
    preset_name: PresetOpt = None,
) -> None:
    """List the models a spec uses, the embedded model, and how to use a real endpoint."""
    graph_spec = resolve_spec(spec, preset_name)
    out.print(f"[bold]{graph_spec.name}[/]: models without an entry use {describe_default()}")
    for name, model_spec in graph_spec.models.items():
        where = model_spec.base_url or "init_chat_model"
        out.print(f"  {name}: {model_spec.model or 'local'} ({where})", markup=False)
    try:
        from langgraph_moa.models.local import describe_local

        info = describe_local()
    except ImportError:
        info = {"installed": False}
    out.print(f"embedded model: {json.dumps(info, default=str)}", markup=False)
    out.print(
        "Use a real model:\n"
        "  OpenAI:            export OPENAI_API_KEY=...; moa run TASK --model openai:gpt-4o-mini\n"
        "  any OpenAI-compatible server (vLLM, Ollama, llama.cpp):\n"
        "                     moa run TASK --base-url http://127.0.0.1:11434/v1 --model llama3\n"
        "  for every run:     export MOA_MODEL=... [MOA_BASE_URL=... MOA_API_KEY=...]\n"
        "  per agent:         name models under `models:` in a spec file (moa spec validate)",
        markup=False,
    )


@app.command()
def worker(
    db: DbOpt = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Runs at a time in this process.")
    ] = 4,
    queues: Annotated[
        str, typer.Option("--queues", "-q", help="Comma-separated queues to take runs from.")
    ] = "moa",
    name: Annotated[str | None, typer.Option("--name", help="Worker name in logs.")] = None,
    heartbeat: Annotated[
        float, typer.Option("--heartbeat", help="Seconds between worker heartbeats.")
    ] = 10.0,
    stalled_after: Annotated[
        float,
        typer.Option(
            "--stalled-after",
            help="Seconds without a heartbeat after which a worker is dead and its runs "
            "are re-queued (at least twice --heartbeat).",
        ),
    ] = 60.0,
    reap_interval: Annotated[
        float, typer.Option("--reap-interval", help="Seconds between dead-worker checks.")
    ] = 10.0,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="On SIGTERM, seconds runs get to reach a checkpoint before they are "
            "cancelled; either way they go back to the queue.",
        ),
    ] = 30.0,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", help="Queue a run at most this many times.")
    ] = 5,
    setup: Annotated[
        bool, typer.Option("--setup", help="Create the queue and run tables, then exit.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level.")] = "INFO",
) -> None:
    """Execute queued runs (procrastinate on the PostgreSQL --db); SIGTERM drains."""
    import logging

    from langgraph_moa.runtime import workers

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if setup:
            asyncio.run(workers.setup(db))
            err.print("worker tables are ready")
            return
        settings = workers.WorkerSettings(
            db_url=db,
            concurrency=concurrency,
            queues=tuple(q.strip() for q in queues.split(",")),
            name=name,
            heartbeat_interval=heartbeat,
            stalled_after=stalled_after,
            reap_interval=reap_interval,
            shutdown_grace=grace,
            max_attempts=max_attempts,
        )
        workers.conninfo_of(db)
    except workers.WorkerConfigError as exc:
        fail(str(exc), 2)
    asyncio.run(workers.serve(settings))


# ------------------------------------------------------------ durable runs ---

ThreadArg = Annotated[str, typer.Argument(help="Thread id (see `moa runs`).")]
StaleAfterOpt = Annotated[
    float,
    typer.Option(
        "--stale-after",
        help="Seconds without a heartbeat after which a run's process counts as gone.",
    ),
]


def _store_call(coro: Any) -> Any:
    """Run a store query; errors become one clear line."""
    from langgraph_moa.persistence.registry import RegistryError

    try:
        return asyncio.run(coro)
    except RegistryError as exc:
        fail(str(exc))


@app.command()
def resume(
    thread: Annotated[
        str | None, typer.Argument(help="Thread whose latest run to continue.")
    ] = None,
    stale: Annotated[
        bool,
        typer.Option("--stale", help="Resume every run whose process is gone (dead or silent)."),
    ] = False,
    db: DbOpt = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", "-s", help="Check the stored spec against this file (drift) and use it."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Resume even though the spec changed (uses the new one)."),
    ] = False,
    approve: Annotated[
        bool, typer.Option("--approve", help="Go on with a run paused for approval.")
    ] = False,
    edit: Annotated[
        list[str] | None,
        typer.Option(
            "--edit", help="Replace an agent's proposal before going on: AGENT=TEXT (repeatable)."
        ),
    ] = None,
    edit_file: Annotated[
        Path | None,
        typer.Option(
            "--edit-file",
            help="JSON/YAML with `proposals: {agent: text}` and/or `plan: [{agent, subtask}]`.",
        ),
    ] = None,
    stale_after: StaleAfterOpt = 30.0,
    as_json: JsonOpt = False,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Raise the run's budget and go on: tokens=N, cost=X or both "
            "(tokens=50000,cost=0.5); 'none' lifts a limit. Kept for later resumes.",
        ),
    ] = None,
) -> None:
    """Continue a run from its last checkpoint with the spec it started with.

    Agents that finished before the run stopped keep their proposals and are not called
    again; only work that was in flight is repeated.
    """
    from langgraph_moa.runtime.runs import Decision, load_decision_file, parse_edits

    if stale == (thread is not None):
        fail("give a THREAD to resume, or --stale (not both)", 2)
    try:
        decision = load_decision_file(edit_file) if edit_file is not None else Decision()
        decision.proposals.update(parse_edits(edit or []))
    except ValueError as exc:
        fail(str(exc), 2)
    decision.approve = approve
    limits = None
    if budget is not None:
        from langgraph_moa.nodes.budget import parse_budget

        try:
            limits = parse_budget(budget)
        except ValueError as exc:
            fail(str(exc), 2)
    if stale:
        if not decision.empty or spec is not None or limits is not None:
            fail(
                "--stale resumes runs as they are; --approve/--edit/--spec/--budget need a THREAD",
                2,
            )
        _resume_stale(db, stale_after, force, as_json)
        return
    assert thread is not None
    result = _execute(
        _stored_spec_for_view(db, thread),
        thread,
        as_json,
        _resumer(thread, db, spec, force, decision, stale_after, as_json, limits),
    )
    _print_result(result, as_json)


def _resumer(
    thread: str,
    db: str | None,
    spec: Path | None,
    force: bool,
    decision: Any,
    stale_after: float,
    quiet: bool,
    budget: dict[str, Any] | None = None,
) -> Any:
    from langgraph_moa.runtime.api import aresume

    def started(record: Any, moa: Any) -> None:
        if not quiet:
            err.print(
                f"[dim]resuming run {record.run_id} of thread {thread} "
                f"(attempt {record.attempts + 1}, was {record.status})[/]"
            )

    async def start(on_event: Any) -> Any:
        return await aresume(
            thread,
            db_url=db,
            spec=spec,
            force=force,
            decision=decision,
            on_event=on_event,
            stale_after=stale_after,
            on_start=started,
            budget=budget,
        )

    return start


def _stored_spec_for_view(db: str | None, thread: str) -> GraphSpec:
    """The spec of the thread's latest run, for the progress view (a stub if unknown)."""
    from langgraph_moa.runtime.api import open_store

    async def get() -> Any:
        async with open_store(db) as (_, registry):
            record = await registry.latest_run(thread)
            return record.spec if record is not None else None

    data = _store_call(get())
    try:
        return load_spec(data) if data else preset("layered")
    except SpecError:
        return preset("layered")


def _resume_stale(db: str | None, stale_after: float, force: bool, as_json: bool) -> None:
    from langgraph_moa.persistence.registry import RegistryError
    from langgraph_moa.runtime.api import aresume, open_store

    async def main() -> list[dict[str, Any]]:
        async with open_store(db) as (_, registry):
            runs = [
                r
                for r in await registry.stale_runs(stale_after=stale_after)
                if r.owner_token is not None  # never-claimed runs belong to a queue
            ]
        outcomes: list[dict[str, Any]] = []
        for record in runs:
            item: dict[str, Any] = {"thread_id": record.thread_id, "run_id": record.run_id}
            if not as_json:
                err.print(
                    f"resuming run {record.run_id} of thread {record.thread_id} "
                    f"(owner {record.describe_owner()} is gone)"
                )
            try:
                result = await aresume(
                    record.thread_id, db_url=db, force=force, stale_after=stale_after
                )
                item.update(status=result.status, answer=result.answer)
            except RegistryError as exc:
                item.update(status="not resumed", error=str(exc))
            outcomes.append(item)
        return outcomes

    from langgraph_moa.runtime.signals import EXIT_CODE, cancel_on_signals

    async def guarded() -> list[dict[str, Any]]:
        with cancel_on_signals():
            return await main()

    try:
        outcomes = _store_call(guarded())
    except (asyncio.CancelledError, KeyboardInterrupt):
        err.print("interrupted; `moa resume --stale` again continues the rest")
        raise typer.Exit(EXIT_CODE) from None
    if as_json:
        out.print_json(json.dumps(outcomes, default=str))
    elif not outcomes:
        err.print("no stale runs")
    else:
        for item in outcomes:
            extra = f": {item['error']}" if "error" in item else ""
            out.print(
                f"{item['thread_id']}  {item['run_id']}  {item['status']}{extra}", markup=False
            )
    if any(item["status"] != "success" and "error" in item for item in outcomes):
        raise typer.Exit(1)


@app.command("runs")
def runs_command(
    db: DbOpt = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only runs with this status: pending, running, interrupted, success, error, "
            "cancelled.",
        ),
    ] = None,
    thread: Annotated[str | None, typer.Option("--thread", "-t", help="Only this thread.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many runs.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first: status, attempts, owner process, tokens."""
    from rich.table import Table

    from langgraph_moa.persistence.registry import RUN_STATUSES
    from langgraph_moa.runtime.api import open_store

    if status is not None and status not in RUN_STATUSES:
        fail(f"--status {status!r}: use one of {', '.join(RUN_STATUSES)}", 2)

    async def get() -> Any:
        async with open_store(db) as (_, registry):
            return await registry.list_runs(thread_id=thread, status=status, limit=limit)  # type: ignore[arg-type]

    records = _store_call(get())
    if as_json:
        out.print_json(json.dumps([_run_json(r) for r in records], default=str))
        return
    if not records:
        err.print("no runs")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("thread", "run", "spec", "status", "tries", "owner", "tokens", "updated (UTC)"):
        table.add_column(col)
    for r in records:
        owner = f"{r.owner_pid}@{r.owner_host}" if r.owner_token else ""
        if r.owner_token and r.owner_gone():
            owner += " (gone)"
        table.add_row(
            r.thread_id,
            r.run_id,
            r.spec_name or "",
            r.status,
            str(r.attempts),
            owner,
            str((r.usage or {}).get("total_tokens", "")),
            r.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


def _run_json(record: Any) -> dict[str, Any]:
    data = record.to_json()
    data.pop("spec", None)
    data["owner_gone"] = record.owner_gone() if record.owner_token else None
    return dict(data)


@app.command()
def history(thread: ThreadArg, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List a thread's checkpoints, oldest first: step, the nodes that wrote it, what is next."""
    from rich.table import Table

    from langgraph_moa.runtime.api import ahistory

    rows = _store_call(ahistory(thread, db_url=db))
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("step", "checkpoint", "source", "after", "next", "time (UTC)"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            str(row["step"]),
            row["checkpoint_id"],
            str(row["source"] or ""),
            ", ".join(row["after"]),
            ", ".join(row["next"]),
            str(row["created_at"] or "")[:19].replace("T", " "),
        )
    out.print(table)


@app.command()
def fork(
    thread: ThreadArg,
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", "-c", help="Checkpoint id to start from (`moa history`).")
    ],
    new_thread: Annotated[
        str | None, typer.Option("--thread", "-t", help="Id of the new thread.")
    ] = None,
    spec: SpecOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a new thread from a checkpoint of THREAD and run it (time travel).

    E.g. re-run the last layer with another model: `moa history T` shows the checkpoint
    before it, then `moa fork T --checkpoint ID --model M --base-url URL`. THREAD is not
    changed.
    """
    from langgraph_moa.runtime.api import afork

    new_thread = new_thread or uuid.uuid4().hex
    override: GraphSpec | None = None
    if spec is not None:
        override = resolve_spec(spec, None, model, base_url)
    elif model or base_url:
        stored = _stored_spec_for_view(db, thread)
        override = with_default_model(stored, ModelSpec(model=model, base_url=base_url))
    view = override or _stored_spec_for_view(db, thread)
    if not as_json:
        err.print(f"[dim]forking thread {thread} at {checkpoint} into thread {new_thread}[/]")

    async def start(on_event: Any) -> Any:
        return await afork(
            thread,
            checkpoint,
            db_url=db,
            new_thread_id=new_thread,
            spec=override,
            on_event=on_event,
        )

    result = _execute(view, new_thread, as_json, start)
    _print_result(result, as_json)


# ------------------------------------------------------------------ server ---

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    spec: Annotated[
        list[Path] | None,
        typer.Option("--spec", "-s", help="Spec file to serve; repeat for several assistants."),
    ] = None,
    preset_name: Annotated[
        list[str] | None,
        typer.Option("--preset", "-p", help="Built-in spec to serve (layered, team); repeatable."),
    ] = None,
    db: DbOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8123,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="Serve without API keys (only with --host 127.0.0.1)."),
    ] = False,
    api_keys_file: Annotated[
        Path | None,
        typer.Option(
            "--api-keys-file",
            envvar="MOA_API_KEYS_FILE",
            help="File of API keys, one per line (or MOA_API_KEYS, comma-separated).",
        ),
    ] = None,
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", help="Runs executing at once in this process.")
    ] = 8,
    use_workers: Annotated[
        bool,
        typer.Option(
            "--workers",
            help="Queue runs to `moa worker` processes (PostgreSQL --db) instead of running "
            "them in this process.",
        ),
    ] = False,
    heartbeat: Annotated[
        float, typer.Option("--heartbeat", help="Seconds between SSE heartbeats.")
    ] = 5.0,
    max_body: Annotated[
        int, typer.Option("--max-body", help="Largest request body in bytes.")
    ] = 1024 * 1024,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level.")] = "info",
) -> None:
    """Serve specs over HTTP with the LangGraph Server API (langgraph-sdk, Agent Chat UI,
    LangGraph Studio). Every spec is an assistant addressed by its name."""
    try:
        import uvicorn

        from langgraph_moa.server import ServerOptions, create_app, load_api_keys
    except ImportError as exc:
        fail(f"the server needs the `server` extra: pip install 'langgraph-moa[server]' ({exc})")
    specs: list[GraphSpec] = []
    try:
        specs += [load_spec(p) for p in spec or []]
        specs += [preset(name) for name in preset_name or []]
    except (SpecError, ValueError) as exc:
        fail(str(exc), 2)
    if not specs:
        specs = [preset("layered")]
    keys: list[str] = []
    if no_auth:
        if host not in LOOPBACK:
            fail(
                f"--no-auth is only allowed with --host 127.0.0.1, not {host!r}: anyone who "
                "can reach the port could run and read every thread. Configure API keys "
                "(MOA_API_KEYS or --api-keys-file) instead",
                2,
            )
    else:
        try:
            keys = load_api_keys(keys_file=api_keys_file)
        except ValueError as exc:
            fail(str(exc), 2)
        if not keys:
            fail(
                "no API keys: set MOA_API_KEYS (comma-separated) or --api-keys-file, or serve "
                "on 127.0.0.1 with --no-auth",
                2,
            )
    executor: Any = None
    if use_workers:
        from langgraph_moa.runtime import workers

        try:
            workers.conninfo_of(db)
        except workers.WorkerConfigError as exc:
            fail(str(exc), 2)
        executor = workers.ProcrastinateExecutor(db)
    options = ServerOptions(max_concurrency=max_concurrency, heartbeat=heartbeat)
    try:
        application = create_app(
            specs,
            db_url=db,
            api_keys=keys,
            auth=not no_auth,
            executor=executor,
            options=options,
            max_body=max_body,
        )
    except ValueError as exc:
        fail(str(exc), 2)
    err.print(
        f"serving {', '.join(s.name for s in specs)} on http://{host}:{port} "
        f"({'no auth' if no_auth else f'{len(keys)} API key(s)'}; docs at /docs)"
    )
    uvicorn.run(application, host=host, port=port, log_level=log_level.lower())


# -------------------------------------------------------------------- eval ---


@app.command("eval")
def eval_command(
    dataset: Annotated[
        str, typer.Argument(help="JSONL dataset file, or a built-in dataset: basic.")
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
        bool, typer.Option("--fresh", help="Drop this evaluation's stored results first.")
    ] = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-j", min=1, help="Runs at once.")
    ] = 4,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N items.")
    ] = None,
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
    """Score specs on DATASET: the spec's best single model, Self-MoA of it and the MoA side
    by side (accuracy or win rate with 95% Wilson intervals, tokens, cost, latency).

    Every result is stored (--db); rerunning an interrupted evaluation skips what is done."""
    from langgraph_moa.eval import ChartUnavailable, DatasetError, EvalSchemaError, load_dataset
    from langgraph_moa.eval.command import (
        EvalOptions,
        build_specs,
        default_eval_id,
        execute,
        judge_model,
    )
    from langgraph_moa.eval.report import require_matplotlib

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
    items = items[:limit] if limit else items
    main_spec = resolve_spec(spec, preset_name, model, base_url)
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
        json_path=json_path,
        chart=chart,
        markdown=markdown,
        quiet=quiet,
    )
    try:
        asyncio.run(execute(options, out, err))
    except (EvalSchemaError, ModelConfigError) as exc:
        fail(str(exc), 2)


@app.command()
def prune(
    db: DbOpt = None,
    keep_last: Annotated[
        int | None,
        typer.Option("--keep-last", help="Keep this many newest checkpoints of each thread."),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Delete threads idle this long: 30d, 12h, 90m, 2w."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply retention to the checkpoint store: delete idle threads, trim long ones."""
    from langgraph_moa.persistence.errors import PersistenceError
    from langgraph_moa.persistence.retention import prune_command
    from langgraph_moa.runtime.store import resolve_db_url

    try:
        report = prune_command(resolve_db_url(db), keep_last=keep_last, older_than=older_than)
    except (ValueError, PersistenceError) as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    else:
        out.print(
            f"deleted {report.threads_deleted} idle thread(s) and "
            f"{report.checkpoints_deleted} old checkpoint(s)"
        )


def main() -> None:
    """Entry point of the ``moa`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
