"""The hot path of the savers: put, put_writes, get_tuple, list (one transaction each)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
)
from sqlalchemy import inspect

from langgraph_moa.persistence._sql import BUCKETS, Prepared, bucket
from langgraph_moa.persistence.errors import CheckpointConflictError, PersistenceError
from langgraph_moa.persistence.saver._codec import LEASE_CONFIG_KEY, Codec, PutPlan, lease_token
from langgraph_moa.persistence.schema import ID_MAX, lease_threads
from langgraph_moa.persistence.urls import redact

LIST_CHUNK = 100
_PG_ONE_STATEMENT_MAX = 32  # rows written by one statement on PostgreSQL (and MySQL writes)
# MySQL: value bytes of the writes sent as one statement, and of a put's blobs, checkpoint
# and metadata sent as one request. PyMySQL sends values inline, escaping at most doubles
# them, and its executemany keeps a statement to 1,024,000 characters; more goes by
# separate statements so that no request outgrows max_allowed_packet.
_MYSQL_ONE_STATEMENT_BYTES = 512_000


class Torn(Exception):
    """A read saw a checkpoint but not all of its blobs (deleted meanwhile)."""


class HotPath(Codec):
    """The operations LangGraph calls while a graph runs."""

    def _fetch_blobs(
        self, cur: Any, thread_id: str, ns: str, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, bytes | None]]:
        unique = list(dict.fromkeys(pairs))
        out: dict[tuple[str, str], tuple[str, bytes | None]] = {}
        step = BUCKETS[-1]
        for start in range(0, len(unique), step):
            part = unique[start : start + step]
            n = bucket(len(part))
            part = part + [part[-1]] * (n - len(part))
            values: dict[str, Any] = {"t": thread_id, "ns": ns}
            for i, (channel, version) in enumerate(part):
                values[f"c{i}"] = channel
                values[f"v{i}"] = version
            for channel, version, type_, blob in self._run(
                cur, self._s.blobs_get(n), values
            ).fetchall():
                out[(channel, version)] = (type_, blob)
        return out

    def _check_lease(self, cur: Any, thread_id: str, checkpoint_ns: str, token: str) -> None:
        """Inside a write transaction: raise unless ``token`` holds the thread's lease.

        PostgreSQL/MySQL lock the ``moa_threads`` row until the transaction ends, so the
        lease cannot change hands between this check and the writes; on SQLite the
        transaction's write lock excludes the registry already.
        """
        row = self._run(cur, self._s.lease_get, {"t": thread_id}).fetchone()
        holder = row[0] if row else None
        if holder != token:
            raise CheckpointConflictError(
                thread_id=thread_id, checkpoint_ns=checkpoint_ns, token=token, holder=holder
            )

    def _lease_table_ready(self) -> None:
        """Before the first leased write: a clear error if ``moa_threads`` is missing."""
        if self._lease_checked:
            return
        with self._sa_connect() as conn:
            columns = (
                {c["name"] for c in inspect(conn).get_columns(lease_threads.name)}
                if inspect(conn).has_table(lease_threads.name)
                else set()
            )
        if "lease_token" not in columns:
            raise PersistenceError(
                f"a write carries a lease token (configurable[{LEASE_CONFIG_KEY!r}]) but "
                f"{redact(self._sync_engine.url)} has no moa_threads table with a "
                "lease_token column: set up the run registry (RunRegistry.setup()) on this "
                f"database, or drop {LEASE_CONFIG_KEY!r} from the config for unfenced writes"
            )
        self._lease_checked = True

    def _put_tx(self, cur: Any, plan: PutPlan) -> None:
        s = self._s
        head_row = {
            "thread_id": plan.thread_id,
            "checkpoint_ns": plan.checkpoint_ns,
            "checkpoint_id": plan.checkpoint_id,
            "updated_at": plan.now,
        }
        values = {
            "t": plan.thread_id,
            "ns": plan.checkpoint_ns,
            "new": plan.checkpoint_id,
            "now": plan.now,
            "lease": plan.lease,
        }
        if self.backend == "mysql":  # one round trip for the head (and the lease)
            if plan.lease is None:
                self._run(cur, s.mysql_head_upsert, head_row)
            elif not self._run(cur, s.mysql_head_upsert_leased, values).rowcount:
                # the lease did not hold: name its holder (or write, had it come back)
                self._check_lease(cur, plan.thread_id, plan.checkpoint_ns, plan.lease)
                self._run(cur, s.mysql_head_upsert, head_row)
        else:
            if plan.lease is not None:
                self._check_lease(cur, plan.thread_id, plan.checkpoint_ns, plan.lease)
            if self._run(cur, s.head_insert, head_row).rowcount != 1:
                self._run(cur, s.head_advance, values)
        if plan.blob_rows:
            p = s.blob_insert
            if len(plan.blob_rows) == 1:
                cur.execute(p.sql, p.args(plan.blob_rows[0]))
            else:
                cur.executemany(p.sql, [p.args(r) for r in plan.blob_rows])
        self._run(cur, s.checkpoint_upsert, plan.checkpoint_row)

    def _put_pg_tx(self, cur: Any, plan: PutPlan) -> bool:
        """``put`` in one statement; False if the writer's lease token did not hold."""
        values: dict[str, Any] = {
            "t": plan.thread_id,
            "ns": plan.checkpoint_ns,
            "new": plan.checkpoint_id,
            "parent": plan.parent_id,
            "now": plan.now,
            "type": plan.checkpoint_row["type"],
            "checkpoint": plan.checkpoint_row["checkpoint"],
            "metadata": plan.checkpoint_row["metadata"],
            "lease": plan.lease,
        }
        values.update(_blob_values(plan))
        p = self._s.pg_put(len(plan.blob_rows), plan.lease is not None)
        return self._run(cur, p, values).fetchone() is not None

    def _put_mysql_tx(self, cur: Any, plan: PutPlan) -> bool:
        """``put`` in one request before the COMMIT (:meth:`Statements.mysql_put`); False
        if the writer's lease token did not hold (rolled back: nothing written), or if
        the connection cannot send several statements at once (nothing sent)."""
        if not self._multi_statements:
            return False
        values: dict[str, Any] = {
            **plan.checkpoint_row,
            "t": plan.thread_id,
            "ns": plan.checkpoint_ns,
            "new": plan.checkpoint_id,
            "now": plan.now,
            "lease": plan.lease,
        }
        values.update(_blob_values(plan))
        p = self._s.mysql_put(len(plan.blob_rows), plan.lease is not None)
        cur.execute(p.sql, p.args(values))  # reads BEGIN's result
        cur.nextset()
        head = int(cur.rowcount)  # 0 only if the lease did not hold
        for _ in range(2 if plan.blob_rows else 1):  # [blobs,] checkpoint
            cur.nextset()  # reads its result; an error (nothing after it ran) raises here
        if head > 0 or plan.lease is None:
            return True  # committed by the caller
        cur.execute("ROLLBACK")
        return False

    def _put_sync(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        plan = self._plan_put(config, checkpoint, metadata, new_versions)
        if plan.lease is not None:
            self._lease_table_ready()
        # PostgreSQL: one statement, MySQL: one request and its COMMIT; if the lease did
        # not hold, the transaction below checks it again and names the holder (or
        # writes, had the lease come back)
        one = len(plan.blob_rows) <= _PG_ONE_STATEMENT_MAX and (
            (self.backend == "postgresql" and self._write_one(self._put_pg_tx, plan))
            or (
                self.backend == "mysql"
                and self._multi_statements is not False
                and _put_bytes(plan) <= _MYSQL_ONE_STATEMENT_BYTES
                and self._attempt(self._put_mysql_tx, (plan,), begin=None, read=False)
            )
        )
        if not one:
            self._write(self._put_tx, plan)
        self._cache_put(plan.cache)
        return {
            "configurable": {
                "thread_id": plan.thread_id,
                "checkpoint_ns": plan.checkpoint_ns,
                "checkpoint_id": plan.checkpoint_id,
            }
        }

    def _put_writes_sync(
        self,
        config: RunnableConfig,
        writes_: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        if not writes_:
            return
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns") or ""
        self._check_keys(thread_id, ns)
        if len(task_id) > ID_MAX:
            raise ValueError(f"task_id {task_id[:80]!r} is longer than {ID_MAX} characters")
        lease = lease_token(conf)
        if lease is not None:
            self._lease_table_ready()
        rows = []
        for idx, (channel, value) in enumerate(writes_):
            type_, data = self.serde.dumps_typed(value)
            rows.append(
                {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": conf["checkpoint_id"],
                    "task_id": task_id,
                    "idx": WRITES_IDX_MAP.get(channel, idx),
                    "task_path": task_path,
                    "channel": channel,
                    "type": type_,
                    "blob": data,
                }
            )
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes_)

        def tx(cur: Any) -> None:
            if lease is not None:
                self._check_lease(cur, thread_id, ns, lease)
            p = self._s.writes_upsert if upsert else self._s.writes_insert
            if len(rows) == 1:
                cur.execute(p.sql, p.args(rows[0]))
            else:
                cur.executemany(p.sql, [p.args(r) for r in rows])

        # one statement in autocommit mode (one round trip, not BEGIN/INSERT/COMMIT; a
        # fenced one checks the lease in it): any batch on PostgreSQL, one of at most
        # _MYSQL_ONE_STATEMENT_BYTES on MySQL. If the lease did not hold (or, MySQL, every
        # row was there already), the transaction below checks it and names the holder.
        if len(rows) <= _PG_ONE_STATEMENT_MAX and (
            self.backend == "postgresql"
            or (
                self.backend == "mysql"
                and sum(len(r["blob"]) for r in rows) <= _MYSQL_ONE_STATEMENT_BYTES
            )
        ):

            def one(cur: Any) -> bool:
                values = {f"{k}{i}": v for i, row in enumerate(rows) for k, v in row.items()}
                if lease is None:
                    p = self._s.multi_insert(len(rows), upsert)
                    cur.execute(p.sql, p.args(values))
                    return True
                values.update(t=thread_id, lease=lease)
                if self.backend == "mysql":
                    p = self._s.mysql_writes_leased(len(rows), upsert)
                    return bool(self._run(cur, p, values).rowcount)
                p = self._s.pg_writes_leased(len(rows), upsert)
                return self._run(cur, p, values).fetchone() is not None

            if self._write_one(one):
                return
        self._write(tx)

    def _get_tuple_tx(
        self, cur: Any, thread_id: str, ns: str, checkpoint_id: str | None, snapshot: bool = False
    ) -> CheckpointTuple | None:
        values = {"t": thread_id, "ns": ns, "cid": checkpoint_id}
        p = self._s.get_by_id if checkpoint_id else self._s.get_latest
        ck_row = None
        write_rows = []
        for row in self._run(cur, p, values).fetchall():
            if row[0] == 0:
                ck_row = row
            else:
                write_rows.append(row[6:10] + row[3:5])
        if ck_row is None:
            return None
        doc, pairs = self._decode(ck_row[3], ck_row[4])
        blob_values = self._fetch_blobs(cur, thread_id, ns, pairs) if pairs else {}
        if len(blob_values) < len(set(pairs)) and not snapshot:
            raise Torn  # read while a prune or delete removed its blobs: read again
        return self._tuple(
            thread_id, ns, ck_row[1], ck_row[2], doc, ck_row[5], blob_values, pairs, write_rows
        )

    def _get_tuple_sync(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        args = (str(conf["thread_id"]), conf.get("checkpoint_ns") or "", get_checkpoint_id(config))
        try:
            return self._read(self._get_tuple_tx, *args)
        except Torn:
            return self._read_snapshot(self._get_tuple_tx, *args, True)

    def _list_args(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> tuple[Prepared, dict[str, Any]] | None:
        conf = dict((config or {}).get("configurable") or {})
        before_id = get_checkpoint_id(before) if before else None
        if limit is not None and int(limit) <= 0:
            return None
        p, values = self._s.list_query(
            thread="thread_id" in conf,
            ns="checkpoint_ns" in conf,
            cid=bool(conf.get("checkpoint_id")),
            before=bool(before_id),
            limit=limit is not None,
            filter=filter,
        )
        values.update(
            t=str(conf.get("thread_id")),
            ns=conf.get("checkpoint_ns") or "",
            cid=conf.get("checkpoint_id"),
            before=before_id,
            limit=int(limit) if limit is not None else None,
        )
        return p, values

    def _list_first_tx(
        self, cur: Any, p: Prepared, values: dict[str, Any]
    ) -> tuple[list[Sequence[Any]], list[CheckpointTuple]]:
        rows = list(self._run(cur, p, values).fetchall())
        return rows, self._load_chunk_tx(cur, rows[:LIST_CHUNK])

    def _load_chunk_tx(self, cur: Any, rows: Sequence[Sequence[Any]]) -> list[CheckpointTuple]:
        """Tuples of list rows (thread, ns, id, parent, type, doc, metadata), with their
        writes and blobs fetched in one query each per (thread, namespace)."""
        decoded = []
        groups: dict[tuple[str, str], tuple[list[str], list[tuple[str, str]]]] = {}
        for row in rows:
            doc, pairs = self._decode(row[4], row[5])
            decoded.append((row, doc, pairs))
            ids, all_pairs = groups.setdefault((row[0], row[1]), ([], []))
            ids.append(row[2])
            all_pairs.extend(pairs)
        writes_by: dict[tuple[str, str, str], list[Sequence[Any]]] = {}
        blobs_by: dict[tuple[str, str], dict[tuple[str, str], tuple[str, bytes | None]]] = {}
        step = BUCKETS[-1]
        for (thread_id, ns), (ids, pairs) in groups.items():
            for start in range(0, len(ids), step):
                part = ids[start : start + step]
                n = bucket(len(part))
                values: dict[str, Any] = {"t": thread_id, "ns": ns}
                for i, cid in enumerate(part + [part[-1]] * (n - len(part))):
                    values[f"id{i}"] = cid
                for w in self._run(cur, self._s.writes_get(n), values).fetchall():
                    writes_by.setdefault((thread_id, ns, w[0]), []).append(w[1:])
            if pairs:
                blobs_by[(thread_id, ns)] = self._fetch_blobs(cur, thread_id, ns, pairs)
        return [
            self._tuple(
                row[0],
                row[1],
                row[2],
                row[3],
                doc,
                row[6],
                blobs_by.get((row[0], row[1]), {}),
                pairs,
                writes_by.get((row[0], row[1], row[2]), []),
            )
            for row, doc, pairs in decoded
        ]

    def _list_sync(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        self._ensure_ready()
        args = self._list_args(config, filter, before, limit)
        if args is None:
            return
        rows, first = self._read(self._list_first_tx, *args)
        yield from first
        for start in range(LIST_CHUNK, len(rows), LIST_CHUNK):
            yield from self._read(self._load_chunk_tx, rows[start : start + LIST_CHUNK])

    def get_next_version(self, current: str | None, channel: None) -> str:
        """``<counter:012>.<random:012x>``: string-ordered, unique per fork, 25 characters."""
        if current is None:
            n = 0
        elif isinstance(current, int | float):
            n = int(current)
        else:
            n = int(str(current).split(".", 1)[0])
        return f"{n + 1:012d}.{random.getrandbits(48):012x}"


def _put_bytes(plan: PutPlan) -> int:
    """Value bytes a put sends: its blobs, checkpoint document and metadata."""
    row = plan.checkpoint_row
    blobs = sum(len(r["blob"]) for r in plan.blob_rows)
    return blobs + len(row["checkpoint"]) + len(row["metadata"].encode())


def _blob_values(plan: PutPlan) -> dict[str, Any]:
    """The blob rows of a put as the numbered parameters of a one-statement put."""
    values: dict[str, Any] = {}
    for i, row in enumerate(plan.blob_rows):
        values[f"bc{i}"] = row["channel"]
        values[f"bv{i}"] = row["version"]
        values[f"bt{i}"] = row["type"]
        values[f"bb{i}"] = row["blob"]
    return values
