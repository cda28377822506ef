"""`moa` start-up stays light: the command line imports what a command uses, nothing more.

Checked on the modules a real ``moa`` process ends up with (not on timings; those are in
bench/startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert not loaded & HEAVY


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


@pytest.mark.parametrize("package", ["langgraph_moa.persistence", "langgraph_moa.runtime"])
def test_lazy_package_exports_all_resolve(package: str) -> None:
    # the packages import their exports on first use: every name in __all__ must resolve
    import importlib

    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing
