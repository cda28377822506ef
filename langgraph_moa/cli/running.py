"""`moa run`: one run here, or queued for the workers with --submit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from langgraph_moa.cli.common import (
    AggregationOpt,
    BaseUrlOpt,
    DbOpt,
    JsonOpt,
    ModelOpt,
    PresetOpt,
    SpecOpt,
    err,
    execute_run,
    fail,
    out,
    print_result,
    resolve_spec,
    uses_local_model,
)

if TYPE_CHECKING:
    from langgraph_moa.spec import GraphSpec


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
    tools: Annotated[
        bool,
        typer.Option(
            "--tools",
            help="With --preset team: coding and verification run Python in a sandbox "
            "(needs a model that calls tools, e.g. --model/--base-url).",
        ),
    ] = False,
    docs: Annotated[
        Path | None,
        typer.Option("--docs", help="With --preset team: research searches this directory."),
    ] = None,
    aggregation: AggregationOpt = None,
) -> None:
    """Run TASK through a mixture of agents and print the answer.

    The run is recorded in the store and checkpointed after every step: if it dies, `moa
    resume THREAD` continues it. Ctrl-C stops it resumably; a second Ctrl-C exits at once.
    """
    import asyncio

    if not task.strip():
        fail("the task is blank; say what the agents should do, e.g. moa run 'Explain WAL'", 2)
    graph_spec = resolve_spec(
        spec, preset_name, model, base_url, tools=tools, docs=docs, aggregation=aggregation
    )
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
    import uuid

    thread = thread or uuid.uuid4().hex
    if not as_json:
        err.print(f"[dim]thread {thread} (if it stops, `moa resume {thread}` continues it)[/]")

    async def start(on_event: Any) -> Any:
        from langgraph_moa.runtime import MoA

        changed = model or base_url or aggregation
        source = spec.resolve() if spec is not None and not changed else None
        async with MoA(
            graph_spec, db_url=db, spec_source=source, interrupt_after=pause_after or ()
        ) as moa:
            return await moa.ainvoke(task, thread_id=thread, on_event=on_event)

    result = execute_run(graph_spec, thread, as_json, start)
    print_result(result, as_json)


async def _submit(
    graph_spec: GraphSpec,
    task: str,
    db: str | None,
    thread: str | None,
    queue: str,
    wait: bool,
    as_json: bool,
) -> None:
    from rich.live import Live

    from langgraph_moa.runtime.progress import RunProgress
    from langgraph_moa.runtime.workers import RunQueue, WorkerConfigError, result_of
    from langgraph_moa.spec import SpecError

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
    result = result_of(record)
    if record.status == "success":  # aggregation and attribution are in the thread's state
        from langgraph_moa.runtime import MoA

        async with MoA(graph_spec, db_url=db) as moa:
            result.values = (await moa.aresult(record.thread_id, record.run_id)).values
    print_result(result, as_json)
