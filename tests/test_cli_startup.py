"""`moa` start-up stays light: the command line imports what a command uses, nothing more.

Checked on the modules a real ``moa`` process ends up with (not on timings; those are in
bench/startup.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {
    "langgraph",
    "langchain_core",
    "langchain_openai",
    "openai",
    "httpx",
    "sqlalchemy",
    "llama_cpp",
    "fastapi",
    "procrastinate",
}
PROBE = """
import json, sys
sys.argv = ["moa", *json.loads(sys.argv[1])]
from langgraph_moa.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _modules(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] in (0, None), done.stderr[-2000:]
    return set(report["modules"])


def test_help_imports_no_framework() -> None:
    loaded = _modules("--help")
    assert "typer" in loaded
    assert not loaded & (HEAVY | {"pydantic", "asyncio"})
    assert "markdown_it" not in loaded  # typer's rich help (0.1 s of imports) is off


@pytest.mark.parametrize(
    "command", ["run", "runs", "serve", "worker", "eval", "resume", "calls", "replay"]
)
def test_command_help_imports_no_framework(command: str) -> None:
    # typer itself validates parameters with pydantic: only our imports are checked here
    loaded = _modules(command, "--help")
    assert not loaded & HEAVY


def test_spec_validate_imports_no_langgraph() -> None:
    loaded = _modules("spec", "validate", "examples/specs/team.yaml")
    assert "pydantic" in loaded  # it did validate the spec
    assert not loaded & (HEAVY | {"rich"})  # its one plain line needs no rich


def test_models_imports_no_langchain() -> None:
    # the embedded model's settings and the default model come from the environment
    loaded = _modules("models")
    assert "pydantic" in loaded  # it did read the preset
    assert not loaded & HEAVY


def test_graph_imports_no_store() -> None:
    # drawing a graph builds it with LangGraph, but needs no store or server
    loaded = _modules("graph", "--preset", "layered")
    assert "langgraph" in loaded  # it did build the graph
    assert not loaded & {"sqlalchemy", "fastapi", "procrastinate", "llama_cpp", "openai"}


def test_runs_reads_the_registry_without_langgraph(tmp_path: Path) -> None:
    loaded = _modules("runs", "--db", f"sqlite:///{tmp_path}/moa.sqlite")
    assert "sqlalchemy" in loaded  # it did open the store
    assert not loaded & (HEAVY - {"sqlalchemy"})


def test_calls_reads_the_ledger_without_langgraph(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/moa.sqlite"
    _modules("runs", "--db", db)  # creates the store
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(["calls", "t1", "--db", db])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 1 and "no run or thread 't1'" in done.stderr  # it did look
    assert not set(report["modules"]) & (HEAVY - {"sqlalchemy"})


@pytest.mark.parametrize(
    "package",
    [
        "langgraph_moa.persistence",
        "langgraph_moa.runtime",
        "langgraph_moa.graphs",
        "langgraph_moa.models",
    ],
)
def test_lazy_package_exports_all_resolve(package: str) -> None:
    # the packages import their exports on first use: every name in __all__ must resolve
    import importlib

    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing


def test_runs_on_a_set_up_sqlite_store_imports_no_sqlalchemy(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/moa.sqlite"
    _modules("runs", "--db", db)  # creates the store (through the registry)
    loaded = _modules("runs", "--db", db, "--limit", "5", "--status", "success")
    assert not loaded & (HEAVY | {"pydantic", "asyncio", "aiosqlite"})


def test_help_imports_no_rich() -> None:
    # the consoles are made on first use; typer's plain help needs none
    assert "rich" not in _modules("--help")
    assert not _modules("runs", "--help") & (HEAVY | {"pydantic", "rich"})


# -- `moa runs` without SQLAlchemy: the same records as the registry ---------------------


async def _store_with_runs(url: str) -> list[str]:
    from langgraph_moa.persistence.registry import Owner, RunRegistry

    async with RunRegistry.from_url(url) as reg:
        await reg.setup()
        ids = []
        for i, thread in enumerate(["t1", "t2", "t1", "t3", "t1"]):
            run = await reg.create_run(
                thread,
                spec={"name": f"s{i}", "layers": [{"agents": ["a", "b"]}], "n": 1.5},
                spec_name=f"s{i}" if i % 2 else None,
                spec_hash="h" * 64,
                input=[7, "x", None] if i == 0 else 42 if i == 1 else {"task": f"q{i}"},
                metadata={"user": "ann", "i": i, "ok": True} if i != 2 else None,
                options={"stream": ["values"]} if i == 3 else None,
                owner=Owner.current() if i == 4 else None,
            )
            ids.append(run.run_id)
        await reg.update_run(ids[0], status="success", answer="four", usage={"total_tokens": 12})
        await reg.update_run(ids[1], status="error", error="boom\nline two", waiting_for=None)
        await reg.update_run(ids[2], status="interrupted", waiting_for=[{"value": "ok?"}])
        await reg.update_run(ids[3], status="cancelled", usage={"total_tokens": 0, "cost": 0.25})
        return ids


async def _registry_runs(url: str, **kw: Any) -> list[Any]:
    from langgraph_moa.persistence.registry import RunRegistry

    async with RunRegistry.from_url(url) as reg:
        return await reg.list_runs(**kw)


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"limit": 2},
        {"limit": 2, "offset": 1},
        {"thread_id": "t1"},
        {"thread_id": "nope"},
        {"status": "success"},
        {"status": ["pending", "running", "interrupted"]},
        {"thread_id": "t1", "status": ["pending", "running"], "limit": 50},
    ],
)
async def test_quick_runs_reads_what_the_registry_reads(
    tmp_path: Path, query: dict[str, Any]
) -> None:
    from langgraph_moa.persistence import quick_runs

    url = f"sqlite:///{tmp_path}/moa.sqlite"
    await _store_with_runs(url)
    expected = await _registry_runs(url, **query)
    got = quick_runs.list_runs(url, **query)
    assert got is not None
    assert got == expected
    assert [r.to_json() for r in got] == [r.to_json() for r in expected]
    if not query:
        assert len(got) == 5 and {r.status for r in got} == {
            "success",
            "error",
            "interrupted",
            "cancelled",
            "running",
        }
        assert any(r.input == 42 for r in got) and any(r.input == [7, "x", None] for r in got)


