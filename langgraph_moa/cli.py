"""The ``moa`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live

from langgraph_moa.graphs import GraphSpec, ModelSpec, SpecError, load_spec, preset
from langgraph_moa.graphs.dsl import with_default_model
from langgraph_moa.models import ModelConfigError, describe_default

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
    typer.Option("--db", envvar="MOA_DB_URL", help="SQLAlchemy URL of the store [env MOA_DB_URL]."),
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
) -> None:
    """Run TASK through a mixture of agents and print the answer."""
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
    result = asyncio.run(_run(graph_spec, task, db, thread, as_json))
    _print_result(result, as_json)


async def _run(
    graph_spec: GraphSpec,
    task: str | None,
    db: str | None,
    thread: str | None,
    quiet: bool,
    **kwargs: Any,
) -> Any:
    from langgraph_moa.runtime import MoA
    from langgraph_moa.runtime.progress import RunProgress

    progress = RunProgress([list(layer.agents) for layer in graph_spec.layers])
    try:
        async with MoA(graph_spec, db_url=db) as moa:
            if quiet:
                return await moa.ainvoke(task, thread_id=thread, **kwargs)
            with Live(progress.render(), console=err, refresh_per_second=8) as live:

                def on_event(mode: str, chunk: Any) -> None:
                    progress.feed(mode, chunk)
                    live.update(progress.render())

                return await moa.ainvoke(task, thread_id=thread, on_event=on_event, **kwargs)
    except (SpecError, ModelConfigError) as exc:
        fail(str(exc), 2)
    except Exception as exc:
        hint = f"; resume it with `moa resume {thread}`" if thread else ""
        fail(f"{type(exc).__name__}: {exc}{hint}")


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
        err.print(f"[magenta]run paused[/] (thread {result.thread_id}): {result.interrupts}")
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
            help="File of API keys, one per line [env MOA_API_KEYS_FILE; also MOA_API_KEYS, "
            "comma-separated].",
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


def main() -> None:
    """Entry point of the ``moa`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
