"""The whole test suite under load: N copies of it at once, R rounds in a row (issue 19).

Each copy is a checkout of HEAD (``git worktree add --detach`` under a scratch directory,
removed afterwards) run with the README's test command (``pytest -q -p no:cacheprovider``)
on this interpreter, with ``PYTHONPATH`` on the copy so that ``moa`` subprocesses run it
too, ``MOA_REQUIRE_SERVICES=1`` as in CI (a missing database fails, never skips), its own
``--basetemp`` and its own JS SDK cache. The copies of a round start together and load the
machine for each other; the next round starts when all have ended. Prints a table (one row
per copy and round: passed, failed, errors, skipped, wall time, load average at the end),
the number of passing rounds in a row, and writes bench/results/suite_load.json (with the
first line of each failure's message).

    python bench/suite_load.py [--copies 2] [--rounds 3] [--stop-on-failure] [-- PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def checkout(dest: Path) -> str:
    """A detached worktree of HEAD at ``dest``; returns the commit's short hash."""
    subprocess.run(
        ["git", "worktree", "add", "-q", "--detach", str(dest), "HEAD"], cwd=ROOT, check=True
    )
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=dest,
        check=True,
        capture_output=True,
        text=True,
    )
    return head.stdout.strip()


def start(
    copy: Path, scratch: Path, name: str, extra: list[str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start one copy's suite; returns the process and its JUnit XML path."""
    xml = scratch / f"{name}.xml"
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        "MOA_REQUIRE_SERVICES": "1",
        "MOA_BROWSER_CACHE": str(
            Path.home() / ".cache" / "langgraph-moa" / f"browser-{name.split('-')[0]}"
        ),
    }
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={scratch / ('tmp-' + name)}",
        f"--junitxml={xml}",
        *extra,
    ]
    log = (scratch / f"{name}.log").open("wb")
    return subprocess.Popen(args, cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT), xml


def outcome(xml: Path, rc: int) -> dict[str, Any]:
    """Counts per test case from a JUnit XML report (a case with a failure or an error,
    in its call or its teardown, counts once, as failed or as an error), and the ids of
    those cases with the first line of each one's message; an absent or truncated report
    counts as one error."""
    try:
        cases = list(ET.parse(xml).getroot().iter("testcase"))
    except (OSError, ET.ParseError) as exc:
        return {
            "rc": rc,
            "passed": 0,
            "failed": 0,
            "errors": 1,
            "skipped": 0,
            "failures": [str(exc)],
            "reasons": {},
        }
    counts = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
    reasons: dict[str, str] = {}
    for case in cases:
        kind, found = next(
            (
                (k, el)
                for tag, k in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped"))
                if (el := case.find(tag)) is not None
            ),
            ("passed", None),
        )
        counts[kind] += 1
        if found is not None and kind in ("failed", "errors"):
            first_line = (found.get("message") or "").partition("\n")[0]
            reasons.setdefault(f"{case.get('classname')}::{case.get('name')}", first_line[:300])
    return {"rc": rc, **counts, "failures": list(reasons), "reasons": reasons}


COLUMNS = ("round", "copy", "rc", "passed", "failed", "errors", "skipped", "seconds", "loadavg")


def run_round(
    rnd: int, copies: list[Path], scratch: Path, extra: list[str]
) -> list[dict[str, Any]]:
    """All copies at once; one row per copy (its own end time and load average)."""
    began = time.monotonic()
    ended: dict[str, tuple[float, float]] = {}

    def reap(name: str, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        ended[name] = (time.monotonic() - began, os.getloadavg()[0])

    running = [(copy, *start(copy, scratch, f"{copy.name}-r{rnd}", extra)) for copy in copies]
    waiters = [threading.Thread(target=reap, args=(c.name, p)) for c, p, _ in running]
    for waiter in waiters:
        waiter.start()
    try:
        for waiter in waiters:
            waiter.join()
    finally:  # interrupted: stop the copies before their worktrees go
        for _, proc, _ in running:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    rows = []
    for copy, proc, xml in running:
        seconds, load = ended[copy.name]
        row = {"round": rnd, "copy": copy.name, **outcome(xml, proc.returncode)}
        rows.append({**row, "seconds": round(seconds), "loadavg": round(load, 1)})
        print(
            " ".join(f"{k}={row[k]}" for k in ("round", "copy", "rc", "passed", "failed")),
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the suite at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, one after the other")
    parser.add_argument(
        "--stop-on-failure", action="store_true", help="no round after a failing one"
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "suite_load.json")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed on to pytest")
    opts = parser.parse_args()
    if opts.copies < 1 or opts.rounds < 1:
        parser.error("--copies and --rounds must be at least 1")
    scratch = Path(tempfile.mkdtemp(prefix="moa-suite-load-"))
    copies = [scratch / f"copy{i + 1}" for i in range(opts.copies)]
    rows: list[dict[str, Any]] = []
    try:
        commit = {checkout(copy) for copy in copies}.pop()  # the same HEAD
        print(f"commit {commit}, {opts.copies} copies, {opts.rounds} rounds; logs: {scratch}")
        for rnd in range(1, opts.rounds + 1):
            rows += run_round(rnd, copies, scratch, opts.pytest_args)
            if any(r["rc"] for r in rows if r["round"] == rnd):
                if opts.stop_on_failure:
                    break
            else:  # keep the logs and reports, not the green round's temporary files
                for tmp in scratch.glob(f"tmp-*-r{rnd}"):
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        for copy in copies:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(copy)], cwd=ROOT, check=False
            )
    rounds = sorted({r["round"] for r in rows})
    green = 0
    for rnd in rounds:
        green = green + 1 if all(r["rc"] == 0 for r in rows if r["round"] == rnd) else 0
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in COLUMNS) + " |")
    print(f"\nrounds green in a row at the end: {green} of {len(rounds)}")
    summary = {"commit": commit, "copies": opts.copies, "cpus": os.cpu_count(), "rows": rows}
    opts.json.write_text(json.dumps({**summary, "green_in_a_row": green}, indent=1) + "\n")


if __name__ == "__main__":
    main()
