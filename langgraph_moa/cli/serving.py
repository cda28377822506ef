"""`moa serve` (the LangGraph Server API) and `moa worker` (queued runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from langgraph_moa.cli.common import DbOpt, err, fail, positive_seconds

if TYPE_CHECKING:
    from langgraph_moa.spec import GraphSpec


def worker(
    db: DbOpt = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Runs at a time in this process.")
    ] = 4,
    queues: Annotated[
        str, typer.Option("--queues", "-q", help="Comma-separated queues to take runs from.")
    ] = "moa",
    name: Annotated[str | None, typer.Option("--name", help="Worker name in logs.")] = None,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat",
            parser=positive_seconds,
            metavar="DURATION",
            help="Time between worker heartbeats (10, 10s, 1m).",
        ),
    ] = 10.0,
    stalled_after: Annotated[
        float,
        typer.Option(
            "--stalled-after",
            parser=positive_seconds,
            metavar="DURATION",
            help="Seconds without a heartbeat after which a worker is dead and its runs "
            "are re-queued (at least twice --heartbeat).",
        ),
    ] = 60.0,
    reap_interval: Annotated[
        float,
        typer.Option(
            "--reap-interval",
            parser=positive_seconds,
            metavar="DURATION",
            help="Time between dead-worker checks.",
        ),
    ] = 10.0,
    cancel_poll: Annotated[
        float,
        typer.Option(
            "--cancel-poll",
            parser=positive_seconds,
            metavar="DURATION",
            help="Time between a run's checks for a cancel request, in case a notification "
            "is missed (a cancel is seen at once otherwise); capped at --heartbeat.",
        ),
    ] = 1.0,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="On SIGTERM, seconds runs get to reach a checkpoint before they are "
            "cancelled; either way they go back to the queue.",
        ),
    ] = 30.0,
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts",
            min=1,
            help="Fail, not re-queue, a run whose worker dies once it has been started this "
            "many times (waits for a busy thread do not count).",
        ),
    ] = 5,
    setup: Annotated[
        bool, typer.Option("--setup", help="Create the queue and run tables, then exit.")
    ] = False,
    no_crons: Annotated[
        bool,
        typer.Option(
            "--no-crons",
            help="Do not fire crons in this worker (any worker may: a tick fires once).",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level.")] = "INFO",
) -> None:
    """Execute queued runs (procrastinate on the PostgreSQL --db); SIGTERM drains."""
    import asyncio
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
            cancel_poll=cancel_poll,
            crons=not no_crons,
        )
        workers.conninfo_of(db)
    except workers.WorkerConfigError as exc:
        fail(str(exc), 2)
    asyncio.run(workers.serve(settings))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")
    ] = 8123,
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
        int,
        typer.Option("--max-concurrency", min=1, help="Runs executing at once in this process."),
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
        float,
        typer.Option(
            "--heartbeat",
            parser=positive_seconds,
            metavar="DURATION",
            help="Time between SSE heartbeats: seconds, or with a unit (500ms, 5s, 1m).",
        ),
    ] = 5.0,
    max_body: Annotated[
        int, typer.Option("--max-body", min=1, help="Largest request body in bytes.")
    ] = 1024 * 1024,
    public_docs: Annotated[
        bool,
        typer.Option(
            "--public-docs", help="Serve /docs, /redoc and /openapi.json without an API key."
        ),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level.")] = "info",
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="Let pages of this origin call the API from a browser (e.g. "
            "http://localhost:3000 for Agent Chat UI; '*' for any); repeatable. Default: "
            "MOA_CORS_ORIGINS (comma-separated), else none.",
        ),
    ] = None,
    no_ui: Annotated[
        bool, typer.Option("--no-ui", help="Do not serve the run dashboard at /ui.")
    ] = False,
    no_crons: Annotated[
        bool,
        typer.Option(
            "--no-crons",
            help="Do not fire crons in this process (another replica, or the workers with "
            "--workers, fire them; a tick fires once whatever the number of processes).",
        ),
    ] = False,
    owner_heartbeat: Annotated[
        float,
        typer.Option(
            "--owner-heartbeat",
            parser=positive_seconds,
            metavar="DURATION",
            help="Time between heartbeats of this process's runs and thread leases in the "
            "store, and between sweeps for runs of dead replicas.",
        ),
    ] = 10.0,
    stale_after: Annotated[
        float,
        typer.Option(
            "--stale-after",
            parser=positive_seconds,
            metavar="DURATION",
            help="A replica silent this long is dead: any other takes its runs over (at "
            "least twice --owner-heartbeat; on one host a dead process counts at once).",
        ),
    ] = 30.0,
) -> None:
    """Serve specs over HTTP with the LangGraph Server API (langgraph-sdk, Agent Chat UI,
    LangGraph Studio). Every spec is an assistant addressed by its name. The run dashboard
    is at /ui (log in with an API key)."""
    try:
        import uvicorn

        from langgraph_moa.server import ServerOptions, create_app, load_api_keys
    except ImportError as exc:
        fail(f"the server needs the `server` extra: pip install 'langgraph-moa[server]' ({exc})")
    from langgraph_moa.graphs import preset
    from langgraph_moa.persistence.errors import DatabaseURLError
    from langgraph_moa.persistence.urls import backend_of
    from langgraph_moa.runtime.store import resolve_db_url
    from langgraph_moa.spec import SpecError, load_spec

    try:
        backend_of(resolve_db_url(db))  # a bad URL: one line now, not a failed start-up
    except DatabaseURLError as exc:
        fail(str(exc), 2)
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
    if stale_after < 2 * owner_heartbeat:
        fail(
            f"--stale-after ({stale_after:g}s) must be at least twice --owner-heartbeat "
            f"({owner_heartbeat:g}s), or live replicas would be taken for dead",
            2,
        )
    options = ServerOptions(
        max_concurrency=max_concurrency,
        heartbeat=heartbeat,
        owner_heartbeat=owner_heartbeat,
        stale_after=stale_after,
        crons=not use_workers and not no_crons,  # with --workers, the workers fire them
    )
    try:
        application = create_app(
            specs,
            db_url=db,
            api_keys=keys,
            auth=not no_auth,
            executor=executor,
            options=options,
            max_body=max_body,
            cors=cors_origin or None,
            ui=not no_ui,
            public_docs=public_docs,
        )
    except ValueError as exc:
        fail(str(exc), 2)
    pages = "docs at /docs" if no_ui else "dashboard at /ui, docs at /docs"
    err.print(
        f"serving {', '.join(s.name for s in specs)} on http://{host}:{port} "
        f"({'no auth' if no_auth else f'{len(keys)} API key(s)'}; {pages})"
    )
    uvicorn.run(application, host=host, port=port, log_level=log_level.lower())
