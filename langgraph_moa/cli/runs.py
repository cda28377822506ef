"""Durable runs: `moa runs`, `history`, `resume`, `fork`, `prune`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from langgraph_moa.cli.common import (
    BaseUrlOpt,
    DbOpt,
    JsonOpt,
    ModelOpt,
    SpecOpt,
    StaleAfterOpt,
    ThreadArg,
    err,
    execute_run,
    fail,
    out,
    print_result,
    resolve_spec,
    store_call,
    store_problem,
)

if TYPE_CHECKING:
    from langgraph_moa.spec import GraphSpec


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
    result = execute_run(
        _stored_spec_for_view(db, thread),
        thread,
        as_json,
        _resumer(thread, db, spec, force, decision, stale_after, as_json, limits),
    )
    print_result(result, as_json)


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
    from langgraph_moa.graphs import preset
    from langgraph_moa.runtime.api import open_store
    from langgraph_moa.spec import SpecError, load_spec

    async def get() -> Any:
        async with open_store(db) as (_, registry):
            record = await registry.latest_run(thread)
            return record.spec if record is not None else None

    data = store_call(get())
    try:
        return load_spec(data) if data else preset("layered")
    except SpecError:
        return preset("layered")


def _resume_stale(db: str | None, stale_after: float, force: bool, as_json: bool) -> None:
    """Resume every run whose process is gone, one after the other."""
    import asyncio

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
        outcomes = store_call(guarded())
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
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=100_000, help="At most this many runs.")
    ] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first: status, attempts, owner process, tokens."""

    from rich.table import Table

    from langgraph_moa.persistence import quick_runs
    from langgraph_moa.persistence.run_records import RUN_STATUSES
    from langgraph_moa.runtime.store import open_registry, resolve_db_url

    if status is not None and status not in RUN_STATUSES:
        fail(f"--status {status!r}: use one of {', '.join(RUN_STATUSES)}", 2)

    async def get() -> Any:
        async with open_registry(db) as registry:
            return await registry.list_runs(thread_id=thread, status=status, limit=limit)  # type: ignore[arg-type]

    # an SQLite store set up already is read without SQLAlchemy (start-up); else the registry
    records = quick_runs.list_runs(resolve_db_url(db), thread_id=thread, status=status, limit=limit)
    if records is None:
        records = store_call(get())
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


def cancel(
    run_id: Annotated[str | None, typer.Argument(help="The run to cancel.")] = None,
    thread: Annotated[
        str | None, typer.Option("--thread", "-t", help="Cancel every active run of a thread.")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a run (or a thread's active runs), queued or running, in whichever process
    has it: `moa serve` replicas, `moa worker`s, `moa run`. The process holding it stops it
    at once on PostgreSQL (a notification), else at its next check (about a second for a
    running run, one heartbeat for a queued one); a queued run nobody holds ends here."""
    if (run_id is None) == (thread is None):
        fail("give a RUN_ID or --thread THREAD (not both)", 2)
    from langgraph_moa.persistence.registry import RunNotFoundError
    from langgraph_moa.runtime.api import open_store
    from langgraph_moa.runtime.executor import RunExecutor

    async def go() -> Any:
        async with open_store(db) as (_, registry):
            if run_id is not None:
                ids = [run_id]
            else:
                active = await registry.list_runs(
                    thread_id=thread, status=["pending", "running"], limit=1000
                )
                ids = [r.run_id for r in active]
            executor = RunExecutor(registry)
            try:
                return [await executor.cancel(i) for i in ids]
            except RunNotFoundError:
                fail(f"no run {run_id!r} in this store; `moa runs` lists them", 1)

    records = store_call(go())
    if as_json:
        out.print_json(json.dumps([_run_json(r) for r in records], default=str))
        return
    if not records:
        err.print(f"thread {thread} has no active run")
        return
    for r in records:
        if r.status in ("pending", "running"):
            err.print(f"run {r.run_id}: cancel requested; {describe_holder(r)} stops it")
        else:
            err.print(f"run {r.run_id}: {r.status}" + (f" ({r.error})" if r.error else ""))


def describe_holder(record: Any) -> str:
    return f"pid {record.owner_pid} on {record.owner_host}" if record.owner_token else "its process"


def _run_json(record: Any) -> dict[str, Any]:
    data = record.to_json()
    data.pop("spec", None)
    data["owner_gone"] = record.owner_gone() if record.owner_token else None
    return dict(data)


def history(thread: ThreadArg, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List a thread's checkpoints, oldest first: step, the nodes that wrote it, what is next."""
    from rich.table import Table

    from langgraph_moa.runtime.api import ahistory

    rows = store_call(ahistory(thread, db_url=db))
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
    import uuid

    from langgraph_moa.graphs import with_default_model
    from langgraph_moa.runtime.api import afork
    from langgraph_moa.spec import ModelSpec

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

    result = execute_run(view, new_thread, as_json, start)
    print_result(result, as_json)


def prune(
    db: DbOpt = None,
    keep_last: Annotated[
        int | None,
        typer.Option(
            "--keep-last", min=1, help="Keep this many newest checkpoints of each thread."
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Delete threads idle this long, with their checkpoints, runs and events; "
            "a number and a unit: 30d, 12h, 15m, 90s, 2w.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Also delete idle threads that are paused, pending or running."
        ),
    ] = False,
    eval_calls: Annotated[
        bool,
        typer.Option(
            "--eval",
            help="Also delete the model calls `moa eval` recorded before --older-than "
            "(what `moa eval --reuse` answers from; its results stay).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Apply retention to the store: delete idle threads whole, trim long ones."""
    from langgraph_moa.persistence.errors import PersistenceError
    from langgraph_moa.persistence.retention import prune_command
    from langgraph_moa.runtime.store import resolve_db_url

    if eval_calls and older_than is None:
        fail("--eval deletes the evaluation calls recorded before --older-than: give it too")
    try:
        report = prune_command(
            resolve_db_url(db),
            keep_last=keep_last,
            older_than=older_than,
            force=force,
            eval_calls=eval_calls,
        )
    except (ValueError, PersistenceError) as exc:
        problem = store_problem(exc)  # None for a bad --older-than / --keep-last
        fail(
            problem
            or (f"--older-than / --keep-last: {exc}" if isinstance(exc, ValueError) else str(exc))
        )
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    out.print(
        f"deleted {report.threads_deleted} idle thread(s) ({report.runs_deleted} run(s), "
        f"{report.events_deleted} event(s)) and {report.checkpoints_deleted} old checkpoint(s)"
        + (f", {report.eval_calls_deleted} evaluation call(s)" if eval_calls else "")
    )
    if report.skipped:
        out.print(
            f"kept {len(report.skipped)} idle thread(s) that are paused or running "
            f"(--force deletes them): {', '.join(report.skipped)}",
            markup=False,
        )
