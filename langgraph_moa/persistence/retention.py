"""Retention across the whole store: ``moa prune``.

``older_than``: a thread idle that long (no checkpoint written, no change to the thread or
any of its runs) is deleted whole, in one transaction per thread: its checkpoints, blobs,
pending writes and head, its runs, their events, its model calls (``moa_calls``), and the
thread itself, so no row is left behind that points at it. Threads that may still go on are
skipped unless ``force``: paused ones (a run or the thread ``interrupted``) and those with a
``pending`` or ``running`` run. The checks are repeated inside each thread's transaction,
with the thread's rows locked, so a thread that wakes up meanwhile is kept.

``keep_last``: then keep only the newest ``keep_last`` checkpoints of each namespace of
every remaining thread (the latest always stays).

``eval_calls`` (with ``older_than``): also delete the model calls ``moa eval`` recorded
that long ago: rows of the call ledger whose run and thread ids start with ``eval-`` and
whose thread is no stored thread (no head, no registry row). They belong to no thread, so
the thread pruning above never reaches them; they are what ``moa eval --reuse`` answers
from, so they go only when asked. Evaluation results (``moa_eval_results``) stay.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from langgraph_moa.persistence import schema
from langgraph_moa.persistence.calls import calls
from langgraph_moa.persistence.engines import get_engine, release_engine
from langgraph_moa.persistence.events import events, thread_event_key
from langgraph_moa.persistence.registry import runs_table, threads_table
from langgraph_moa.persistence.saver import SQLAlchemySaver

__all__ = [
    "PruneReport",
    "parse_duration",
    "prune_command",
    "prune_eval_calls",
    "prune_threads",
]

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_KEEP_STATUSES = ("pending", "running", "interrupted")
_KEEP_THREAD_STATUSES = ("busy", "interrupted")
_CHECKPOINT_TABLES = (schema.writes, schema.blobs, schema.checkpoints, schema.heads)


def parse_duration(text: str | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"15m"``, ``"90s"``, ``"2w"``: a number and a unit (a bare
    number is refused: it is too easy to mean days and get seconds)."""
    if isinstance(text, timedelta):
        return text
    accepted = "s (seconds), m (minutes), h (hours), d (days), w (weeks), e.g. 30d or 12h"
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"cannot read the duration {text!r}: use a number and a unit: {accepted}")
    amount, unit = float(match.group(1)), match.group(2).lower()
    if not unit:
        raise ValueError(f"the duration {text!r} has no unit; add one of {accepted}")
    if unit not in UNITS:
        raise ValueError(f"the duration {text!r} has an unknown unit {unit!r}; use {accepted}")
    try:
        return timedelta(seconds=amount * UNITS[unit])
    except OverflowError:
        raise ValueError(
            f"the duration {text!r} is too long; at most {timedelta.max.days} days"
        ) from None


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_command` deleted, and the idle threads it kept."""

    threads_deleted: int
    checkpoints_deleted: int
    runs_deleted: int = 0
    events_deleted: int = 0
    skipped: list[str] = field(default_factory=list)
    eval_calls_deleted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune_command(
    db_url: str,
    keep_last: int | None = None,
    older_than: str | timedelta | None = None,
    *,
    force: bool = False,
    eval_calls: bool = False,
) -> PruneReport:
    """Apply retention to the store at ``db_url`` (see the module docs)."""
    if eval_calls and older_than is None:
        raise ValueError(
            "--eval deletes evaluation calls older than --older-than: give it (e.g. 30d; "
            "0s: all of them)"
        )
    if keep_last is None and older_than is None:
        raise ValueError(
            "nothing to do: give keep_last (--keep-last, e.g. 20) and/or older_than "
            "(--older-than, e.g. 30d)"
        )
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: keep at least the latest checkpoint (>= 1)")
    age = parse_duration(older_than) if older_than is not None else None
    if age is not None and age.total_seconds() < 0:
        raise ValueError(f"older_than={older_than!r} is negative")
    report = PruneReport(0, 0)
    with SQLAlchemySaver.from_url(db_url) as saver:
        saver.setup()
        if age is not None:
            report = prune_threads(saver.engine, age, force=force)
        if age is not None and eval_calls:
            removed = prune_eval_calls(saver.engine, age)
            report = PruneReport(**{**report.as_dict(), "eval_calls_deleted": removed})
        if keep_last is not None:
            trimmed = saver.prune_to_last(None, keep=keep_last)
            report = PruneReport(**{**report.as_dict(), "checkpoints_deleted": trimmed})
    return report


def prune_threads(engine: sa.Engine | str, age: timedelta, *, force: bool = False) -> PruneReport:
    """Delete every thread idle for ``age`` with all its rows (see the module docs)."""
    if isinstance(engine, str):
        shared = get_engine(engine)
        try:
            return prune_threads(shared, age, force=force)
        finally:
            release_engine(shared)
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
    store = _Store(present, time.time() - age.total_seconds(), force)
    with engine.connect() as conn:
        candidates = store.candidates(conn)
        conn.rollback()
    deleted, runs, evs, skipped = 0, 0, 0, []
    for thread_id in candidates:
        with engine.begin() as conn:
            outcome = store.delete(conn, thread_id)
        if outcome is None:
            skipped.append(thread_id)
        else:
            deleted += 1
            runs += outcome[0]
            evs += outcome[1]
    return PruneReport(deleted, 0, runs, evs, sorted(skipped))


def prune_eval_calls(engine: sa.Engine, age: timedelta) -> int:
    """Delete the call-ledger rows of ``moa eval`` recorded ``age`` ago or more (see the
    module docs); returns how many."""
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
    if calls.name not in present:
        return 0
    cutoff = datetime.now(UTC).replace(tzinfo=None) - age
    query = calls.delete().where(
        calls.c.run_id.startswith("eval-", autoescape=True),
        calls.c.thread_id.startswith("eval-", autoescape=True),
        calls.c.created_at < cutoff,
    )
    for table in (threads_table, schema.heads):  # a stored thread named eval-… keeps its calls
        if table.name in present:
            stored = sa.select(table.c.thread_id).where(table.c.thread_id == calls.c.thread_id)
            query = query.where(~stored.exists())
    with engine.begin() as conn:
        return int(conn.execute(query).rowcount)


class _Store:
    """Which of the store's tables exist, and the per-thread queries over them."""

    def __init__(self, present: set[str], cutoff: float, force: bool) -> None:
        self.heads = schema.heads.name in present
        self.registry = threads_table.name in present and runs_table.name in present
        self.events = events.name in present
        self.calls = calls.name in present
        self.checkpoint_tables = [t for t in _CHECKPOINT_TABLES if t.name in present]
        self.cutoff = cutoff
        self.cutoff_dt = datetime.fromtimestamp(cutoff, UTC).replace(tzinfo=None)
        self.force = force

    def candidates(self, conn: Connection) -> list[str]:
        """Threads whose checkpoints and registry rows are all older than the cutoff."""
        recent: set[str] = set()
        seen: set[str] = set()
        if self.heads:
            h = schema.heads
            query = sa.select(h.c.thread_id, sa.func.max(h.c.updated_at)).group_by(h.c.thread_id)
            for thread_id, updated in conn.execute(query):
                seen.add(thread_id)
                if updated >= self.cutoff:
                    recent.add(thread_id)
        if self.registry:
            t, r = threads_table, runs_table
            for thread_id, updated in conn.execute(sa.select(t.c.thread_id, t.c.updated_at)):
                seen.add(thread_id)
                if updated >= self.cutoff_dt:
                    recent.add(thread_id)
            query = (
                sa.select(r.c.thread_id)
                .where(r.c.updated_at >= self.cutoff_dt)
                .group_by(r.c.thread_id)
            )
            recent.update(row[0] for row in conn.execute(query))
        return sorted(seen - recent)

    def delete(self, conn: Connection, thread_id: str) -> tuple[int, int] | None:
        """In the caller's transaction: lock the thread, check it again, delete it whole;
        (runs, events) deleted, or None if it is kept."""
        if not self._still_idle(conn, thread_id):
            return None
        run_ids: list[str] = []
        if self.registry:
            r = runs_table
            run_ids = list(
                conn.execute(sa.select(r.c.run_id).where(r.c.thread_id == thread_id)).scalars()
            )
        evs = 0
        if self.events and run_ids:
            for start in range(0, len(run_ids), 500):
                part = run_ids[start : start + 500]
                evs += conn.execute(events.delete().where(events.c.run_id.in_(part))).rowcount
        if self.events and self.registry:  # the thread's own events (state_update)
            t = threads_table
            created = conn.scalar(sa.select(t.c.created_at).where(t.c.thread_id == thread_id))
            if created is not None:
                key = thread_event_key(thread_id, created)
                evs += conn.execute(events.delete().where(events.c.run_id == key)).rowcount
        if self.calls:
            conn.execute(calls.delete().where(calls.c.thread_id == thread_id))
        for table in self.checkpoint_tables:
            conn.execute(table.delete().where(table.c.thread_id == thread_id))
        if self.registry:
            conn.execute(runs_table.delete().where(runs_table.c.thread_id == thread_id))
            conn.execute(threads_table.delete().where(threads_table.c.thread_id == thread_id))
        return len(run_ids), evs

    def _still_idle(self, conn: Connection, thread_id: str) -> bool:
        lock = conn.dialect.name != "sqlite"  # SQLite: BEGIN IMMEDIATE holds the write lock
        if self.registry:
            t, r = threads_table, runs_table
            query = sa.select(t.c.status, t.c.updated_at).where(t.c.thread_id == thread_id)
            row = conn.execute(query.with_for_update() if lock else query).first()
            if row is not None:
                if row.updated_at >= self.cutoff_dt:
                    return False
                if not self.force and row.status in _KEEP_THREAD_STATUSES:
                    return False
            runs = sa.select(r.c.status, r.c.updated_at).where(r.c.thread_id == thread_id)
            for status, updated in conn.execute(runs.with_for_update() if lock else runs):
                if updated >= self.cutoff_dt:
                    return False
                if not self.force and status in _KEEP_STATUSES:
                    return False
        if self.heads:
            h = schema.heads
            times = sa.select(h.c.updated_at).where(h.c.thread_id == thread_id)
            for (stamp,) in conn.execute(times.with_for_update() if lock else times):
                if stamp >= self.cutoff:
                    return False
        return True
