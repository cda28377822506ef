"""Statements of the checkpointer, built with SQLAlchemy Core and compiled once per dialect.

The hot paths (put, put_writes, get_tuple, list) run these compiled statements on the
pooled DBAPI connection directly: SQLAlchemy renders the SQL of each dialect (upserts,
JSON, collations), and skipping its per-call execution machinery makes an operation
several times cheaper (measured in bench/checkpointer.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import cached_property
from typing import Any, NamedTuple

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Integer,
    LargeBinary,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert

from langgraph_moa.persistence.schema import blobs, checkpoints, heads, lease_threads, writes

__all__ = ["Prepared", "Statements"]

_FILTER_KEY = re.compile(r"^[a-zA-Z0-9_.-]+$")

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Arity buckets of IN lists, so a handful of compiled statements serve every size."""


def bucket(n: int) -> int:
    """The smallest bucket holding ``n`` items (``n`` must be <= the largest)."""
    for b in BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"{n} items exceed the largest IN-list bucket {BUCKETS[-1]}")


class Prepared(NamedTuple):
    """SQL compiled for one dialect, with the order of its parameters if positional."""

    sql: str
    names: tuple[str, ...] | None
    fixed: dict[str, Any]  # parameters SQLAlchemy added itself (e.g. SQLite's OFFSET 0)

    def args(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        """The DBAPI parameters of ``values`` (a mapping of bind name to value)."""
        if self.fixed:
            values = {**self.fixed, **values}
        if self.names is None:
            return values
        return tuple([values[n] for n in self.names])


def _prepare(stmt: Any, dialect: Dialect) -> Prepared:
    compiled: Any = stmt.compile(dialect=dialect)
    fixed = {
        key: value
        for key, value in compiled.params.items()
        if key.startswith("param_") and value is not None
    }
    if compiled.positional:
        return Prepared(compiled.string, tuple(compiled.positiontup or ()), fixed)
    return Prepared(compiled.string, None, fixed)


def _b(name: str, type_: Any = None) -> Any:
    return bindparam(name, type_=type_ or String())


class Statements:
    """The statements of one dialect, compiled on first use and cached."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.backend = "mysql" if dialect.name in ("mysql", "mariadb") else dialect.name
        self._cache: dict[Hashable, Prepared] = {}

    def get(self, key: Hashable, build: Callable[[], ClauseElement]) -> Prepared:
        """The compiled statement ``key``, built by ``build`` the first time."""
        prepared = self._cache.get(key)
        if prepared is None:
            prepared = self._cache[key] = _prepare(build(), self.dialect)
        return prepared

    # -- dialect helpers -------------------------------------------------------------

    def insert_ignore(self, table: Any) -> Insert:
        """INSERT that skips rows whose primary key exists."""
        if self.backend == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        if self.backend == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        return mysql.insert(table).prefix_with("IGNORE")

    def upsert(self, table: Any, update_cols: Sequence[str]) -> Insert:
        """INSERT that overwrites ``update_cols`` of a row whose primary key exists."""
        if self.backend in ("postgresql", "sqlite"):
            mod = postgresql if self.backend == "postgresql" else sqlite
            ins = mod.insert(table)
            return ins.on_conflict_do_update(
                index_elements=[c.name for c in table.primary_key.columns],
                set_={c: ins.excluded[c] for c in update_cols},
            )
        mins = mysql.insert(table)
        return mins.on_duplicate_key_update({c: mins.inserted[c] for c in update_cols})

    # -- heads -----------------------------------------------------------------------

    def _head_where(self) -> Any:
        return and_(heads.c.thread_id == _b("t"), heads.c.checkpoint_ns == _b("ns"))

    @cached_property
    def head_advance(self) -> Prepared:
        """Move the head to ``new`` if that is a later id."""
        return self.get(
            "head_advance",
            lambda: (
                update(heads)
                .where(self._head_where(), heads.c.checkpoint_id < _b("new"))
                .values(checkpoint_id=_b("new"), updated_at=_b("now", heads.c.updated_at.type))
            ),
        )

    @cached_property
    def head_insert(self) -> Prepared:
        """Create the head row (skipped if one exists)."""
        return self.get("head_insert", lambda: self.insert_ignore(heads))

    @cached_property
    def mysql_head_upsert(self) -> Prepared:
        """MySQL: create the head row, or move it to its ``checkpoint_id`` if that is a
        later id, in one statement (:attr:`head_insert` then :attr:`head_advance`). The
        assignments run in order, so ``updated_at`` still compares the old id."""

        def build() -> Any:
            ins = mysql.insert(heads)
            later = heads.c.checkpoint_id < ins.inserted.checkpoint_id
            return ins.on_duplicate_key_update(
                [
                    (
                        "updated_at",
                        case((later, ins.inserted.updated_at), else_=heads.c.updated_at),
                    ),
                    (
                        "checkpoint_id",
                        case((later, ins.inserted.checkpoint_id), else_=heads.c.checkpoint_id),
                    ),
                ]
            )

        return self.get("mysql_head_upsert", build)

    @cached_property
    def head_get(self) -> Prepared:
        return self.get("head_get", lambda: select(heads.c.checkpoint_id).where(self._head_where()))

    # -- thread lease (moa_threads, owned by the run registry) ----------------------------

    @cached_property
    def lease_get(self) -> Prepared:
        """The lease token of thread ``t``, row-locked on PostgreSQL/MySQL (SQLite's
        write transaction already excludes the registry)."""

        def build() -> Any:
            q = select(lease_threads.c.lease_token).where(lease_threads.c.thread_id == _b("t"))
            return q if self.backend == "sqlite" else q.with_for_update()

        return self.get("lease_get", build)

    def _lease_held(self, src: Any) -> Any:
        """MySQL: ``src`` (a SELECT) joined to thread ``t``'s ``moa_threads`` row if its
        lease token is ``lease``, that row locked until the transaction ends: no rows if
        the lease is someone else's. An INSERT from it checks the lease in the same round
        trip (its affected-row count is 0 if the lease did not hold). The token is
        compared as bytes: the column's collation would equate ``"tok"``, ``"TOK"`` and
        ``"tok "``, which the other databases (and :meth:`lease_get`'s check) tell apart."""
        t = lease_threads
        token = cast(t.c.lease_token, mysql.BINARY())
        return (
            src.select_from(t)
            .where(t.c.thread_id == _b("t"), token == _b("lease"))
            .with_for_update()
        )

    @cached_property
    def mysql_head_upsert_leased(self) -> Prepared:
        """MySQL: :attr:`mysql_head_upsert` if thread ``t``'s lease token is ``lease``
        (see :meth:`_lease_held`); no row affected if not. Binds t, ns, new, now, lease."""

        def build() -> Any:
            now = _b("now", heads.c.updated_at.type)
            src = self._lease_held(select(_b("t"), _b("ns"), _b("new"), now))
            ins = mysql.insert(heads).from_select(
                ["thread_id", "checkpoint_ns", "checkpoint_id", "updated_at"], src
            )
            later = heads.c.checkpoint_id < _b("new")
            return ins.on_duplicate_key_update(
                [  # in order: updated_at compares the old id
                    ("updated_at", case((later, now), else_=heads.c.updated_at)),
                    ("checkpoint_id", case((later, _b("new")), else_=heads.c.checkpoint_id)),
                ]
            )

        return self.get("mysql_head_upsert_leased", build)

    def mysql_put(self, n_blobs: int, lease: bool) -> Prepared:
        """MySQL: ``put`` but its COMMIT as one multi-statement request, ``BEGIN; <head
        upsert>; [<blobs>;] <checkpoint upsert>`` (two round trips with the COMMIT instead
        of four or five, one per statement). The connection needs
        ``CLIENT_MULTI_STATEMENTS`` (aiomysql always sets it; our PyMySQL engines too).
        Binds: the head's t, ns, new, now (and lease), the checkpoint row's columns, and
        bc/bv/bt/bb<i> per blob.

        With ``lease`` the head comes from :attr:`mysql_head_upsert_leased`, which locks
        thread ``t``'s ``moa_threads`` row until the transaction ends and affects no row
        if the lease is not ``lease``'s: the caller then rolls back instead of committing.
        The COMMIT stays a request of its own, so a put cancelled in flight (its
        connection dropped) is rolled back by the server, never committed."""
        key = ("mysql_put", n_blobs, lease)
        prepared = self._cache.get(key)
        if prepared is not None:
            return prepared
        parts = [self.mysql_head_upsert_leased if lease else self._mysql_head_values]
        if n_blobs:
            rows = [self._blob_binds(i) for i in range(n_blobs)]
            build = lambda: mysql.insert(blobs).prefix_with("IGNORE").values(rows)  # noqa: E731
            parts.append(self.get(("mysql_blobs", n_blobs), build))
        parts.append(self.checkpoint_upsert)
        names: list[str] = []
        fixed: dict[str, Any] = {}
        for part in parts:  # positional (aiomysql) or named (PyMySQL) parameters
            names.extend(part.names or ())
            fixed.update(part.fixed)
        sql = "; ".join(["BEGIN", *(part.sql for part in parts)])
        positional = parts[0].names is not None
        prepared = self._cache[key] = Prepared(sql, tuple(names) if positional else None, fixed)
        return prepared

    @cached_property
    def _mysql_head_values(self) -> Prepared:
        """:attr:`mysql_head_upsert` with the binds of :attr:`mysql_head_upsert_leased`."""

        def build() -> Any:
            ins = mysql.insert(heads).values(
                thread_id=_b("t"),
                checkpoint_ns=_b("ns"),
                checkpoint_id=_b("new"),
                updated_at=_b("now", heads.c.updated_at.type),
            )
            new, now = ins.inserted.checkpoint_id, ins.inserted.updated_at
            later = heads.c.checkpoint_id < new
            return ins.on_duplicate_key_update(
                [  # in order: updated_at compares the old id
                    ("updated_at", case((later, now), else_=heads.c.updated_at)),
                    ("checkpoint_id", case((later, new), else_=heads.c.checkpoint_id)),
                ]
            )

        return self.get("mysql_head_values", build)

    @staticmethod
    def _blob_binds(i: int) -> dict[str, Any]:
        return {
            "thread_id": _b("t"),
            "checkpoint_ns": _b("ns"),
            "channel": _b(f"bc{i}"),
            "version": _b(f"bv{i}"),
            "type": _b(f"bt{i}"),
            "blob": bindparam(f"bb{i}", type_=LargeBinary()),
        }

    def _lease_cte(self) -> Any:
        """PostgreSQL: one row if thread ``t``'s lease is ``lease`` (the row locked)."""
        t = lease_threads
        return (
            select(literal_column("1").label("held"))
            .select_from(t)
            .where(t.c.thread_id == _b("t"), t.c.lease_token == _b("lease"))
            .with_for_update()
            .cte("lease")
        )

    # -- put / put_writes ------------------------------------------------------------

    @cached_property
    def blob_insert(self) -> Prepared:
        return self.get("blob_insert", lambda: self.insert_ignore(blobs))

    @cached_property
    def checkpoint_upsert(self) -> Prepared:
        return self.get(
            "checkpoint_upsert",
            lambda: self.upsert(
                checkpoints, ["parent_checkpoint_id", "type", "checkpoint", "metadata"]
            ),
        )

    @cached_property
    def writes_insert(self) -> Prepared:
        return self.get("writes_insert", lambda: self.insert_ignore(writes))

    @cached_property
    def writes_upsert(self) -> Prepared:
        return self.get(
            "writes_upsert",
            lambda: self.upsert(writes, ["task_path", "channel", "type", "blob"]),
        )

    # -- get_tuple -------------------------------------------------------------------

    def _latest_id(self) -> ColumnElement[Any]:
        """The head of (t, ns), or its largest checkpoint id if it has no head row."""
        ck = checkpoints.alias("latest_ck")
        head = select(heads.c.checkpoint_id).where(self._head_where()).scalar_subquery()
        newest = (
            select(func.max(ck.c.checkpoint_id))
            .where(ck.c.thread_id == _b("t"), ck.c.checkpoint_ns == _b("ns"))
            .scalar_subquery()
        )
        return func.coalesce(head, newest)

    def _tuple_query(self, latest: bool) -> Any:
        ck, w = checkpoints, writes
        ck_id = self._latest_id() if latest else _b("cid")
        w_id = self._latest_id() if latest else _b("cid")
        q_ck = select(
            literal_column("0").label("kind"),
            ck.c.checkpoint_id,
            ck.c.parent_checkpoint_id,
            ck.c.type,
            ck.c.checkpoint.label("data"),
            ck.c.metadata,
            null().label("task_id"),
            null().label("task_path"),
            null().label("idx"),
            null().label("channel"),
        ).where(
            ck.c.thread_id == _b("t"), ck.c.checkpoint_ns == _b("ns"), ck.c.checkpoint_id == ck_id
        )
        q_w = select(
            literal_column("1"),
            w.c.checkpoint_id,
            null(),
            w.c.type,
            w.c.blob,
            null(),
            w.c.task_id,
            w.c.task_path,
            w.c.idx,
            w.c.channel,
        ).where(w.c.thread_id == _b("t"), w.c.checkpoint_ns == _b("ns"), w.c.checkpoint_id == w_id)
        return union_all(q_ck, q_w)

    @cached_property
    def get_latest(self) -> Prepared:
        """The latest checkpoint of (t, ns) and its writes (kind 0 and 1 rows)."""
        return self.get("get_latest", lambda: self._tuple_query(latest=True))

    @cached_property
    def get_by_id(self) -> Prepared:
        """Checkpoint ``cid`` of (t, ns) and its writes (kind 0 and 1 rows)."""
        return self.get("get_by_id", lambda: self._tuple_query(latest=False))

    def blobs_get(self, n: int) -> Prepared:
        """Blobs of (t, ns) for the pairs (c0, v0) .. (c{n-1}, v{n-1})."""
        n = bucket(n)

        def build() -> Any:
            pairs = [
                and_(blobs.c.channel == _b(f"c{i}"), blobs.c.version == _b(f"v{i}"))
                for i in range(n)
            ]
            return select(blobs.c.channel, blobs.c.version, blobs.c.type, blobs.c.blob).where(
                blobs.c.thread_id == _b("t"), blobs.c.checkpoint_ns == _b("ns"), or_(*pairs)
            )

        return self.get(("blobs_get", n), build)

    def writes_get(self, n: int) -> Prepared:
        """Writes of (t, ns) for the checkpoint ids id0 .. id{n-1}."""
        n = bucket(n)
        w = writes

        def build() -> Any:
            return select(
                w.c.checkpoint_id,
                w.c.task_id,
                w.c.task_path,
                w.c.idx,
                w.c.channel,
                w.c.type,
                w.c.blob,
            ).where(
                w.c.thread_id == _b("t"),
                w.c.checkpoint_ns == _b("ns"),
                w.c.checkpoint_id.in_([_b(f"id{i}") for i in range(n)]),
            )

        return self.get(("writes_get", n), build)

    # -- list ------------------------------------------------------------------------

    def list_query(
        self,
        *,
        thread: bool,
        ns: bool,
        cid: bool,
        before: bool,
        limit: bool,
        filter: Mapping[str, Any] | None,
    ) -> tuple[Prepared, dict[str, Any]]:
        """The statement listing checkpoints for this shape of arguments, and the values
        of its filter parameters."""
        ck = checkpoints
        values: dict[str, Any] = {}
        filter_key: Hashable = None
        parts: list[str] = []
        filter_clauses: list[Any] = []
        if filter:
            for name in filter:
                if not isinstance(name, str) or not _FILTER_KEY.match(name):
                    raise ValueError(
                        f"invalid metadata filter key {name!r}: use letters, digits, '_', '.' "
                        "and '-' only"
                    )
            if self.backend == "postgresql":
                filter_key = "contains"
                values["f"] = json.dumps(dict(filter), separators=(",", ":"))
                filter_clauses.append(ck.c.metadata.op("@>")(cast(_b("f"), postgresql.JSONB)))
            elif self.backend == "mysql":
                filter_key = "contains"
                values["f"] = json.dumps(dict(filter), separators=(",", ":"))
                filter_clauses.append(
                    func.json_contains(ck.c.metadata, _b("f")) == literal_column("1")
                )
            else:
                for i, (fkey, value) in enumerate(filter.items()):
                    values[f"fk{i}"] = f'$."{fkey}"'
                    extracted = func.json_extract(ck.c.metadata, _b(f"fk{i}"))
                    if value is None:
                        parts.append("null")
                        filter_clauses.append(extracted.is_(None))
                        continue
                    if isinstance(value, bool):
                        values[f"fv{i}"], kind = int(value), "int"
                    elif isinstance(value, int | float):
                        values[f"fv{i}"], kind = value, "num"
                    elif isinstance(value, str):
                        values[f"fv{i}"], kind = value, "str"
                    else:
                        values[f"fv{i}"] = json.dumps(value, separators=(",", ":"))
                        kind = "json"
                    parts.append(kind)
                    typ: Any = String() if kind in ("str", "json") else None
                    filter_clauses.append(extracted == bindparam(f"fv{i}", type_=typ))
                filter_key = tuple(parts)
        key = ("list", thread, ns, cid, before, limit, filter_key)

        def build() -> Any:
            q = select(
                ck.c.thread_id,
                ck.c.checkpoint_ns,
                ck.c.checkpoint_id,
                ck.c.parent_checkpoint_id,
                ck.c.type,
                ck.c.checkpoint,
                ck.c.metadata,
            )
            if thread:
                q = q.where(ck.c.thread_id == _b("t"))
            if ns:
                q = q.where(ck.c.checkpoint_ns == _b("ns"))
            if cid:
                q = q.where(ck.c.checkpoint_id == _b("cid"))
            if before:
                q = q.where(ck.c.checkpoint_id < _b("before"))
            for clause in filter_clauses:
                q = q.where(clause)
            q = q.order_by(ck.c.checkpoint_id.desc())
            if limit:
                q = q.limit(bindparam("limit", type_=Integer()))
            return q

        return self.get(key, build), values

    # -- PostgreSQL: one statement per write -------------------------------------------

    def pg_put(self, n_blobs: int, lease: bool) -> Prepared:
        """``put`` as one statement (data-modifying CTEs), atomic in autocommit mode.

        Creates or advances the head and inserts the blobs and the checkpoint; returns
        one row. With ``lease``, does all of it only if thread ``t``'s lease token is
        ``lease`` (its ``moa_threads`` row locked meanwhile), and returns no row if not.
        One round trip instead of five (BEGIN, head, blobs, checkpoint, COMMIT).
        """

        def build() -> Any:
            pg = postgresql
            held = self._lease_cte() if lease else None

            def guarded(src: Any) -> Any:
                if held is None:
                    return src
                return src.where(select(literal_column("1")).select_from(held).exists())

            ins = pg.insert(heads).from_select(
                ["thread_id", "checkpoint_ns", "checkpoint_id", "updated_at"],
                guarded(select(_b("t"), _b("ns"), _b("new"), _b("now", heads.c.updated_at.type))),
            )
            head = (
                ins.on_conflict_do_update(
                    index_elements=["thread_id", "checkpoint_ns"],
                    set_={
                        "checkpoint_id": ins.excluded.checkpoint_id,
                        "updated_at": ins.excluded.updated_at,
                    },
                    where=heads.c.checkpoint_id < ins.excluded.checkpoint_id,
                )
                .returning(heads.c.checkpoint_id)
                .cte("head")
            )
            stmt: Any = select(literal_column("1"))
            if held is not None:
                stmt = stmt.select_from(held)
            if n_blobs:
                rows = union_all(
                    *[
                        select(
                            _b("t").label("thread_id"),
                            _b("ns").label("checkpoint_ns"),
                            _b(f"bc{i}").label("channel"),
                            _b(f"bv{i}").label("version"),
                            _b(f"bt{i}").label("type"),
                            bindparam(f"bb{i}", type_=LargeBinary()).label("blob"),
                        )
                        for i in range(n_blobs)
                    ]
                ).subquery("b")
                blob_cte = (
                    pg.insert(blobs)
                    .from_select([c.name for c in rows.c], guarded(select(*rows.c)))
                    .on_conflict_do_nothing()
                    .cte("blobs")
                )
                stmt = stmt.add_cte(blob_cte)
            ck_src = select(
                _b("t"),
                _b("ns"),
                _b("new"),
                _b("parent"),
                _b("type"),
                bindparam("checkpoint", type_=LargeBinary()),
                cast(_b("metadata"), postgresql.JSONB),
            )
            ck_ins = pg.insert(checkpoints).from_select(
                [
                    "thread_id",
                    "checkpoint_ns",
                    "checkpoint_id",
                    "parent_checkpoint_id",
                    "type",
                    "checkpoint",
                    "metadata",
                ],
                guarded(ck_src),
            )
            ck_cte = ck_ins.on_conflict_do_update(
                index_elements=["thread_id", "checkpoint_ns", "checkpoint_id"],
                set_={
                    c: ck_ins.excluded[c]
                    for c in ("parent_checkpoint_id", "type", "checkpoint", "metadata")
                },
            ).cte("ck")
            return stmt.add_cte(ck_cte).add_cte(head)

        return self.get(("pg_put", n_blobs, lease), build)

    def multi_insert(self, n: int, upsert: bool) -> Prepared:
        """``n`` pending writes in one INSERT statement (bind names ``<column><i>``)."""

        def build() -> Any:
            rows = [{c.name: _typed(f"{c.name}{i}", c) for c in writes.c} for i in range(n)]
            if upsert:
                return self.upsert(writes, ["task_path", "channel", "type", "blob"]).values(rows)
            return self.insert_ignore(writes).values(rows)

        return self.get(("writes_multi", n, upsert), build)

    def pg_writes_leased(self, n: int, upsert: bool) -> Prepared:
        """PostgreSQL: ``n`` pending writes in one statement, inserted only if thread
        ``t``'s lease token is ``lease`` (row locked); returns a row only then."""

        def build() -> Any:
            held = self._lease_cte()
            rows = union_all(
                *[
                    select(*[_typed(f"{c.name}{i}", c).label(c.name) for c in writes.c])
                    for i in range(n)
                ]
            ).subquery("w")
            src = select(*rows.c).where(select(literal_column("1")).select_from(held).exists())
            ins = postgresql.insert(writes).from_select([c.name for c in writes.c], src)
            cols = ("task_path", "channel", "type", "blob")
            done = (
                ins.on_conflict_do_update(
                    index_elements=[c.name for c in writes.primary_key.columns],
                    set_={c: ins.excluded[c] for c in cols},
                )
                if upsert
                else ins.on_conflict_do_nothing()
            )
            return select(literal_column("1")).select_from(held).add_cte(done.cte("ins"))

        return self.get(("writes_leased", n, upsert), build)

    def mysql_writes_leased(self, n: int, upsert: bool) -> Prepared:
        """MySQL: ``n`` pending writes in one statement (bind names ``<column><i>``, t,
        lease), inserted only if thread ``t``'s lease token is ``lease`` (see
        :meth:`_lease_held`). No row affected if not, and also if every row was there
        already (an INSERT IGNORE of rows written before)."""

        def build() -> Any:
            rows = union_all(
                *[
                    select(*[_typed(f"{c.name}{i}", c).label(c.name) for c in writes.c])
                    for i in range(n)
                ]
            ).subquery("w")
            src = self._lease_held(select(*rows.c))
            names = [c.name for c in writes.c]
            if upsert:
                ins = mysql.insert(writes).from_select(names, src)
                cols = ("task_path", "channel", "type", "blob")
                return ins.on_duplicate_key_update({c: rows.c[c] for c in cols})
            return mysql.insert(writes).prefix_with("IGNORE").from_select(names, src)

        return self.get(("mysql_writes_leased", n, upsert), build)


def _typed(name: str, column: Any) -> Any:
    if isinstance(column.type, Integer):
        return bindparam(name, type_=Integer())
    if column.name == "blob":
        return bindparam(name, type_=LargeBinary())
    return bindparam(name, type_=String())
