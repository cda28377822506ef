"""Hostile and careless command lines (issue 13): each gets one clear line and an exit code,
never a traceback, and never advice that cannot work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from langgraph_moa.cli.common import store_problem

UNREACHABLE_PG = "postgresql://nobody@127.0.0.1:1/moa"
BAD_URLS = {
    "garbage": "cannot parse database URL 'garbage'",
    "mongodb://h/db": "backend 'mongodb' is not supported; use sqlite, postgresql, mysql",
    UNREACHABLE_PG: "Connection refused",
}
COMMANDS = [
    ["runs"],
    ["history", "some-thread"],
    ["resume", "--stale"],
    ["prune", "--older-than", "30d"],
    ["serve", "--no-auth"],
]

# (arguments, exit code, part of the message)
CASES: list[tuple[list[str], int, str]] = [
    *(
        ([*command, "--db", url], 2 if command[0] == "serve" and url != UNREACHABLE_PG else 1, msg)
        for command in COMMANDS
        for url, msg in BAD_URLS.items()
        if not (command[0] == "serve" and url == UNREACHABLE_PG)  # serve checks it at start-up
    ),
    (["prune", "--older-than", "9999999999d"], 1, "'9999999999d' is too long; at most"),
    (["run", "   "], 2, "the task is blank"),
    (["run", ""], 2, "the task is blank"),
    (["serve", "--port", "99999"], 2, "Invalid value for '--port'"),
    (["serve", "--port", "0"], 2, "Invalid value for '--port'"),
    (["serve", "--max-body", "-1"], 2, "Invalid value for '--max-body'"),
    (["serve", "--heartbeat", "0"], 2, "give a duration above 0"),
    (["serve", "--heartbeat", "soon"], 2, "is not a duration"),
    (["serve", "--max-concurrency", "0"], 2, "Invalid value for '--max-concurrency'"),
    (["worker", "--stalled-after", "-5"], 2, "give a duration above 0"),
    (["worker", "--concurrency", "0"], 2, "Invalid value for '--concurrency'"),
    (["runs", "--limit", "-5"], 2, "Invalid value for '--limit'"),
    (["resume", "--stale", "--stale-after", "0"], 2, "give a duration above 0"),
    *(  # a file that cannot be opened: one line, no aiosqlite thread traceback before it
        ([*command, "--db", "sqlite:////nonexistent/dir/moa.sqlite"], 1, "cannot open the SQLite")
        for command in (["resume", "t"], ["history", "t"], ["fork", "t", "-c", "x"])
    ),
]


def _moa(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    db = [] if "--db" in args else ["--db", f"sqlite:///{tmp_path / 'moa.sqlite'}"]
    if args[0] in ("spec", "worker"):
        db = []
    return subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", *args, *db],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(tmp_path)},
    )


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_command_line_is_one_clear_line(case: tuple[list[str], int, str], tmp_path: Path):
    args, code, message = case
    done = _moa(args, tmp_path)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert message in " ".join(done.stderr.replace("│", " ").split()), done.stderr
    assert "moa resume" not in done.stderr
    if "Invalid value" not in message and "duration" not in message:
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


def test_read_only_store_says_so_and_advises_no_resume(tmp_path: Path) -> None:
    path = tmp_path / "moa.sqlite"
    assert _moa(["runs", "--db", f"sqlite:///{path}"], tmp_path).returncode == 0
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"  # read-only even for root
    done = _moa(
        ["run", "a task", "--json", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
         "--db", read_only],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: the store is read-only (attempt to write a readonly")
    assert "make the database file and its directory writable" in done.stderr
    assert "moa resume" not in done.stderr and "Traceback" not in done.stderr


def test_full_disk_is_one_line(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'full.sqlite'}")

    @sa.event.listens_for(engine, "connect")
    def small(dbapi_connection: object, _: object) -> None:
        dbapi_connection.execute("PRAGMA max_page_count = 8")  # type: ignore[attr-defined]

    with pytest.raises(sa.exc.OperationalError) as caught, engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x TEXT)"))
        for _ in range(100):
            conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": "x" * 4000})
    engine.dispose()
    problem = store_problem(caught.value)
    assert problem == (
        "the store's disk is full (database or disk is full); free some space and try again"
    )
