"""Thread management of the savers: delete_thread, copy_thread, prune, delete_for_runs,
and retention (``prune_to_last``, ``delete_older_than``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)

from langgraph_moa.persistence.saver._hot import HotPath
from langgraph_moa.persistence.schema import blobs, checkpoints, heads, writes

_ADMIN_BATCH = 500


class Admin(HotPath):
    """Management APIs (LangGraph's runtime never calls them)."""

    def _delete_threads(self, conn: Connection, thread_ids: Sequence[str]) -> None:
        for start in range(0, len(thread_ids), _ADMIN_BATCH):
            part = list(thread_ids[start : start + _ADMIN_BATCH])
            for table in (writes, blobs, checkpoints, heads):
                conn.execute(delete(table).where(table.c.thread_id.in_(part)))

    def _delete_thread_sync(self, thread_id: str) -> None:
        self._admin(lambda conn: self._delete_threads(conn, [str(thread_id)]))

    def _copy_thread_sync(self, source_thread_id: str, target_thread_id: str) -> None:
        src, dst = str(source_thread_id), str(target_thread_id)
        self._check_keys(dst, "")
        if src == dst:
            raise ValueError(f"copy_thread: source and target are the same thread {src!r}")
        now = time.time()

        def tx(conn: Connection) -> None:
            taken = conn.execute(
                select(checkpoints.c.checkpoint_id).where(checkpoints.c.thread_id == dst).limit(1)
            ).first()
            if taken is not None:
                raise ValueError(
                    f"copy_thread: target thread {dst!r} already has checkpoints; "
                    "delete it first (delete_thread) or copy to a new thread id"
                )
            for table in (checkpoints, blobs, writes, heads):
                cols: list[Any] = []
                for c in table.c:
                    if c.name == "thread_id":
                        cols.append(literal(dst, c.type).label(c.name))
                    elif table is heads and c.name == "updated_at":
                        cols.append(literal(now, c.type).label(c.name))
                    else:
                        cols.append(c)
                conn.execute(
                    insert(table).from_select(
                        [c.name for c in table.c], select(*cols).where(table.c.thread_id == src)
                    )
                )

        self._admin(tx)

    def _refuse_delta(self, conn: Connection, thread_id: str) -> None:
        found = conn.execute(
            select(checkpoints.c.checkpoint_id)
            .where(
                checkpoints.c.thread_id == thread_id,
                checkpoints.c.metadata["counters_since_delta_snapshot"].as_string().is_not(None),
            )
            .limit(1)
        ).first()
        if found is not None:
            raise NotImplementedError(
                f"thread {thread_id!r} uses a DeltaChannel, whose latest value is rebuilt from "
                "older checkpoints; pruning it to its last checkpoints would lose state. "
                "Delete the whole thread instead (strategy='delete')."
            )

    def _gc_blobs(self, conn: Connection, thread_id: str, ns: str, kept_ids: Sequence[str]) -> int:
        """Delete the blobs of (thread, ns) that no kept checkpoint refers to."""
        existing = {
            (r[0], r[1])
            for r in conn.execute(
                select(blobs.c.channel, blobs.c.version).where(
                    blobs.c.thread_id == thread_id, blobs.c.checkpoint_ns == ns
                )
            )
        }
        if not existing:
            return 0
        referenced: set[tuple[str, str]] = set()
        for start in range(0, len(kept_ids), _ADMIN_BATCH):
            part = list(kept_ids[start : start + _ADMIN_BATCH])
            for type_, data in conn.execute(
                select(checkpoints.c.type, checkpoints.c.checkpoint).where(
                    checkpoints.c.thread_id == thread_id,
                    checkpoints.c.checkpoint_ns == ns,
                    checkpoints.c.checkpoint_id.in_(part),
                )
            ):
                referenced.update(self._decode(type_, data)[1])
        garbage = [{"c": c, "v": v} for c, v in existing - referenced]
        if garbage:
            conn.execute(
                delete(blobs).where(
                    blobs.c.thread_id == thread_id,
                    blobs.c.checkpoint_ns == ns,
                    blobs.c.channel == bindparam("c"),
                    blobs.c.version == bindparam("v"),
                ),
                garbage,
            )
        return len(garbage)

    def _delete_checkpoints(
        self,
        conn: Connection,
        thread_id: str,
        ns: str,
        doomed: Sequence[str],
        orphans: Sequence[str],
    ) -> None:
        """Delete checkpoints ``doomed`` and their writes; ``orphans`` lose their parent."""
        for start in range(0, len(doomed), _ADMIN_BATCH):
            part = list(doomed[start : start + _ADMIN_BATCH])
            for table in (writes, checkpoints):
                conn.execute(
                    delete(table).where(
                        table.c.thread_id == thread_id,
                        table.c.checkpoint_ns == ns,
                        table.c.checkpoint_id.in_(part),
                    )
                )
        for start in range(0, len(orphans), _ADMIN_BATCH):
            part = list(orphans[start : start + _ADMIN_BATCH])
            conn.execute(
                update(checkpoints)
                .where(
                    checkpoints.c.thread_id == thread_id,
                    checkpoints.c.checkpoint_ns == ns,
                    checkpoints.c.checkpoint_id.in_(part),
                )
                .values(parent_checkpoint_id=None)
            )

    def _keep_last_tx(self, conn: Connection, thread_id: str, keep: int) -> int:
        """Keep the newest ``keep`` checkpoints (and the head) of each namespace of a thread."""
        self._refuse_delta(conn, thread_id)
        head_of: dict[str, str] = dict(
            conn.execute(
                select(heads.c.checkpoint_ns, heads.c.checkpoint_id).where(
                    heads.c.thread_id == thread_id
                )
            ).all()
        )
        by_ns: dict[str, list[tuple[str, str | None]]] = {}
        for ns, cid, parent in conn.execute(
            select(
                checkpoints.c.checkpoint_ns,
                checkpoints.c.checkpoint_id,
                checkpoints.c.parent_checkpoint_id,
            )
            .where(checkpoints.c.thread_id == thread_id)
            .order_by(checkpoints.c.checkpoint_ns, checkpoints.c.checkpoint_id.desc())
        ):
            by_ns.setdefault(ns, []).append((cid, parent))
        deleted = 0
        for ns, rows in by_ns.items():
            kept = {cid for cid, _ in rows[:keep]}
            if head_of.get(ns):
                kept.add(head_of[ns])
            doomed = [cid for cid, _ in rows if cid not in kept]
            if not doomed:
                continue
            gone = set(doomed)
            orphans = [cid for cid, parent in rows if cid in kept and parent in gone]
            self._delete_checkpoints(conn, thread_id, ns, doomed, orphans)
            self._gc_blobs(conn, thread_id, ns, sorted(kept))
            deleted += len(doomed)
        return deleted

    def _prune_sync(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread ids, not a str")
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}; use 'keep_latest' or 'delete'")
        ids = [str(t) for t in thread_ids]
        if not ids:
            return
        if strategy == "delete":
            self._admin(lambda conn: self._delete_threads(conn, ids))
            return
        self._prune_to_last_sync(ids, keep=1)

    def _prune_to_last_sync(self, thread_ids: Sequence[str] | None, keep: int) -> int:
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least the latest checkpoint (keep >= 1)")
        every = thread_ids is None
        if thread_ids is None:
            thread_ids = self._admin(
                lambda conn: [r[0] for r in conn.execute(select(heads.c.thread_id).distinct())]
            )
        deleted = 0
        for thread_id in thread_ids:
            try:
                deleted += self._admin(
                    lambda conn, t=str(thread_id): self._keep_last_tx(conn, t, keep)  # type: ignore[misc]
                )
            except NotImplementedError:
                if not every:
                    raise
                # pruning every thread skips those using a DeltaChannel
        return deleted

    def _delete_older_than_sync(self, age: timedelta) -> int:
        if age.total_seconds() < 0:
            raise ValueError(f"older_than={age} is negative")
        cutoff = time.time() - age.total_seconds()
        stale = self._admin(
            lambda conn: [
                r[0]
                for r in conn.execute(
                    select(heads.c.thread_id)
                    .group_by(heads.c.thread_id)
                    .having(func.max(heads.c.updated_at) < cutoff)
                )
            ]
        )
        for start in range(0, len(stale), _ADMIN_BATCH):
            part = stale[start : start + _ADMIN_BATCH]
            self._admin(lambda conn, p=part: self._delete_threads(conn, p))  # type: ignore[misc]
        return len(stale)

    def _delete_for_runs_sync(self, run_ids: Sequence[str]) -> None:
        if isinstance(run_ids, str):
            raise TypeError("run_ids must be a sequence of run ids, not a str")
        ids = [str(r) for r in run_ids]
        if not ids:
            return

        def tx(conn: Connection) -> None:
            found: dict[tuple[str, str], set[str]] = {}
            for start in range(0, len(ids), _ADMIN_BATCH):
                part = ids[start : start + _ADMIN_BATCH]
                for thread_id, ns, cid in conn.execute(
                    select(
                        checkpoints.c.thread_id,
                        checkpoints.c.checkpoint_ns,
                        checkpoints.c.checkpoint_id,
                    ).where(checkpoints.c.metadata["run_id"].as_string().in_(part))
                ):
                    found.setdefault((thread_id, ns), set()).add(cid)
            for (thread_id, ns), gone in found.items():
                rest = conn.execute(
                    select(checkpoints.c.checkpoint_id, checkpoints.c.parent_checkpoint_id).where(
                        checkpoints.c.thread_id == thread_id, checkpoints.c.checkpoint_ns == ns
                    )
                ).all()
                kept = [cid for cid, _ in rest if cid not in gone]
                orphans = [cid for cid, parent in rest if cid not in gone and parent in gone]
                self._delete_checkpoints(conn, thread_id, ns, sorted(gone), orphans)
                self._gc_blobs(conn, thread_id, ns, kept)
                where = and_(heads.c.thread_id == thread_id, heads.c.checkpoint_ns == ns)
                if kept:
                    conn.execute(update(heads).where(where).values(checkpoint_id=max(kept)))
                else:
                    conn.execute(delete(heads).where(where))

        self._admin(tx)
