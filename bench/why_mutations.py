"""The one-line mutations of issue 19's "Why" (each once passed the whole suite): applies
each to a scratch copy of the project, runs the test files that must catch it and prints
the tests that fail (the killers), or SURVIVED.

    python bench/why_mutations.py             # all six
    python bench/why_mutations.py 1 4         # some of them
    python bench/why_mutations.py --list      # what each one changes

The copy (``--workdir``, default ``/tmp/moa-why/<n>``) runs with ``PYTHONPATH`` on it, so
``moa serve``/``moa run`` subprocesses of the tests run the mutated code too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
COPY = ("langgraph_moa", "tests", "examples", "pyproject.toml", "langgraph.json")


class Mutation(NamedTuple):
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "run lookup ignores the thread in the URL",
        "langgraph_moa/server/runs.py",
        "if run is None or run.thread_id != thread_id:",
        "if run is None:",
        ("tests/test_server_auth_units.py", "tests/test_server_auth.py"),
    ),
    Mutation(
        "proposals noted as trimmed but sent whole to the synthesizer",
        "langgraph_moa/nodes/synthesizer.py",
        "for i, (a, t) in enumerate(fitted.items(), 1)",
        "for i, (a, t) in enumerate(texts.items(), 1)",
        ("tests/test_engine.py",),
    ),
    Mutation(
        "synthesizer keeps only the current invocation's proposals",
        "langgraph_moa/nodes/synthesizer.py",
        'ok = {a: p for a, p in written.items() if p["status"] == "ok"}\n        if len(ok)',
        'ok = {a: p for a, p in written.items() if p["status"] == "ok" and p.get("run_id") '
        "== invocation_id(config)}\n        if len(ok)",
        ("tests/test_durable.py",),
    ),
    Mutation(
        "the answer is the first proposal, not the synthesis",
        "langgraph_moa/nodes/synthesizer.py",
        "answer=body, messages=",
        "answer=next(iter(texts.values())), messages=",
        ("tests/test_examples.py",),
    ),
    Mutation(
        "moa serve --workers runs the runs in-process",
        "langgraph_moa/cli/serving.py",
        "executor = workers.ProcrastinateExecutor(db)",
        "executor = None",
        ("tests/test_server_workers.py",),
    ),
    Mutation(
        "a stateless run's checkpoints are not deleted",
        "langgraph_moa/server/execution.py",
        "await checkpointer.adelete_thread(thread_id)",
        "pass",
        ("tests/test_server.py",),
    ),
]


def copy_project(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)


def apply(m: Mutation, dest: Path) -> None:
    path = dest / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.file}: {m.old!r} found {text.count(m.old)} times, not once")
    path.write_text(text.replace(m.old, m.new))


def run_tests(m: Mutation, dest: Path) -> tuple[str, float]:
    """The verdict (the failing tests, or SURVIVED) and the seconds it took; pytest's
    output is kept in ``dest/pytest.log``."""
    env = {**os.environ, "PYTHONPATH": str(dest)}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *m.tests],
        cwd=dest,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    (dest / "pytest.log").write_text(out.stdout + out.stderr)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out.stdout, re.MULTILINE)
    if out.returncode == 0:
        return "SURVIVED", seconds
    if failed:
        return f"killed by {', '.join(failed)}", seconds
    return f"pytest exit {out.returncode}: {out.stdout[-500:]}", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", type=int, help="1-6 (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/moa-why"))
    parser.add_argument("--list", action="store_true", help="print the mutations only")
    args = parser.parse_args()
    for n in args.numbers or range(1, len(MUTATIONS) + 1):
        m = MUTATIONS[n - 1]
        if args.list:
            print(f"{n}. {m.what}: {m.file}\n   - {m.old}\n   + {m.new}\n   {' '.join(m.tests)}")
            continue
        dest = args.workdir / str(n)
        copy_project(dest)
        apply(m, dest)
        verdict, seconds = run_tests(m, dest)
        print(f"{n}. {m.what}: {verdict} ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
