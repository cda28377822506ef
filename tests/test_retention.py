"""``moa prune`` across the whole store, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from langgraph.checkpoint.base import empty_checkpoint

from langgraph_moa.persistence import SQLAlchemySaver, schema
from langgraph_moa.persistence.events import EventLog, events, thread_event_key
from langgraph_moa.persistence.registry import Owner, RunRegistry, runs_table, threads_table
from langgraph_moa.persistence.retention import parse_duration
from langgraph_moa.testing import ModelServer
from tests.durable_helpers import durable_spec, moa, write_spec


def test_durations_need_a_unit() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    with pytest.raises(ValueError, match=r"'0.5' has no unit; add one of s \(seconds\), m "):
        parse_duration("0.5")
    with pytest.raises(ValueError, match="unknown unit 'y'"):
        parse_duration("1y")
    with pytest.raises(ValueError, match="cannot read the duration"):
        parse_duration("soon")


def _backdate(url: str, days: float = 2) -> None:
    """Make every row of the store look ``days`` old (the age prune goes by)."""
    past = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(schema.heads.update().values(updated_at=past.timestamp()))
            conn.execute(threads_table.update().values(updated_at=past))
            conn.execute(runs_table.update().values(updated_at=past))
    finally:
        engine.dispose()


def _rows(url: str) -> dict[str, set[str]]:
    """The thread ids found in each moa_* table keyed by thread, and the run ids of events;
    the run ids and the threads' event keys that exist."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            names = [n for n in sa.inspect(conn).get_table_names() if n.startswith("moa_")]
            found: dict[str, set[str]] = {}
            for name in names:
                columns = {c["name"] for c in sa.inspect(conn).get_columns(name)}
                key = "thread_id" if "thread_id" in columns else "run_id"
                if key in columns:
                    query = sa.text(f"SELECT DISTINCT {key} FROM {name}")
                    found[name] = {r[0] for r in conn.execute(query)}
            query = sa.text(f"SELECT run_id FROM {runs_table.name}")
            found["run ids"] = {r[0] for r in conn.execute(query)}
            t = threads_table
            query = sa.select(t.c.thread_id, t.c.created_at)
            found["thread keys"] = {thread_event_key(*r) for r in conn.execute(query)}
            return found
    finally:
        engine.dispose()


def _assert_no_orphans(url: str, threads: set[str]) -> None:
    rows = _rows(url)
    for name, ids in rows.items():
        if name not in (events.name, "run ids", "thread keys"):
            assert ids <= threads, f"{name} keeps rows of deleted threads {ids - threads}"
    alive = rows["run ids"] | rows["thread keys"]
    assert rows[events.name] <= alive, "events of deleted runs or threads"
    assert rows[threads_table.name] == threads


async def _registry_thread(url: str, thread_id: str, status: str) -> None:
    """A thread with a run in ``status``, a checkpoint and logged events (of the run, and
    of the thread itself: a ``state_update``)."""
    async with RunRegistry.from_url(url) as registry, EventLog.from_url(url) as log:
        await registry.setup()
        thread = await registry.create_thread(thread_id)
        key = thread_event_key(thread_id, thread.created_at)
        await log.append(key, "state_update", {"state": {}, "thread_id": thread_id})
        run = await registry.create_run(thread_id, owner=Owner.new())
        await registry.update_run(run.run_id, status=status)  # type: ignore[arg-type]
        await log.append(run.run_id, "values", {"step": 1})
        await log.append(run.run_id, "end", None)
    with SQLAlchemySaver.from_url(url) as saver:
        cfg = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        saver.put(cfg, empty_checkpoint(), {"step": 1}, {})  # type: ignore[arg-type]


def _prune(url: str, *extra: str) -> dict[str, Any]:
    out = moa("prune", "--db", url, "--older-than", "1d", "--json", *extra).stdout
    return dict(json.loads(out))


@pytest.mark.slow
def test_prune_removes_whole_threads_and_spares_live_ones(
    db_url: str, model_server: ModelServer, tmp_path: Path
) -> None:
    srv = model_server
    plain = write_spec(tmp_path / "plain.json", durable_spec(srv))
    spec = durable_spec(srv)
    spec["layers"][0]["interrupt_before_synthesis"] = True  # waits for approval of layer 1
    paused = write_spec(tmp_path / "paused.json", spec)
    moa("run", "Plan a trip", "-s", str(plain), "--db", db_url, "-t", "done")
    out = moa("run", "Plan a trip", "-s", str(paused), "--db", db_url, "-t", "paused", "--json")
    assert json.loads(out.stdout)["status"] == "interrupted"
    asyncio.run(_registry_thread(db_url, "running", "running"))
    asyncio.run(_registry_thread(db_url, "finished", "success"))
    _backdate(db_url)
    moa("run", "Plan a trip", "-s", str(plain), "--db", db_url, "-t", "fresh")
    before = _rows(db_url)
    assert {"done", "paused", "running", "finished", "fresh"} <= before[schema.heads.name]

    report = _prune(db_url)
    assert report["threads_deleted"] == 2  # done, finished: idle for 2 days and over
    assert report["skipped"] == ["paused", "running"]
    assert report["runs_deleted"] == 2 and report["events_deleted"] >= 2
    _assert_no_orphans(db_url, {"paused", "running", "fresh"})

    # the paused thread kept everything it needs: it can be approved and finish
    done = json.loads(moa("resume", "paused", "--db", db_url, "--approve", "--json").stdout)
    assert done["status"] == "success" and done["answer"].startswith("synth answer")

    moa("run", "Plan a trip", "-s", str(paused), "--db", db_url, "-t", "paused2")
    _backdate(db_url)
    assert _prune(db_url)["skipped"] == ["paused2", "running"]
    report = _prune(db_url, "--force")
    assert report["threads_deleted"] == 2 and report["skipped"] == []
    _assert_no_orphans(db_url, set())


def test_bare_number_is_refused_on_the_command_line(sqlite_url: str) -> None:
    proc = moa("prune", "--db", sqlite_url, "--older-than", "0.5", check=False)
    assert proc.returncode == 1
    assert "'0.5' has no unit" in proc.stderr and "d (days)" in proc.stderr


def _eval_calls(url: str) -> dict[str, int]:
    """Rows of the call ledger per run id."""
    from langgraph_moa.persistence.calls import calls

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(calls.c.run_id, sa.func.count()).group_by(calls.c.run_id)
            return {run: n for run, n in conn.execute(query)}
    finally:
        engine.dispose()


def test_prune_eval_deletes_old_evaluation_calls_only(
    db_url: str, model_server: ModelServer, tmp_path: Path
) -> None:
    from langgraph_moa.persistence.calls import calls

    srv = model_server
    spec = write_spec(tmp_path / "plain.json", durable_spec(srv))
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"id": "a", "input": "6 x 8?", "reference": "48"}\n')

    def evaluate(name: str) -> str:
        out = tmp_path / f"{name}.json"
        moa("eval", str(dataset), "-s", str(spec), "--db", db_url, "--name", name,
            "--no-baselines", "--quiet", "--json", str(out))  # fmt: skip
        return str(json.loads(out.read_text())["calls"]["run_id"])

    old, new = evaluate("old"), evaluate("new")
    moa("run", "Plan a trip", "-s", str(spec), "--db", db_url, "-t", "eval-mine")
    before = _eval_calls(db_url)
    (mine,) = set(before) - {old, new}
    assert old.startswith("eval-") and before[old] == before[new] == before[mine] > 0
    before_mine = before[mine]
    past = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:  # the old evaluation and the stored thread's calls
            conn.execute(calls.update().where(calls.c.run_id != new).values(created_at=past))
            # the stored thread's run id looks like an evaluation's too: only the thread
            # being stored keeps its calls
            conn.execute(calls.update().where(calls.c.run_id == mine).values(run_id="eval-x"))
    finally:
        engine.dispose()

    assert _prune(db_url)["eval_calls_deleted"] == 0  # not asked: every call stays
    stored = {r: n for r, n in before.items() if r != mine} | {"eval-x": before_mine}
    assert _eval_calls(db_url) == stored
    report = _prune(db_url, "--eval")
    assert report["eval_calls_deleted"] == before[old] and report["threads_deleted"] == 0
    assert _eval_calls(db_url) == {new: before[new], "eval-x": before_mine}

    proc = moa("prune", "--db", db_url, "--eval", check=False)
    assert proc.returncode == 1 and "--eval deletes the evaluation calls" in proc.stderr