async def test_quick_runs_leaves_other_stores_to_the_registry(tmp_path: Path) -> None:
    import sqlite3

    from langgraph_moa.persistence import quick_runs

    path = tmp_path / "moa.sqlite"
    url = f"sqlite:///{path}"
    assert quick_runs.list_runs(url) is None  # no file yet: the registry creates it
    assert not path.exists()
    for other in (
        "sqlite://",
        "sqlite:///:memory:",
        f"sqlite:///{path}?timeout=5",
        f"sqlite:///file:{path}?mode=ro&uri=true",
        "postgresql://postgres@127.0.0.1:5432/test",
        "mysql://root@127.0.0.1:3306/test",
    ):
        assert quick_runs.sqlite_path(other) is None, other
    assert quick_runs.sqlite_path(f"sqlite+aiosqlite:///{path}") == str(path)
    assert quick_runs.sqlite_path(" sqlite:///rel/moa.sqlite ") == "rel/moa.sqlite"
    await _store_with_runs(url)
    assert quick_runs.list_runs(url) is not None
    with sqlite3.connect(path) as c:  # a store one migration behind: the registry migrates
        c.execute("DELETE FROM moa_schema_migrations WHERE component = 'registry' AND version = 2")
    assert quick_runs.list_runs(url) is None
    with sqlite3.connect(path) as c:  # newer than this code: the registry refuses it
        c.execute("INSERT INTO moa_schema_migrations VALUES ('registry', 2, 'x', '2026-01-01')")
        c.execute("INSERT INTO moa_schema_migrations VALUES ('registry', 3, 'y', '2026-01-01')")
    assert quick_runs.list_runs(url) is None


def test_quick_runs_shares_the_registry_schema() -> None:
    import sqlalchemy as sa

    from langgraph_moa.persistence import migrations, quick_runs
    from langgraph_moa.persistence.registry import runs_table
    from langgraph_moa.persistence.run_records import (
        RUN_JSON_COLUMNS,
        RUN_TIME_COLUMNS,
        run_columns,
    )

    assert {c: migrations.schema_version(c) for c in quick_runs.SCHEMA} == quick_runs.SCHEMA
    assert [c.name for c in runs_table.columns] == run_columns()
    assert {c.name for c in runs_table.columns if isinstance(c.type, sa.JSON)} == set(
        RUN_JSON_COLUMNS
    )
    assert {c.name for c in runs_table.columns if isinstance(c.type, sa.DateTime)} == set(
        RUN_TIME_COLUMNS
    )


def test_runs_output_the_same_either_way(tmp_path: Path) -> None:
    # the same store listed through the registry (a URL with an option) and without it
    import asyncio

    path = tmp_path / "moa.sqlite"
    asyncio.run(_store_with_runs(f"sqlite:///{path}"))
    env = {**os.environ, "COLUMNS": "200"}

    def moa(*args: str) -> tuple[str, str]:
        done = subprocess.run(
            [sys.executable, "-m", "langgraph_moa.cli", "runs", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    for extra in ([], ["--json"], ["--thread", "t1"], ["--status", "success", "--json"]):
        quick = moa("--db", f"sqlite:///{path}", *extra)
        full = moa("--db", f"sqlite:///{path}?timeout=30", *extra)
        assert quick == full
        assert quick[0].strip()


# -- option values without pydantic: typer's own values ----------------------------------

SAMPLES = [
    None,
    "",
    "x",
    "0",
    "1",
    "-3",
    "007",
    "1_000",
    " 5",
    "99999999999999999999",
    "5s",
    "500ms",
    "2m",
    "abc",
    "examples/specs/team.yaml",
    "examples",
    "/nonexistent/x.yaml",
    0,
    1,
    50,
    30.0,
    True,
    False,
    ("a", "b"),
    ["examples/specs/team.yaml"],
    (),
]


def test_quick_values_are_typer_values() -> None:
    import typer.main
    from typer._coercion import build_runtime_param

    from langgraph_moa.cli import _values, app

    def outcome(runtime: Any, value: Any, param: Any, ctx: Any) -> Any:
        try:
            return ("value", runtime.coerce(value, param=param, ctx=ctx))
        except Exception as exc:
            return ("error", type(exc).__name__, str(exc))

    command = typer.main.get_command(app)
    checked = 0

    def walk(cmd: Any) -> None:
        nonlocal checked
        ctx = cmd.make_context(cmd.name, [], resilient_parsing=True) if cmd.params else None
        for param in cmd.params:
            convert = _values.quick_converter(param)
            if convert is None:
                continue
            quick = _values._Quick(convert)
            full = build_runtime_param(param.type_descriptor)
            for value in SAMPLES:
                a = outcome(quick, value, param, ctx)
                b = outcome(full, value, param, ctx)
                assert a == b, (cmd.name, param.name, value, a, b)
                checked += 1
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(command)
    assert checked > 1000


def test_a_lazy_console_drives_a_live_view() -> None:
    """rich's Live and Progress enter their console (`with console:`), which a console made
    on first use must allow (`moa eval` without --quiet failed at the end of its progress)."""
    import io

    from rich.progress import Progress

    from langgraph_moa.cli.common import _LazyConsole

    lazy = _LazyConsole(file=io.StringIO(), force_terminal=True, width=60)
    with Progress(console=lazy) as bar:  # type: ignore[arg-type]
        bar.advance(bar.add_task("items", total=2), 2)
    assert "items" in lazy.file.getvalue()


PLAIN = [
    "",
    "a",
    "trailing   ",
    "  lead",
    "x" * 300,
    "word " * 60,
    "a\nb\n\nc",
    "é ü 中文 字符 " * 20,
    "examples/specs/team.yaml: ok · team: 4 agents, 2 layers [a, b] -> [c]",
    "{'a': 1, 'b': [1, 2]} None True 0x1f 3.14 https://x.y/z",
    "[bold]x[/] [link]",
    "a :smile: b",
    "a:b:c",
    "tab\there",
    "cr\rx",
    "bell\x07",
]


@pytest.mark.parametrize("stderr", [False, True])
def test_plain_lines_are_what_rich_writes(
    stderr: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consoles write plain text to a pipe without rich: byte for byte what rich writes
    there (no colours, long lines whole), and leave to rich what it would change."""
    import io

    from rich.console import Console

    from langgraph_moa.cli.common import _LazyConsole

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    skipped = 0
    for text in PLAIN:
        for markup in (False, True):
            for highlight in (False, True):
                expected = io.StringIO()
                Console(file=expected, soft_wrap=True).print(
                    text, markup=markup, highlight=highlight
                )
                lazy = _LazyConsole(stderr=stderr, soft_wrap=True)
                lazy.print(text, markup=markup, highlight=highlight)
                captured = capsys.readouterr()
                assert (captured.err if stderr else captured.out) == expected.getvalue(), text
                assert not (captured.out if stderr else captured.err)
                skipped += lazy._console is None
    assert skipped >= 2 * (len(PLAIN) - 6)  # most plain lines did skip rich
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich would colour them: rich writes them
    lazy = _LazyConsole(stderr=stderr, soft_wrap=True)
    lazy.print("4 agents", markup=False)
    captured = capsys.readouterr()
    assert lazy._console is not None
    assert "\x1b[" in (captured.err if stderr else captured.out)
