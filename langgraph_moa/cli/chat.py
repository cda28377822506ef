"""`moa chat`: a conversation in the terminal, one run per message on one thread."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from langgraph_moa.cli.common import (
    AggregationOpt,
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

QUIT = {"/exit", "/quit", "/q"}


def chat(
    thread: Annotated[
        str | None,
        typer.Option("--thread", "-t", help="Continue this conversation (thread id)."),
    ] = None,
    spec: SpecOpt = None,
    preset_name: PresetOpt = None,
    db: DbOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    aggregation: AggregationOpt = None,
) -> None:
    """Talk with a mixture of agents: each line you type is a turn on one thread, answered
    with the earlier turns in mind (the live view shows the agents at work).

    End with Ctrl-D or /exit. Continue later with `moa chat --thread THREAD`
    or `moa run --thread THREAD TASK`.
    """
    import asyncio

    graph_spec = resolve_spec(spec, preset_name, model, base_url, aggregation=aggregation)
    if uses_local_model(graph_spec):
        err.print(
            "[dim]Using the embedded local model (SmolLM2-135M): fine for trying things out, "
            "weak at real work (see `moa models`).[/]"
        )
    import uuid

    thread_id = thread or uuid.uuid4().hex
    try:
        asyncio.run(_session(graph_spec, thread_id, db, None if aggregation else spec))
    except KeyboardInterrupt:
        err.print("")
    err.print(f"[dim]thread {thread_id}: continue with `moa chat --thread {thread_id}`[/]")


async def _session(graph_spec: Any, thread_id: str, db: str | None, spec: Any) -> None:
    import asyncio

    from rich.markup import escape

    from langgraph_moa.runtime import MoA

    source = spec.resolve() if spec is not None else None
    async with MoA(graph_spec, db_url=db, spec_source=source) as moa:
        snapshot = await moa.graph.aget_state(moa.config(thread_id))
        for message in (snapshot.values or {}).get("messages") or []:
            if message.type in ("human", "ai") and message.text:
                who = "you" if message.type == "human" else "moa"
                err.print(f"[dim]{who}> {escape(message.text)}[/]", highlight=False)
        while True:
            try:
                line = await asyncio.to_thread(_read, "you> ")
            except EOFError:
                return
            text = line.strip()
            if text in QUIT:
                return
            if not text:
                continue
            try:
                result = await _turn(moa, graph_spec, text, thread_id)
            except Exception as exc:
                fail(f"{type(exc).__name__}: {exc}; the conversation is kept in thread {thread_id}")
            if result.status == "interrupted":
                err.print(
                    f"[magenta]the run paused[/]; go on with `moa resume {thread_id} --approve`",
                    markup=True,
                )
                continue
            out.print(f"moa> {result.answer or ''}", markup=False, highlight=False)


async def _turn(moa: Any, graph_spec: Any, text: str, thread_id: str) -> Any:
    """One turn with the live view of its agents."""
    from rich.live import Live

    from langgraph_moa.runtime.progress import RunProgress

    progress = RunProgress([list(layer.agents) for layer in graph_spec.layers])
    with Live(progress.render(), console=err, refresh_per_second=8) as live:

        def on_event(mode: str, chunk: Any) -> None:
            progress.feed(mode, chunk)
            live.update(progress.render())

        return await moa.ainvoke(text, thread_id=thread_id, on_event=on_event)


def _read(prompt: str) -> str:
    err.print(prompt, end="", markup=False, highlight=False)
    return input()
