"""What the ``moa`` commands share: the typer app, consoles, options and helpers.

Importing this module must stay cheap (``moa --help`` imports it): LangGraph, LangChain,
SQLAlchemy and the spec models are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from langgraph_moa.spec import GraphSpec

app = typer.Typer(
    name="moa",
    help="Mixture-of-Agents on LangGraph, checkpointed to SQL.\n\n"
    "The store is --db or MOA_DB_URL (a SQLAlchemy URL such as sqlite:///moa.sqlite or "
    "postgresql://user@host/db); the default is a SQLite file in your user data directory "
    "(on Linux ~/.local/share/langgraph-moa/moa.sqlite).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: typer's rich help costs 0.1 s of imports per call
)
spec_app = typer.Typer(help="Work with spec files.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(spec_app, name="spec")


_RICH_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS")
_RICH_TEXT = re.compile(r"[\t\a\b\v\f\r]|:\S*:")  # tabs, control codes, :emoji: codes


class _LazyConsole:
    """A rich ``Console`` made on first use (``moa --help`` prints without one, and
    importing rich.console is a third of its start-up).

    A line of plain text to a file or pipe (not a terminal) is written as it is, without
    rich: what rich would write there too (no colours, and a soft-wrapped line is not cut).
    Anything rich would change (markup, tabs, control codes, emoji codes, a terminal, a
    forced colour mode, an encoding other than UTF-8) goes through rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    def print(self, *objects: Any, **options: Any) -> None:
        """rich's ``Console.print``; plain text to a file or pipe skips rich."""
        stream = self._plain_stream(objects, options)
        if stream is None:
            self._made().print(*objects, **options)
        else:
            stream.write(objects[0] + "\n")
            stream.flush()  # as rich does after each print

    def _plain_stream(self, objects: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """The stream to write ``objects`` to without rich, or None when rich must do it."""
        if self._console is not None or set(self._options) - {"stderr", "soft_wrap"}:
            return None
        if not self._options.get("soft_wrap") or set(options) - {"markup", "highlight"}:
            return None
        if len(objects) != 1 or type(objects[0]) is not str:
            return None
        text = objects[0]
        if (options.get("markup", True) and "[" in text) or _RICH_TEXT.search(text):
            return None
        if any(os.environ.get(name) is not None for name in _RICH_ENV):
            return None
        if "IPython" in sys.modules or "idlelib" in sys.modules:
            return None
        stream = sys.stderr if self._options.get("stderr") else sys.stdout
        try:
            if stream is None or stream.isatty():
                return None
        except ValueError:  # closed
            return None
        encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "")
        return stream if encoding == "utf8" else None

    def _made(self) -> Console:
        console = self._console
        if console is None:
            from rich.console import Console

            console = self._console = Console(**self._options)
        return console

    # dunders are looked up on the type, not through __getattr__: rich's Live (a progress
    # view) enters its console with `with console:`
    def __enter__(self) -> Console:
        return self._made().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._made().__exit__(*exc)


out = cast("Console", _LazyConsole(soft_wrap=True))
err = cast("Console", _LazyConsole(stderr=True, soft_wrap=True))

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
AggregationOpt = Annotated[
    str | None,
    typer.Option(
        "--aggregation",
        "-a",
        metavar="MODE",
        help="How the last layer aggregates: synthesize (the spec's default), vote (majority "
        "of the proposals' final answers; the synthesizer only on a tie or low agreement), "
        "select (the synthesizer picks the best proposal as written) or concat.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a view.")]


UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def positive_seconds(value: str | float) -> float:
    """A duration > 0 (at most a day) as seconds: a number, or a number with a unit
    (ms, s, m, h); for typer's ``parser=``."""
    if isinstance(value, int | float):
        number, unit = float(value), "s"
    else:
        text = value.strip().lower()
        unit = next((u for u in ("ms", "s", "m", "h") if text.endswith(u)), "s")
        try:
            number = float(text.removesuffix(unit) if text.endswith(unit) else text)
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not a duration; write e.g. 5, 500ms, 5s, 2m or 1h"
            ) from None
    seconds = number * UNITS[unit]
    if not 0 < seconds <= 86_400:  # also refuses nan and inf
        raise typer.BadParameter(f"{value!r}: give a duration above 0 and at most a day")
    return seconds


