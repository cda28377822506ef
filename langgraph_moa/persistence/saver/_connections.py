"""Connections and transactions of the savers: the pooled DBAPI connection, retries.

The hot path runs compiled statements (:mod:`.._sql`) on a raw DBAPI cursor inside one
explicit transaction per operation; lock conflicts, deadlocks, busy SQLite files and a
lost connection are retried (``put``/``put_writes`` are idempotent).
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection, StaticPool

from langgraph_moa.persistence._sql import Prepared, Statements
from langgraph_moa.persistence.engines import install_sqlite_events
from langgraph_moa.persistence.errors import DatabaseUnavailableError, PersistenceError
from langgraph_moa.persistence.serde import AllowlistEntry, make_serde
from langgraph_moa.persistence.urls import is_sqlite_memory, redact

T = TypeVar("T")

RETRIES = 6
CLIENT_MULTI_STATEMENTS = 1 << 16  # MySQL's capability flag (PyMySQL, aiomysql)


def retryable(exc: BaseException) -> bool:
    """Deadlocks, serialization failures and busy SQLite files are worth a retry."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in (1205, 1213):
        return True
    text = str(orig)
    return "database is locked" in text or "database table is locked" in text


class Slot:
    """The connection a saver keeps checked out between operations, with its cursor.

    One object shared by the saver and the shallow clones ``with_allowlist`` makes
    (``copy.copy`` copies the reference), so a clone never checks out a connection of
    its own that nobody would return: closing the saver returns the one connection.
    """

    __slots__ = ("closing", "cursor", "lock", "raw")

    def __init__(self) -> None:
        self.raw: PoolProxiedConnection | None = None
        self.cursor: Any = None
        self.lock = threading.Lock()
        self.closing = False


class Connections(BaseCheckpointSaver[str]):
    """The saver's state and its connection handling, in sync code over the sync face
    of an engine. Subclasses decide how that code runs: directly, in a worker thread,
    or in SQLAlchemy's greenlet bridge over an async engine."""

    def __init__(
        self,
        sync_engine: Engine,
        *,
        serde: SerializerProtocol | None = None,
        serde_allowlist: Iterable[AllowlistEntry] = (),
        encrypt: bool | str | bytes = False,
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
        self._slot = Slot()
        self._cache: OrderedDict[tuple[str, str, str, str], bool] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._lease_checked = False  # moa_threads has the lease column (checked once)
        self._multi_statements: bool | None = None  # MySQL: known once a connection opened

    def _ensure_ready(self) -> None:
        raise NotImplementedError  # schema.Schema

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
        if self.backend == "mysql" and self._multi_statements is None:
            # PyMySQL/aiomysql: whether one request may carry several statements
            flags = getattr(raw.driver_connection, "client_flag", 0)
            self._multi_statements = bool(flags & CLIENT_MULTI_STATEMENTS)
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
        if self._slot.lock.acquire(blocking=False):
            try:
                raw = self._slot.raw
                if raw is None or not raw.is_valid:
                    raw = self._slot.raw = self._open()
                    self._slot.cursor = raw.cursor()
                yield raw
            finally:
                if self._slot.closing and self._slot.raw is not None:
                    raw, self._slot.raw = self._slot.raw, None
                    self._slot.cursor = None
                    self._release(raw)
                self._slot.lock.release()
        else:
            raw = self._open()
            try:
                yield raw
            finally:
                self._release(raw)

    def _close_cached(self) -> None:
        """Give the saver's connection back to the pool (now, or when its user is done)."""
        self._slot.closing = True
        if self._slot.lock.acquire(blocking=False):
            try:
                raw, self._slot.raw = self._slot.raw, None
                self._slot.cursor = None
                if raw is not None:
                    self._release(raw)
            finally:
                self._slot.lock.release()

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
        """Roll back after ``exc``; whether the connection was lost (then dropped).

        A cancellation (or any other ``BaseException``) may have cut a statement in
        flight: the connection is mid-protocol (on aiomysql a rollback would read the cut
        statement's reply, and the connection would stay one reply behind, with the cut
        statement's transaction and locks open on the server). It is dropped, which ends
        that transaction, never rolled back and reused."""
        if not isinstance(exc, Exception):
            with suppress(Exception):
                raw.invalidate()
            return True
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
        lock = self._slot.lock
        attempt = 0
        while True:
            mine = lock.acquire(blocking=False)
            raw: PoolProxiedConnection | None = None
            cur: Any = None
            try:
                if mine:
                    raw = self._slot.raw
                    if raw is None or not raw.is_valid:
                        raw = self._slot.raw = self._open()
                        self._slot.cursor = raw.cursor()
                    cur = self._slot.cursor
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
                        self._slot.raw = self._slot.cursor = None
                    attempt += 1
                    if not isinstance(exc, Exception):
                        raise  # cancelled: never retried
                    if attempt >= RETRIES or not (lost or retryable(exc)):
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
                    if self._slot.closing and self._slot.raw is not None:
                        self._release(self._slot.raw)
                        self._slot.raw = self._slot.cursor = None
                    lock.release()
            self._sleep(0.02 * attempt * (1 + random.random()))

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)`` in one write transaction."""
        return self._attempt(fn, args, begin=self._begin_sql, read=False)

    def _write_one(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)``, which executes one statement (atomic by itself)."""
        if self.backend in ("postgresql", "mysql"):  # autocommit: no BEGIN, no COMMIT
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
                if attempt >= RETRIES or not retryable(exc):
                    raise
            self._sleep(0.02 * attempt * (1 + random.random()))

    @staticmethod
    def _run(cur: Any, p: Prepared, values: dict[str, Any]) -> Any:
        cur.execute(p.sql, p.args(values))
        return cur
