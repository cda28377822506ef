"""LangGraph checkpointers on SQLAlchemy: SQLite, PostgreSQL, MySQL/MariaDB, sync and async.

``SQLAlchemySaver`` takes a sync ``Engine``, ``AsyncSQLAlchemySaver`` an ``AsyncEngine``;
both implement every method of ``BaseCheckpointSaver`` in both flavours (the async
methods of the sync saver run in a worker thread; the sync methods of the async saver
use a sync engine of their own on the same database).

Storage (see :mod:`.schema`): a checkpoint row holds the checkpoint document with the
small channel values inline; larger values are written once per (thread, namespace,
channel, version) to the blobs table, so a channel that did not change is not written
again. ``get_tuple`` is one indexed query, plus one primary-key lookup of blobs when
the checkpoint has large values.

Fencing: ``put`` moves the thread/namespace head from the parent to the new checkpoint
in the same transaction; if another writer moved it first, the put fails with
:class:`CheckpointConflictError` instead of silently forking the chain. LangGraph's own
forks (``update_state``, time travel: metadata ``source`` ``"update"``/``"fork"``, or
``configurable["moa_fork"] = True``) move the head unconditionally.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from sqlalchemy import (
    Connection,
    Engine,
    Float,
    and_,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, StaticPool
from sqlalchemy.util import await_only, greenlet_spawn

from langgraph_moa.persistence._sql import BUCKETS, Prepared, Statements, bucket
from langgraph_moa.persistence.errors import (
    CheckpointConflictError,
    DatabaseUnavailableError,
    PersistenceError,
    SchemaVersionError,
)
from langgraph_moa.persistence.schema import (
    CHANNEL_MAX,
    ID_MAX,
    MIGRATIONS,
    SCHEMA_VERSION,
    THREAD_ID_MAX,
    blobs,
    checkpoints,
    heads,
    migrations,
    writes,
)
from langgraph_moa.persistence.serde import AllowlistEntry, make_serde
from langgraph_moa.persistence.urls import (
    create_async_engine,
    create_engine,
    install_sqlite_events,
    is_sqlite_memory,
    redact,
    sync_url,
)

__all__ = ["FORK_CONFIG_KEY", "INLINE_MAX_BYTES", "AsyncSQLAlchemySaver", "SQLAlchemySaver"]

T = TypeVar("T")

FORK_CONFIG_KEY = "moa_fork"
"""``configurable`` flag of a run that forks a thread on purpose from an older checkpoint."""

INLINE_MAX_BYTES = 256
"""Channel values up to this size (serialized) are stored inside the checkpoint row."""

_BLOBS_KEY = "__moa_blobs__"  # document key: the channels whose values are in the blobs table
_FORK_SOURCES = frozenset({"fork", "update"})
_REPLAY_KEY = "__pregel_replay_state"  # langgraph replays a subgraph from an older checkpoint
_LIST_CHUNK = 100
_PG_ONE_STATEMENT_MAX = 32  # rows written by one statement on PostgreSQL
_ADMIN_BATCH = 500
_RETRIES = 6
_CACHE_MAX = 20_000
_MIGRATION_LOCK = "moa_checkpoint_migrations"
_PG_LOCK_ID = 0x6D6F615F636B7074 & 0x7FFFFFFFFFFFFFFF  # "moa_ckpt"
_SQLITE_FILE_LOCKS: dict[str, threading.Lock] = {}


class _Torn(Exception):
    """A read saw a checkpoint but not all of its blobs (deleted meanwhile)."""


class _PutPlan(NamedTuple):
    """Everything ``put`` writes, serialized before the transaction starts."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None
    mode: str  # "root" (no parent), "fenced" or "fork"
    blob_rows: list[dict[str, Any]]
    checkpoint_row: dict[str, Any]
    cache: list[tuple[tuple[str, str, str, str], bool]]
    now: float


def _small(value: Any) -> bool:
    """Whether ``value`` is inlined without serializing it first to measure it."""
    kind = type(value)
    if value is None or kind is int or kind is float or kind is bool:
        return True
    return (kind is str or kind is bytes) and len(value) <= INLINE_MAX_BYTES // 4


_json_decode = json.JSONDecoder().decode


def _load_json(value: Any) -> dict[str, Any]:
    if type(value) is str:
        return cast(dict[str, Any], _json_decode(value))
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode()
    return cast(dict[str, Any], json.loads(value))


