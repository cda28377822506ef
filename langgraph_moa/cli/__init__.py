"""The ``moa`` command line.

The typer app lives in :mod:`langgraph_moa.cli.common`; the modules here hold the commands
and are registered below, in the order ``moa --help`` lists them. Start-up is kept short:
modules import only typer and rich at the top, and every command imports what it uses
(LangGraph, SQLAlchemy, the server) inside its function.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from langgraph_moa.cli import chat, evaluate, ledger, running, runs, serving, specs
from langgraph_moa.cli.common import app, err, spec_app, store_problem

__all__ = ["app", "main"]

app.command()(running.run)
app.command()(chat.chat)
spec_app.command("validate")(specs.spec_validate)
app.command()(specs.graph)
app.command()(specs.models)
app.command()(serving.worker)
app.command()(runs.resume)
app.command("runs")(runs.runs_command)
app.command()(runs.cancel)
app.command()(runs.history)
app.command("calls")(ledger.calls_command)
app.command()(ledger.replay)
app.command()(runs.fork)
app.command()(serving.serve)
app.command("eval")(evaluate.eval_command)
app.command()(runs.prune)


def _command_for(first: list[str]) -> Any:
    """The click group of ``moa``, with only the command that ``first`` (the first argument)
    names, when it names one: building a command reads its function's signature and
    options, and only the invoked one is needed (``moa --help`` and any other first
    argument get the whole group, so help, suggestions and errors are typer's own)."""
    import typer.main

    name = first[0] if first else None
    commands = [
        c
        for c in app.registered_commands
        if c.callback is not None
        and (c.name or typer.main.get_command_name(c.callback.__name__)) == name
    ]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return typer.main.get_command(app)
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = commands, groups
    return typer.main.get_group(only)


def main() -> None:
    """Entry point of the ``moa`` script."""
    from langgraph_moa.cli import _values

    try:
        command = _command_for(sys.argv[1:2])
        _values.install(command)  # option values without pydantic (start-up)
        command()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a store error any command may meet: one line, no traceback
        problem = store_problem(exc)
        if problem is None:
            raise
        err.print(f"[bold red]error:[/] {problem}", highlight=False)
        sys.exit(1)