def store_problem(exc: BaseException) -> str | None:
    """One line for an error of the store (a bad URL, an unreachable server, a read-only
    file, a full disk) that says what to do, or None for any other error. It never
    suggests a command that cannot work in that state (no `moa resume` on a read-only
    store)."""
    import errno

    from sqlalchemy import exc as sa_exc

    from langgraph_moa.persistence.errors import PersistenceError
    from langgraph_moa.runtime.runs import StoreError

    cause: BaseException | None = exc
    for _ in range(8):  # the error and what it was raised from
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return "the disk is full (no space left on device); free some space and try again"
        if isinstance(cause, sa_exc.DBAPIError):
            text = " ".join(str(cause.orig).split())
            lowered = text.lower()
            if "readonly" in lowered or "read-only" in lowered or "read only" in lowered:
                return (
                    f"the store is read-only ({text}); nothing was written: make the database "
                    "file and its directory writable, or point --db / MOA_DB_URL at a "
                    "writable store"
                )
            if "full" in lowered and ("disk" in lowered or "database" in lowered):
                return f"the store's disk is full ({text}); free some space and try again"
            if "unable to open database file" in lowered:
                return (
                    f"cannot open the SQLite file ({text}): check that its directory exists "
                    "and is writable, or point --db / MOA_DB_URL elsewhere"
                )
            if isinstance(cause, sa_exc.OperationalError | sa_exc.InterfaceError):
                if isinstance(exc, StoreError):  # it names the store (password hidden)
                    return " ".join(str(exc).split())
                return (
                    f"cannot use the store ({text}); check that the database is running and "
                    "the URL (--db / MOA_DB_URL) is right"
                )
        cause = cause.__cause__
    if isinstance(exc, PersistenceError | StoreError):
        return " ".join(str(exc).split())
    return None


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error (no traceback) and exit."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def resolve_spec(
    spec: Path | None,
    preset_name: str | None,
    model: str | None = None,
    base_url: str | None = None,
    *,
    tools: bool = False,
    docs: Path | None = None,
    aggregation: str | None = None,
) -> GraphSpec:
    """The spec from a file or a preset (``layered`` by default), with an optional model;
    ``tools``/``docs`` are the ``team`` preset's options, ``aggregation`` the last layer's
    mode."""
    from langgraph_moa.graphs import preset, with_aggregation, with_default_model
    from langgraph_moa.spec import AGGREGATION_MODES, ModelSpec, SpecError, load_spec

    if aggregation is not None and aggregation not in AGGREGATION_MODES:
        fail(
            f"--aggregation {aggregation!r}: use one of {', '.join(AGGREGATION_MODES)}",
            2,
        )

    if spec is not None and preset_name is not None:
        fail("give --spec or --preset, not both", 2)
    options: dict[str, Any] = {}
    if tools or docs is not None:
        if preset_name != "team":
            fail("--tools and --docs go with --preset team (a spec file names its own tools)", 2)
        if docs is not None and not docs.is_dir():
            fail(f"--docs {docs}: not a directory", 2)
        options = {"tools": tools, "docs": str(docs.resolve()) if docs is not None else None}
    try:
        graph_spec = (
            load_spec(spec) if spec is not None else preset(preset_name or "layered", **options)
        )
    except SpecError as exc:
        fail(str(exc), 2)
    except ValueError as exc:
        fail(str(exc), 2)
    if aggregation is not None:
        graph_spec = with_aggregation(graph_spec, aggregation)
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


def execute_run(graph_spec: GraphSpec, thread: str, quiet: bool, start: Any) -> Any:
    """Run ``await start(on_event)`` with a live view; Ctrl-C/SIGTERM stop it resumably."""
    import asyncio

    from rich.live import Live

    from langgraph_moa.models import ModelConfigError
    from langgraph_moa.persistence.registry import RegistryError
    from langgraph_moa.runtime.progress import RunProgress
    from langgraph_moa.runtime.signals import EXIT_CODE, cancel_on_signals
    from langgraph_moa.spec import SpecError

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
    except Exception as exc:
        problem = store_problem(exc)
        if problem is not None:
            fail(problem)
        if isinstance(exc, SpecError | ModelConfigError | ValueError):
            fail(str(exc), 2)
        if isinstance(exc, RegistryError):
            fail(str(exc))
        fail(f"{type(exc).__name__}: {exc}; continue the run with `moa resume {thread}`")


def print_result(result: Any, as_json: bool) -> None:
    """Print a run's answer (or what a paused run waits for) and a summary line."""
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


ThreadArg = Annotated[str, typer.Argument(help="Thread id (see `moa runs`).")]
StaleAfterOpt = Annotated[
    float,
    typer.Option(
        "--stale-after",
        parser=positive_seconds,
        metavar="DURATION",
        help="Time without a heartbeat after which a run's process counts as gone (30, 30s, 2m).",
    ),
]


def store_call(coro: Any) -> Any:
    """Run a store query; errors become one clear line."""
    import asyncio

    from langgraph_moa.persistence.registry import RegistryError

    try:
        return asyncio.run(coro)
    except Exception as exc:
        problem = store_problem(exc)
        if problem is not None:
            fail(problem)
        if isinstance(exc, RegistryError):
            fail(str(exc))
        raise