def _retryable(exc: BaseException) -> bool:
    """Deadlocks, serialization failures and busy SQLite files are worth a retry."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in (1205, 1213):
        return True
    text = str(orig)
    return "database is locked" in text or "database table is locked" in text


class _SaverBase(BaseCheckpointSaver[str]):
    """The storage logic, in sync code over the sync face of an engine.

    Subclasses decide how that code runs: directly (sync), in a worker thread, or in
    SQLAlchemy's greenlet bridge over an async engine.
    """

    def __init__(
        self,
        sync_engine: Engine,
        *,
        serde: SerializerProtocol | None = None,
        serde_allowlist: Iterable[AllowlistEntry] = (),
        encrypt: bool | str | bytes = False,
        fencing: bool = True,
        auto_setup: bool = True,
    ) -> None:
        allowlist = list(serde_allowlist)
        if serde is not None and (allowlist or encrypt is not False):
            raise ValueError(
                "pass either serde= or serde_allowlist=/encrypt=, not both "
                "(use saver.with_allowlist(...) to widen a custom serde)"
            )
        super().__init__(serde=serde or make_serde(allowlist, encrypt=encrypt))
        self._sync_engine = sync_engine
        self.fencing = fencing
        self.auto_setup = auto_setup
        self.backend = (
            "mysql" if sync_engine.dialect.name == "mariadb" else sync_engine.dialect.name
        )
        if self.backend not in ("sqlite", "postgresql", "mysql"):
            raise PersistenceError(
                f"unsupported database {sync_engine.dialect.name!r} ({redact(sync_engine.url)}); "
                "use SQLite, PostgreSQL, MySQL or MariaDB"
            )
        if self.backend == "sqlite":
            install_sqlite_events(sync_engine)
        self._memory = self.backend == "sqlite" and (
            is_sqlite_memory(sync_engine.url) or isinstance(sync_engine.pool, StaticPool)
        )
        self._stmts: Statements | None = None
        self._ready = False
        self._begin_sql = "BEGIN IMMEDIATE" if self.backend == "sqlite" else "BEGIN"
        self._snapshot_sql = {
            "sqlite": "BEGIN",
            "postgresql": "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "mysql": "START TRANSACTION WITH CONSISTENT SNAPSHOT",
        }[self.backend]
        self._cached: PoolProxiedConnection | None = None
        self._cached_cursor: Any = None
        self._cached_lock = threading.Lock()
        self._closing = False
        self._cache: OrderedDict[tuple[str, str, str, str], bool] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    @property
    def _s(self) -> Statements:
        stmts = self._stmts
        if stmts is None:
            raise PersistenceError("the saver is not set up yet")  # _ensure_ready first
        return stmts

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        orig = getattr(exc, "orig", None) or exc
        url = redact(self._sync_engine.url)
        if self.backend == "sqlite":
            hint = "check that the directory of the SQLite file exists and is writable"
        else:
            hint = (
                "check that the server is running and that host, port, database name, "
                "user and password in the URL are right"
            )
        return DatabaseUnavailableError(f"cannot connect to {url}: {orig}; {hint}")

    def _open(self) -> PoolProxiedConnection:
        """A pooled DBAPI connection in autocommit mode (transactions begin explicitly)."""
        try:
            raw = self._sync_engine.raw_connection()
        except (DBAPIError, OSError) as exc:
            raise self._unavailable(exc) from exc
        self._set_autocommit(raw, True)
        return raw

    def _set_autocommit(self, raw: PoolProxiedConnection, on: bool) -> None:
        dbc: Any = raw.dbapi_connection
        if self.backend == "postgresql":
            dbc.autocommit = on
        elif self.backend == "mysql":
            dbc.autocommit(on)

    def _release(self, raw: PoolProxiedConnection) -> None:
        if raw.is_valid:
            try:
                self._set_autocommit(raw, False)
            except Exception:
                raw.invalidate()
        raw.close()

    @contextmanager
    def _checkout(self) -> Iterator[PoolProxiedConnection]:
        """The saver's own connection if free, else one from the pool.

        The saver keeps one connection checked out between operations, which saves the
        pool's checkout and reset on every call; concurrent callers use the pool.
        """
        if self._cached_lock.acquire(blocking=False):
            try:
                raw = self._cached
                if raw is None or not raw.is_valid:
                    raw = self._cached = self._open()
                    self._cached_cursor = raw.cursor()
                yield raw
            finally:
                if self._closing and self._cached is not None:
                    raw, self._cached = self._cached, None
                    self._cached_cursor = None
                    self._release(raw)
                self._cached_lock.release()
        else:
            raw = self._open()
            try:
                yield raw
            finally:
                self._release(raw)

    def _close_cached(self) -> None:
        """Give the saver's connection back to the pool (now, or when its user is done)."""
        self._closing = True
        if self._cached_lock.acquire(blocking=False):
            try:
                raw, self._cached = self._cached, None
                self._cached_cursor = None
                if raw is not None:
                    self._release(raw)
            finally:
                self._cached_lock.release()

    def _sa_connect(self) -> Connection:
        """A SQLAlchemy connection; a clear error if the database cannot be reached."""
        try:
            return self._sync_engine.connect()
        except (DBAPIError, OSError) as exc:
            raise self._unavailable(exc) from exc

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A SQLAlchemy connection in a transaction."""
        with self._sa_connect() as conn, conn.begin():
            yield conn

    def _abort(self, raw: PoolProxiedConnection, exc: BaseException, cur: Any) -> bool:
        """Roll back after ``exc``; whether the connection was lost (then dropped)."""
        lost = False
        try:
            lost = bool(
                self._sync_engine.dialect.is_disconnect(exc, raw.dbapi_connection, cur)  # type: ignore[arg-type]
            )
        except Exception:
            lost = False
        if not lost:
            try:
                raw.rollback()
                return False
            except Exception:
                lost = True
        raw.invalidate()
        return True

    def _attempt(
        self, fn: Callable[..., T], args: tuple[Any, ...], *, begin: str | None, read: bool
    ) -> T:
        """Run ``fn(cursor, *args)``, retrying lock conflicts and a lost connection.

        Retrying a write is safe: ``put`` and ``put_writes`` are idempotent. The saver's
        own connection and cursor are reused when free (the common, uncontended case).
        """
        if not self._ready:
            self._ensure_ready()
        lock = self._cached_lock
        attempt = 0
        while True:
            mine = lock.acquire(blocking=False)
            raw: PoolProxiedConnection | None = None
            cur: Any = None
            try:
                if mine:
                    raw = self._cached
                    if raw is None or not raw.is_valid:
                        raw = self._cached = self._open()
                        self._cached_cursor = raw.cursor()
                    cur = self._cached_cursor
                else:
                    raw = self._open()
                    cur = raw.cursor()
                try:
                    if begin:
                        cur.execute(begin)
                    result = fn(cur, *args)
                    if begin or not read:
                        raw.commit()
                    return result
                except BaseException as exc:
                    lost = self._abort(raw, exc, cur)
                    if lost and mine:
                        self._cached = self._cached_cursor = None
                    attempt += 1
                    if attempt >= _RETRIES or not (lost or _retryable(exc)):
                        if lost and isinstance(exc, DBAPIError | OSError):
                            raise self._unavailable(exc) from exc
                        raise
            finally:
                if not mine:
                    if cur is not None:
                        with suppress(Exception):  # a cursor of a dead connection may not close
                            cur.close()
                    if raw is not None:
                        self._release(raw)
                else:
                    if self._closing and self._cached is not None:
                        self._release(self._cached)
                        self._cached = self._cached_cursor = None
                    lock.release()
            self._sleep(0.02 * attempt * (1 + random.random()))

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)`` in one write transaction."""
        return self._attempt(fn, args, begin=self._begin_sql, read=False)

    def _write_one(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)``, which executes one statement (atomic by itself)."""
        if self.backend == "postgresql":
            return self._attempt(fn, args, begin=None, read=True)
        return self._write(fn, *args)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)``, which only reads (outside a transaction except on
        MySQL, whose snapshot ends with a rollback)."""
        return self._attempt(fn, args, begin=None, read=True)

    def _read_snapshot(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)`` in a read transaction (one snapshot)."""
        return self._attempt(fn, args, begin=self._snapshot_sql, read=True)

    def _admin(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` in one SQLAlchemy transaction, retrying lock conflicts."""
        self._ensure_ready()
        attempt = 0
        while True:
            try:
                with self._connection() as conn:
                    return fn(conn)
            except DBAPIError as exc:
                attempt += 1
                if attempt >= _RETRIES or not _retryable(exc):
                    raise
            self._sleep(0.02 * attempt * (1 + random.random()))

    @staticmethod
    def _run(cur: Any, p: Prepared, values: dict[str, Any]) -> Any:
        cur.execute(p.sql, p.args(values))
        return cur

    # -- schema ----------------------------------------------------------------------

    def _schema_version(self, conn: Connection) -> int | None:
        if not inspect(conn).has_table(migrations.name):
            return None
        return int(conn.execute(select(func.max(migrations.c.v))).scalar() or 0)

    def _too_new(self, found: int) -> SchemaVersionError:
        return SchemaVersionError(
            f"the checkpoint store at {redact(self._sync_engine.url)} has schema version "
            f"{found}, newer than version {SCHEMA_VERSION} that this langgraph-moa understands; "
            "upgrade langgraph-moa (pip install -U langgraph-moa) or use another database",
            found=found,
            supported=SCHEMA_VERSION,
        )

    def _migrate(self, conn: Connection) -> None:
        migrations.create(conn, checkfirst=True)
        found = int(conn.execute(select(func.max(migrations.c.v))).scalar() or 0)
        if found > SCHEMA_VERSION:
            raise self._too_new(found)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute(insert(migrations).values(v=version))

    def _setup_sync(self) -> None:
        """Create or upgrade the tables, holding a database-wide lock."""
        if self.backend == "mysql":
            with self._sa_connect() as conn:
                got = conn.exec_driver_sql(f"SELECT GET_LOCK('{_MIGRATION_LOCK}', 120)").scalar()
                if got != 1:
                    raise PersistenceError(
                        "timed out after 120 s waiting for another process to finish "
                        "migrating the checkpoint tables; retry setup()"
                    )
                try:
                    self._migrate(conn)
                    conn.commit()
                finally:
                    conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{_MIGRATION_LOCK}')")
                    conn.commit()
        else:
            with self._connection() as conn:
                if self.backend == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_ID})")
                self._migrate(conn)
        self._stmts = None
        self._ready = False

    def _check_ready(self) -> None:
        """Check the schema version once; set up or migrate if allowed."""
        with self._sa_connect() as conn:
            found = self._schema_version(conn)
        if found is not None and found > SCHEMA_VERSION:
            raise self._too_new(found)
        if found != SCHEMA_VERSION:
            if not self.auto_setup:
                raise SchemaVersionError(
                    f"the checkpoint tables at {redact(self._sync_engine.url)} are "
                    + ("missing" if found is None else f"at schema version {found}")
                    + f"; call saver.setup() to bring them to version {SCHEMA_VERSION}",
                    found=found,
                    supported=SCHEMA_VERSION,
                )
            self._setup_sync()
        self._stmts = Statements(self._sync_engine.dialect)
        self._ready = True

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._check_ready()

    # -- serialization ---------------------------------------------------------------

    def _cache_get(self, key: tuple[str, str, str, str]) -> bool | None:
        return self._cache.get(key)

    def _cache_put(self, entries: list[tuple[tuple[str, str, str, str], bool]]) -> None:
        if not entries:
            return
        with self._cache_lock:
            cache = self._cache
            for key, inline in entries:
                cache[key] = inline
            while len(cache) > _CACHE_MAX:
                cache.popitem(last=False)

    @staticmethod
    def _check_keys(thread_id: str, checkpoint_ns: str) -> None:
        if len(thread_id) > THREAD_ID_MAX:
            raise ValueError(
                f"thread_id is {len(thread_id)} characters long; the limit is {THREAD_ID_MAX}: "
                "use a shorter id (e.g. a uuid or a hash of the long one)"
            )
        if len(checkpoint_ns) > THREAD_ID_MAX:
            raise ValueError(
                f"checkpoint_ns {checkpoint_ns[:60]!r}... is longer than {THREAD_ID_MAX} "
                "characters (the subgraphs are nested too deeply to store)"
            )

    def _plan_put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> _PutPlan:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns") or ""
        parent_id = conf.get("checkpoint_id") or None
        self._check_keys(thread_id, ns)
        values = checkpoint["channel_values"]
        inline: dict[str, Any] = {}
        blob_channels: list[str] = []
        blob_rows: list[dict[str, Any]] = []
        cache: list[tuple[tuple[str, str, str, str], bool]] = []
        for channel, version in checkpoint["channel_versions"].items():
            if channel not in values:
                continue  # empty channel: nothing to store
            value = values[channel]
            if _small(value):
                inline[channel] = value
                continue
            if len(channel) > CHANNEL_MAX:
                raise ValueError(f"channel name {channel[:60]!r}... exceeds {CHANNEL_MAX} chars")
            key = (thread_id, ns, channel, str(version))
            known = None if channel in new_versions else self._cache_get(key)
            if known is True:
                inline[channel] = value
            elif known is False:
                blob_channels.append(channel)
            else:
                type_, data = self.serde.dumps_typed(value)
                if len(data) <= INLINE_MAX_BYTES and not isinstance(value, _DeltaSnapshot):
                    inline[channel] = value
                    cache.append((key, True))
                else:
                    blob_channels.append(channel)
                    cache.append((key, False))
                    blob_rows.append(
                        {
                            "thread_id": thread_id,
                            "checkpoint_ns": ns,
                            "channel": channel,
                            "version": key[3],
                            "type": type_,
                            "blob": data,
                        }
                    )
        doc: dict[str, Any] = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        doc["channel_values"] = inline
        if blob_channels:
            doc[_BLOBS_KEY] = blob_channels
        type_, data = self.serde.dumps_typed(doc)
        md = get_serializable_checkpoint_metadata(config, metadata)
        fork = (
            not self.fencing
            or md.get("source") in _FORK_SOURCES
            or bool(conf.get(FORK_CONFIG_KEY))
            or _REPLAY_KEY in conf
        )
        return _PutPlan(
            thread_id=thread_id,
            checkpoint_ns=ns,
            checkpoint_id=checkpoint["id"],
            parent_id=parent_id,
            mode="root" if parent_id is None else "fork" if fork else "fenced",
            blob_rows=blob_rows,
            checkpoint_row={
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
                "parent_checkpoint_id": parent_id,
                "type": type_,
                "checkpoint": data,
                "metadata": json.dumps(md, ensure_ascii=False, default=str),
            },
            cache=cache,
            now=time.time(),
        )

    def _decode(self, type_: str, data: bytes) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """A stored checkpoint document and the (channel, version) of its blob values."""
        doc = self.serde.loads_typed((type_, data))
        blob_channels = doc.pop(_BLOBS_KEY, None)
        if not blob_channels:
            return doc, []
        versions = doc["channel_versions"]
        return doc, [(ch, str(versions[ch])) for ch in blob_channels if ch in versions]

    def _load_writes(self, rows: Sequence[Sequence[Any]]) -> list[PendingWrite]:
        """Pending writes from (task_id, task_path, idx, channel, type, blob) rows."""
        if not rows:
            return []
        ordered = sorted(rows, key=lambda r: writes_sort_key(r[1] or "", r[0], r[2]))
        return [(r[0], r[3], self.serde.loads_typed((r[4], r[5]))) for r in ordered]

    def _tuple(
        self,
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        parent_id: str | None,
        doc: dict[str, Any],
        metadata: Any,
        blob_values: dict[tuple[str, str], tuple[str, bytes | None]],
        blob_pairs: list[tuple[str, str]],
        write_rows: list[Sequence[Any]],
    ) -> CheckpointTuple:
        if blob_pairs:
            values = doc["channel_values"]
            for pair in blob_pairs:
                found = blob_values.get(pair)
                if found is not None and found[0] != "empty":
                    values[pair[0]] = self.serde.loads_typed((found[0], found[1] or b""))
        parent = (
            {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": parent_id,
                }
            }
            if parent_id
            else None
        )
        return CheckpointTuple(
            {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                }
            },
            doc,  # type: ignore[arg-type]
            _load_json(metadata),  # type: ignore[arg-type]
            parent,  # type: ignore[arg-type]
            self._load_writes(write_rows),
        )

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

    # -- put / put_writes / get_tuple / list ------------------------------------------

    def _put_tx(self, cur: Any, plan: _PutPlan) -> None:
        s = self._s
        values = {
            "t": plan.thread_id,
            "ns": plan.checkpoint_ns,
            "new": plan.checkpoint_id,
            "parent": plan.parent_id,
            "now": plan.now,
        }
        if plan.mode == "fenced":
            if self._run(cur, s.head_cas, values).rowcount != 1:
                self._resolve_conflict(cur, plan, values)
        else:
            head_row = {
                "thread_id": plan.thread_id,
                "checkpoint_ns": plan.checkpoint_ns,
                "checkpoint_id": plan.checkpoint_id,
                "updated_at": plan.now,
            }
            if self._run(cur, s.head_insert, head_row).rowcount != 1:
                self._run(cur, s.head_set if plan.mode == "fork" else s.head_advance, values)
        if plan.blob_rows:
            p = s.blob_insert
            if len(plan.blob_rows) == 1:
                cur.execute(p.sql, p.args(plan.blob_rows[0]))
            else:
                cur.executemany(p.sql, [p.args(r) for r in plan.blob_rows])
        self._run(cur, s.checkpoint_upsert, plan.checkpoint_row)

    def _put_pg_tx(self, cur: Any, plan: _PutPlan) -> bool:
        """``put`` in one statement; False if the head was not at the parent."""
        values: dict[str, Any] = {
            "t": plan.thread_id,
            "ns": plan.checkpoint_ns,
            "new": plan.checkpoint_id,
            "parent": plan.parent_id,
            "now": plan.now,
            "type": plan.checkpoint_row["type"],
            "checkpoint": plan.checkpoint_row["checkpoint"],
            "metadata": plan.checkpoint_row["metadata"],
        }
        for i, row in enumerate(plan.blob_rows):
            values[f"bc{i}"] = row["channel"]
            values[f"bv{i}"] = row["version"]
            values[f"bt{i}"] = row["type"]
            values[f"bb{i}"] = row["blob"]
        p = self._s.pg_put(plan.mode, len(plan.blob_rows))
        return self._run(cur, p, values).fetchone() is not None

    def _resolve_conflict(self, cur: Any, plan: _PutPlan, values: dict[str, Any]) -> None:
        s = self._s
        row = self._run(cur, s.head_get, values).fetchone()
        if row is None:
            head_row = {
                "thread_id": plan.thread_id,
                "checkpoint_ns": plan.checkpoint_ns,
                "checkpoint_id": plan.checkpoint_id,
                "updated_at": plan.now,
            }
            if self._run(cur, s.head_insert, head_row).rowcount == 1:
                return  # the namespace had no head (older store, or deleted meanwhile)
            row = self._run(cur, s.head_get, values).fetchone()
        latest = row[0] if row else None
        if latest == plan.checkpoint_id:
            return  # the same checkpoint again: an idempotent retry
        raise CheckpointConflictError(
            thread_id=plan.thread_id,
            checkpoint_ns=plan.checkpoint_ns,
            parent_id=cast(str, plan.parent_id),
            latest_id=latest,
        )

    def _put_sync(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        plan = self._plan_put(config, checkpoint, metadata, new_versions)
        if not (
            self.backend == "postgresql"
            and len(plan.blob_rows) <= _PG_ONE_STATEMENT_MAX
            and self._write_one(self._put_pg_tx, plan)
        ):
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
        if self.backend == "postgresql" and len(rows) <= _PG_ONE_STATEMENT_MAX:

            def one(cur: Any) -> None:
                p = self._s.multi_insert(len(rows), upsert)
                values = {f"{k}{i}": v for i, row in enumerate(rows) for k, v in row.items()}
                cur.execute(p.sql, p.args(values))

            self._write_one(one)
            return

        def tx(cur: Any) -> None:
            p = self._s.writes_upsert if upsert else self._s.writes_insert
            if len(rows) == 1:
                cur.execute(p.sql, p.args(rows[0]))
            else:
                cur.executemany(p.sql, [p.args(r) for r in rows])

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
            raise _Torn  # read while a prune or delete removed its blobs: read again
        return self._tuple(
            thread_id, ns, ck_row[1], ck_row[2], doc, ck_row[5], blob_values, pairs, write_rows
        )

    def _get_tuple_sync(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        args = (str(conf["thread_id"]), conf.get("checkpoint_ns") or "", get_checkpoint_id(config))
        try:
            return self._read(self._get_tuple_tx, *args)
        except _Torn:
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
        return rows, self._load_chunk_tx(cur, rows[:_LIST_CHUNK])

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
        for start in range(_LIST_CHUNK, len(rows), _LIST_CHUNK):
            yield from self._read(self._load_chunk_tx, rows[start : start + _LIST_CHUNK])

    # -- thread management -------------------------------------------------------------

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
                        cols.append(literal(now, Float()).label(c.name))
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

    # -- versions --------------------------------------------------------------------

    def get_next_version(self, current: str | None, channel: None) -> str:
        """``<counter:012>.<random:012x>``: string-ordered, unique per fork, 25 characters."""
        if current is None:
            n = 0
        elif isinstance(current, int | float):
            n = int(current)
        else:
            n = int(str(current).split(".", 1)[0])
        return f"{n + 1:012d}.{random.getrandbits(48):012x}"


class SQLAlchemySaver(_SaverBase):
    """Checkpointer over a sync SQLAlchemy ``Engine`` (SQLite, PostgreSQL, MySQL/MariaDB).

    Args:
        engine: the engine; see :func:`~langgraph_moa.persistence.urls.create_engine`
            for one set up for several writing processes, or use :meth:`from_url`.
        serde: a serializer of your own (default: LangGraph's msgpack serde, strict).
        serde_allowlist: classes (or ``(module, name)`` tuples) that deserialize as
            themselves: pydantic models, dataclasses, enums of your state.
        encrypt: ``True`` to AES-encrypt stored values with ``$LANGGRAPH_AES_KEY``, or a key.
        fencing: reject a ``put`` whose parent is no longer the latest checkpoint.
        auto_setup: create/migrate the tables on first use (else call :meth:`setup`).

    The async methods run the sync ones in a worker thread.
    """

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        if isinstance(engine, AsyncEngine):
            raise TypeError("SQLAlchemySaver takes a sync Engine; use AsyncSQLAlchemySaver")
        super().__init__(engine, **kwargs)
        self.engine = engine
        self._lock: threading.Lock | None = None
        if self._memory:
            self._lock = threading.Lock()  # one shared connection: one operation at a time
        elif self.backend == "sqlite":
            path = str(engine.url.database)
            self._lock = _SQLITE_FILE_LOCKS.setdefault(path, threading.Lock())
        self._setup_lock = threading.Lock()

    @classmethod
    @contextmanager
    def from_url(
        cls,
        url: str,
        *,
        serde: SerializerProtocol | None = None,
        serde_allowlist: Iterable[AllowlistEntry] = (),
        encrypt: bool | str | bytes = False,
        fencing: bool = True,
        auto_setup: bool = True,
        **engine_kwargs: Any,
    ) -> Iterator[SQLAlchemySaver]:
        """A saver on a new engine for ``url`` (any driver spelling); disposes it on exit."""
        engine = create_engine(url, **engine_kwargs)
        saver = None
        try:
            saver = cls(
                engine,
                serde=serde,
                serde_allowlist=serde_allowlist,
                encrypt=encrypt,
                fencing=fencing,
                auto_setup=auto_setup,
            )
            yield saver
        finally:
            if saver is not None:
                saver.close()
            engine.dispose()

    def _ensure_ready(self) -> None:
        if not self._ready:
            with self._setup_lock:
                if not self._ready:
                    self._check_ready()

    def _attempt(
        self, fn: Callable[..., T], args: tuple[Any, ...], *, begin: str | None, read: bool
    ) -> T:
        # SQLite: writers of this process queue on a lock (cheaper than busy-waiting in
        # SQLite); an in-memory database has one connection, so everything queues.
        if self._lock is None or (read and not self._memory):
            return super()._attempt(fn, args, begin=begin, read=read)
        with self._lock:
            return super()._attempt(fn, args, begin=begin, read=read)

    def close(self) -> None:
        """Return the saver's connection to the pool (``from_url`` does this on exit;
        ``with SQLAlchemySaver(engine) as saver:`` too). The engine stays open."""
        self._close_cached()

    def __enter__(self) -> SQLAlchemySaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _admin(self, fn: Callable[[Connection], T]) -> T:
        if self._lock is None:
            return super()._admin(fn)
        self._ensure_ready()
        with self._lock:
            return super()._admin(fn)

    def setup(self) -> None:
        """Create the tables or migrate them to this version; idempotent, safe to run
        from several processes at once."""
        with self._setup_lock:
            self._setup_sync()
            self._check_ready()

    # sync API

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint of ``config`` (its ``checkpoint_id``, else the latest)."""
        return self._get_tuple_sync(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints matching the arguments, newest first."""
        return self._list_sync(config, filter=filter, before=before, limit=limit)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint; see the module docs for fencing."""
        return self._put_sync(config, checkpoint, metadata, new_versions)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store the pending writes of a task."""
        self._put_writes_sync(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, blob and write of a thread."""
        self._delete_thread_sync(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints whose metadata ``run_id`` is in ``run_ids``."""
        self._delete_for_runs_sync(run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread (every namespace, checkpoint, blob and write) to a new id."""
        self._copy_thread_sync(source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep the latest checkpoint of each namespace; ``delete``: all."""
        self._prune_sync(thread_ids, strategy=strategy)

    def prune_to_last(self, thread_ids: Sequence[str] | None = None, *, keep: int) -> int:
        """Keep the newest ``keep`` checkpoints per namespace of the threads (of every
        thread if ``None``, skipping threads that use a ``DeltaChannel``); returns how many
        checkpoints were deleted."""
        return self._prune_to_last_sync(thread_ids, keep)

    def delete_older_than(self, age: timedelta) -> int:
        """Delete the threads with no checkpoint written in ``age``; returns their number."""
        return self._delete_older_than_sync(age)

    # async API: the sync methods in a worker thread

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self._get_tuple_sync, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = await asyncio.to_thread(
            lambda: list(self._list_sync(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self._put_sync, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self._put_writes_sync, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self._delete_thread_sync, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self._delete_for_runs_sync, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self._copy_thread_sync, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self._prune_sync, thread_ids, strategy=strategy)


class AsyncSQLAlchemySaver(_SaverBase):
    """Checkpointer over an ``AsyncEngine`` (aiosqlite, psycopg async, aiomysql).

    Same arguments as :class:`SQLAlchemySaver`. The sync methods (used by
    ``graph.invoke``/``get_state``) run on a sync engine of the same database, made on
    first use; they block, so call them from a thread other than the event loop's.
    """

    def __init__(self, engine: AsyncEngine, **kwargs: Any) -> None:
        if not isinstance(engine, AsyncEngine):
            raise TypeError("AsyncSQLAlchemySaver takes an AsyncEngine; use SQLAlchemySaver")
        super().__init__(engine.sync_engine, **kwargs)
        self.engine = engine
        self._kwargs = kwargs
        self._alock: asyncio.Lock | None = None
        self._setup_alock: asyncio.Lock | None = None
        self._twin: SQLAlchemySaver | None = None
        self._twins: list[SQLAlchemySaver] = []
        self._twin_lock = threading.Lock()

    @classmethod
    @asynccontextmanager
    async def from_url(
        cls,
        url: str,
        *,
        serde: SerializerProtocol | None = None,
        serde_allowlist: Iterable[AllowlistEntry] = (),
        encrypt: bool | str | bytes = False,
        fencing: bool = True,
        auto_setup: bool = True,
        **engine_kwargs: Any,
    ) -> AsyncIterator[AsyncSQLAlchemySaver]:
        """A saver on a new async engine for ``url``, given with a sync or async driver
        (``sqlite:///f``, ``postgresql://...``, ``mysql://...``); disposes it on exit."""
        engine = create_async_engine(url, **engine_kwargs)
        saver = cls(
            engine,
            serde=serde,
            serde_allowlist=serde_allowlist,
            encrypt=encrypt,
            fencing=fencing,
            auto_setup=auto_setup,
        )
        try:
            yield saver
        finally:
            await saver.aclose()
            await engine.dispose()

    def _sleep(self, seconds: float) -> None:
        await_only(asyncio.sleep(seconds))

    def _attempt(
        self, fn: Callable[..., T], args: tuple[Any, ...], *, begin: str | None, read: bool
    ) -> T:
        # aiosqlite runs each call of the driver on its own thread; running the whole
        # operation there as one call saves a thread hop per statement (several per put).
        if self.backend != "sqlite" or not hasattr(self._aiosqlite_conn_cls(), "_execute"):
            return super()._attempt(fn, args, begin=begin, read=read)
        self._ensure_ready()
        with self._checkout() as raw:
            drv: Any = raw.driver_connection
            return cast(
                T, await_only(drv._execute(self._in_sqlite_thread, drv, fn, args, begin, read))
            )

    @staticmethod
    def _aiosqlite_conn_cls() -> type:
        import aiosqlite

        return aiosqlite.Connection

    @staticmethod
    def _in_sqlite_thread(
        drv: Any, fn: Callable[..., T], args: tuple[Any, ...], begin: str | None, read: bool
    ) -> T:
        conn: sqlite3.Connection = drv._conn
        attempt = 0
        while True:
            cur = conn.cursor()
            try:
                if begin:
                    cur.execute(begin)
                result = fn(cur, *args)
                if conn.in_transaction:
                    conn.commit()
                return result
            except BaseException as exc:
                if conn.in_transaction:
                    conn.rollback()
                attempt += 1
                if attempt >= _RETRIES or not _retryable(exc):
                    raise
            finally:
                cur.close()
            time.sleep(0.02 * attempt * (1 + random.random()))

    async def __aenter__(self) -> AsyncSQLAlchemySaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Return the saver's connection to the pool and dispose of the sync engine made
        for the sync methods (``from_url`` does this on exit)."""
        await greenlet_spawn(self._close_cached)
        while self._twins:  # shared with clones made by with_allowlist
            twin = self._twins.pop()
            twin.close()
            twin.engine.dispose()
        self._twin = None

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run the sync storage logic over the async engine."""
        if not self._ready:
            if self._setup_alock is None:
                self._setup_alock = asyncio.Lock()
            async with self._setup_alock:
                if not self._ready:
                    await greenlet_spawn(self._check_ready)
        if self._memory:
            if self._alock is None:
                self._alock = asyncio.Lock()
            async with self._alock:
                return await greenlet_spawn(fn, *args, **kwargs)
        return await greenlet_spawn(fn, *args, **kwargs)

    async def setup(self) -> None:
        """Create the tables or migrate them to this version; idempotent, safe to run
        from several processes at once."""
        if self._setup_alock is None:
            self._setup_alock = asyncio.Lock()
        async with self._setup_alock:
            await greenlet_spawn(self._setup_sync)
            await greenlet_spawn(self._check_ready)

    # async API

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._call(self._get_tuple_sync, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        await self._call(self._ensure_ready)
        args = self._list_args(config, filter, before, limit)
        if args is None:
            return
        rows, first = await self._call(self._read, self._list_first_tx, *args)
        for item in first:
            yield item
        for start in range(_LIST_CHUNK, len(rows), _LIST_CHUNK):
            chunk = await self._call(
                self._read, self._load_chunk_tx, rows[start : start + _LIST_CHUNK]
            )
            for item in chunk:
                yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._call(self._put_sync, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._call(self._put_writes_sync, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._call(self._delete_thread_sync, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._call(self._delete_for_runs_sync, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._call(self._copy_thread_sync, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._call(self._prune_sync, thread_ids, strategy=strategy)

    async def aprune_to_last(self, thread_ids: Sequence[str] | None = None, *, keep: int) -> int:
        """Async :meth:`SQLAlchemySaver.prune_to_last`."""
        return await self._call(self._prune_to_last_sync, thread_ids, keep)

    async def adelete_older_than(self, age: timedelta) -> int:
        """Async :meth:`SQLAlchemySaver.delete_older_than`."""
        return await self._call(self._delete_older_than_sync, age)

    def with_allowlist(self, extra_allowlist: Any) -> AsyncSQLAlchemySaver:
        """A shallow clone whose serde also deserializes ``extra_allowlist``."""
        clone = cast(AsyncSQLAlchemySaver, super().with_allowlist(extra_allowlist))
        if clone is not self:
            clone._twin = None  # the sync methods need a twin with the new serde
            clone._twin_lock = threading.Lock()
        return clone

    # sync API, on a sync engine of the same database

    def _sync_twin(self) -> SQLAlchemySaver:
        if self._twin is None:
            with self._twin_lock:
                if self._twin is None:
                    if self._memory:
                        raise PersistenceError(
                            "an in-memory SQLite database cannot be shared with a second "
                            "engine: use the async methods (ainvoke, aget_state) or a file URL"
                        )
                    twin = SQLAlchemySaver(
                        create_engine(sync_url(self.engine.url)),
                        serde=self.serde,
                        fencing=self.fencing,
                        auto_setup=self.auto_setup,
                    )
                    self._twin = twin
                    self._twins.append(twin)
        return self._twin

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync_twin().get_tuple(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        return self._sync_twin().list(config, filter=filter, before=before, limit=limit)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync_twin().put(config, checkpoint, metadata, new_versions)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._sync_twin().put_writes(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self._sync_twin().delete_thread(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync_twin().delete_for_runs(run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync_twin().copy_thread(source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync_twin().prune(thread_ids, strategy=strategy)
