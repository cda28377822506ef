"""The call ledger: `moa calls`, `moa replay`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from langgraph_moa.cli.common import DbOpt, JsonOpt, err, fail, out, store_call


def calls_command(
    target: Annotated[str, typer.Argument(help="A thread id or a run id.", show_default=False)],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the model calls of a run or of a thread's runs, oldest first: node, model,
    tokens, latency, retries, status and request hash (`--json`: every column, with the
    messages and the response)."""
    from rich.table import Table

    from langgraph_moa.persistence.calls import CallLedger
    from langgraph_moa.runtime.store import open_registry

    async def get() -> Any:
        async with open_registry(db) as registry:
            ledger = CallLedger(registry.engine)
            found = await ledger.list(run_id=target)
            if not found:
                found = await ledger.list(thread_id=target)
            if not found and not await _known(registry, target):
                return None
            return found

    rows = store_call(get())
    if rows is None:
        fail(f"no run or thread {target!r} in this store; `moa runs` lists them")
    if as_json:
        out.print_json(json.dumps([r.to_json() for r in rows], default=str))
        return
    if not rows:
        err.print(f"no model calls recorded for {target}")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ("#", "run", "node", "kind", "model", "in", "out", "ms", "retries", "status", "hash")
    for col in columns:
        table.add_column(col, justify="right" if col in ("#", "in", "out", "ms") else "left")
    for n, r in enumerate(rows, 1):
        usage = r.usage or {}
        status = r.status if r.status == "ok" else f"{r.status}: {r.error or ''}"[:60]
        table.add_row(
            str(n),
            r.run_id[:8],
            r.node,
            r.kind,
            r.model,
            str(usage.get("input_tokens", "")),
            str(usage.get("output_tokens", "")),
            f"{r.latency_ms:.0f}",
            str(r.retries),
            status,
            r.request_hash[:12],
        )
    out.print(table)


async def _known(registry: Any, target: str) -> bool:
    """Whether ``target`` is a run or a thread of the registry."""
    if await registry.get_run(target) is not None:
        return True
    return bool(await registry.list_runs(thread_id=target, limit=1))


def replay(
    thread: Annotated[str, typer.Argument(help="The thread whose run to replay.")],
    run: Annotated[
        str | None, typer.Option("--run", help="This run of the thread (default: its latest).")
    ] = None,
    live: Annotated[
        list[str] | None,
        typer.Option(
            "--live",
            help="Call this node or agent live instead of replaying it: an agent name, "
            "`router`, `synthesizer` or a node such as L2_synthesizer (repeatable).",
        ),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", "-s", help="Run this spec instead of the run's (e.g. a new synthesizer)."
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Execute a run's graph again with every model call answered from the call ledger (no
    request leaves the process), and say whether the answer is the recorded one. `--live`
    calls some nodes for real, `--spec` changes the spec (a new synthesizer prompt or model
    on the recorded proposals). Nothing is written to the store; tools run again. Exit
    status 1 when a call was not in the ledger (not a faithful replay) or the replay failed."""
    import difflib

    from langgraph_moa.runtime.replay import areplay
    from langgraph_moa.runtime.runs import RunError

    if spec is not None and not spec.is_file():
        fail(f"--spec {spec}: no such file", 2)
    try:
        result = store_call(areplay(thread, run_id=run, db_url=db, live=live or (), spec=spec))
    except (RunError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps(result.to_json(), default=str))
    else:
        said = [f"replayed {len(result.replayed)} calls from the ledger"]
        if result.live:
            said.append(f"{len(result.live)} live ({', '.join(result.live)})")
        err.print(f"run {result.run_id}: " + ", ".join(said))
        for problem in result.missing:
            err.print(f"[bold red]not in the ledger:[/] {problem}", highlight=False)
        if result.status == "interrupted":
            err.print("the replay stopped at a pause (an interrupt, as the run did)")
        elif result.status == "error":
            err.print(f"[bold red]the replay failed:[/] {result.notes[0]}", highlight=False)
        if result.same:
            err.print("[green]the answer is the recorded one[/]")
        else:
            err.print("[yellow]the answer differs from the recorded one:[/]")
            diff = difflib.unified_diff(
                str(result.recorded_answer or "").splitlines(),
                str(result.answer or "").splitlines(),
                "recorded",
                "replayed",
                lineterm="",
            )
            err.print("\n".join(diff), highlight=False, markup=False)
        out.print(str(result.answer or ""), highlight=False, markup=False)
    if result.missing or result.status == "error":
        raise typer.Exit(1)
