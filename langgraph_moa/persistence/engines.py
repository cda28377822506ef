"""One engine, so one connection pool, per database per process.

Everything that stores something (the savers, the run registry, the event log, the
evaluation store, the HTTP server and the workers) gets its engine here::

    engine = get_engine("sqlite:///moa.sqlite")               # sync, pysqlite
    aengine = get_async_engine("postgresql://u@host/db")      # async, psycopg
    ...
    await release_async_engine(aengine)   # optional: the last holder closes the pool

URLs are normalised first (driver spelling, relative SQLite paths), so
``postgresql://u@h/db`` and ``postgresql+psycopg_async://u@h/db`` share one pool. Async
engines are also per event loop (their connections belong to the loop that opened
them); a process normally runs one loop, so one pool. (Asked for outside a running loop,
an async engine is private to its caller.)

Engines are set up once for every component: SQLite files in WAL mode with a busy
timeout, ``synchronous=NORMAL`` and ``BEGIN IMMEDIATE`` transactions (several processes
can write one file); PostgreSQL through psycopg 3; MySQL/MariaDB through PyMySQL and
aiomysql, both allowing several statements per request (aiomysql always does); JSON
columns encoded with orjson. An in-memory SQLite URL is one database per
engine, so every call gets its own.

Lifetime: each ``get_*`` counts a holder; ``release_engine``/``release_async_engine``
drops one and disposes the pool when none is left. Engines nobody releases live until
:func:`dispose_all` / :func:`adispose_all` or the end of the process. Engines made with
extra ``engine_kwargs`` are private to their caller (never shared).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sqlite3
import threading
import weakref
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
from sqlalchemy.pool import StaticPool

from langgraph_moa.persistence._plain import SQLITE_BUSY_TIMEOUT_MS, json_dumps, json_loads
from langgraph_moa.persistence.errors import DatabaseURLError
from langgraph_moa.persistence.urls import (
    async_url,
    backend_of,
    is_sqlite_memory,
    parse_url,
    redact,
    sync_url,
)

__all__ = [
    "READ_ONLY",
    "SQLITE_BUSY_TIMEOUT_MS",
    "adispose_all",
    "async_url",
    "create_async_engine",
    "create_engine",
    "dispose_all",
    "engine_key",
    "get_async_engine",
    "get_engine",
    "install_sqlite_events",
    "release_async_engine",
    "release_engine",
    "sync_url",
]

READ_ONLY = "moa_read_only"
"""Execution option of a connection that only reads: on SQLite its transactions do not
take the write lock (``conn.execution_options(moa_read_only=True)``)."""

POOL_SIZE = 10
MAX_OVERFLOW = 20
"""Pool of a server database: the saver, registry, event log and run executor share it."""


def engine_key(url: str | URL) -> str:
    """The normalised form of ``url`` that engines are shared by: the sync driver's URL,
    with a SQLite file's path made absolute."""
    u = parse_url(sync_url(url))
    if backend_of(u) == "sqlite" and not is_sqlite_memory(u) and u.database:
        db = u.database
        if not db.startswith("file:"):
            u = u.set(database=os.path.abspath(db))
    return u.render_as_string(hide_password=False)


def _engine_kwargs(u: URL, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": json_loads}
    kw.update(engine_kwargs)
    if backend_of(u) == "sqlite":
        if is_sqlite_memory(u):
            # One shared connection, or every connection would see its own database.
            kw.setdefault("poolclass", StaticPool)
            kw.setdefault("connect_args", {}).setdefault("check_same_thread", False)
        else:
            kw.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    else:
        if u.get_driver_name() == "pymysql":
            # several statements per request, as aiomysql always allows: a saver's put
            # is one request and its COMMIT. FOUND_ROWS: SQLAlchemy's own flag, and the
            # URL's ?client_flag=, which a client_flag given here would otherwise replace;
            # one in the caller's connect_args is theirs (their dict is not changed).
            from pymysql.constants import CLIENT

            connect_args = kw["connect_args"] = dict(kw.get("connect_args") or {})
            if "client_flag" not in connect_args:
                asked = int(str(u.query.get("client_flag", 0)))
                connect_args["client_flag"] = asked | CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS
        kw.setdefault("pool_recycle", 1800)
        if "poolclass" not in kw:
            kw.setdefault("pool_size", POOL_SIZE)
            kw.setdefault("max_overflow", MAX_OVERFLOW)
    return kw


def create_engine(url: str | URL, **engine_kwargs: Any) -> Engine:
    """A new private sync engine for ``url`` (any driver spelling); prefer :func:`get_engine`."""
    u = parse_url(sync_url(url))
    try:
        engine = sa.create_engine(u, **_engine_kwargs(u, engine_kwargs))
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        raise _missing_driver(u, exc) from None
    if engine.dialect.name == "sqlite":
        install_sqlite_events(engine)
    return engine


def create_async_engine(url: str | URL, **engine_kwargs: Any) -> AsyncEngine:
    """A new private async engine for ``url``; prefer :func:`get_async_engine`."""
    u = parse_url(async_url(url))
    try:
        engine = _sa_create_async_engine(u, **_engine_kwargs(u, engine_kwargs))
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        raise _missing_driver(u, exc) from None
    if engine.dialect.name == "sqlite":
        install_sqlite_events(engine.sync_engine)
    return engine


def _missing_driver(u: URL, exc: BaseException) -> DatabaseURLError:
    extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(backend_of(u), "")
    hint = f"pip install 'langgraph-moa[{extra}]'" if extra else "pip install aiosqlite"
    return DatabaseURLError(
        f"database URL {redact(u)!r}: the driver {u.drivername!r} is not installed ({exc}); "
        f"install it with: {hint}"
    )


def install_sqlite_events(engine: Engine) -> None:
    """Make ``engine``'s SQLite connections safe for several writing processes.

    Every new connection gets WAL mode, a busy timeout and ``synchronous=NORMAL`` (no
    fsync per commit in WAL mode; a crash of the process loses nothing, a power cut
    may lose the last transactions but never corrupts the file), and leaves
    transactions to the ``begin`` event, which takes the write lock up front
    (``BEGIN IMMEDIATE``) so two writers queue instead of failing with
    ``database is locked``; a connection with the execution option :data:`READ_ONLY`
    reads a snapshot (``BEGIN``) without waiting for writers. Idempotent.
    """
    if getattr(engine, "_moa_sqlite_events", False):
        return
    memory = is_sqlite_memory(engine.url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                # a read-only file, or a lock held elsewhere: keep the current mode
                with suppress(sqlite3.Error):
                    cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    engine._moa_sqlite_events = True  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the registry ---


@dataclass
class _Held:
    engine: Any
    key: str | None  # None: private (not shared)
    holders: int = 1


_lock = threading.Lock()
_sync: dict[str, _Held] = {}
_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Held]] = (
    weakref.WeakKeyDictionary()
)
_private: dict[int, _Held] = {}


def get_engine(url: str | URL, **engine_kwargs: Any) -> Engine:
    """The process's sync engine of ``url`` (made on first use); see the module docs."""
    if engine_kwargs or is_sqlite_memory(url):
        engine = create_engine(url, **engine_kwargs)
        with _lock:
            _private[id(engine)] = _Held(engine, None)
        return engine
    key = engine_key(url)
    with _lock:
        held = _sync.get(key)
        if held is None:
            held = _sync[key] = _Held(create_engine(key), key, 0)
        held.holders += 1
        shared: Any = held.engine
        return shared


def get_async_engine(url: str | URL, **engine_kwargs: Any) -> AsyncEngine:
    """The async engine of ``url`` for the running event loop (one per process when it
    runs one loop); see the module docs. Called outside a loop, a private engine."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if engine_kwargs or is_sqlite_memory(url) or loop is None:
        engine = create_async_engine(url, **engine_kwargs)
        with _lock:
            _private[id(engine)] = _Held(engine, None)
        return engine
    key = engine_key(url)
    with _lock:
        for closed in [lp for lp in _async if lp.is_closed()]:
            del _async[closed]  # their connections died with their loop
        per_loop = _async.setdefault(loop, {})
        held = per_loop.get(key)
        if held is None:
            held = per_loop[key] = _Held(create_async_engine(key), key, 0)
        held.holders += 1
        shared: Any = held.engine
        return shared


def _drop(engine: Any, per_key: dict[str, _Held] | None) -> bool:
    """Count one holder less; True if ``engine`` should be disposed now."""
    with _lock:
        held = _private.get(id(engine))
        if held is not None and held.engine is engine:
            del _private[id(engine)]
            return True
        if per_key is None:
            return False
        for key, held in list(per_key.items()):
            if held.engine is engine:
                held.holders -= 1
                if held.holders <= 0:
                    del per_key[key]
                    return True
                return False
    return False


def release_engine(engine: Engine) -> None:
    """Give back an engine from :func:`get_engine`; the last holder disposes its pool."""
    if _drop(engine, _sync):
        engine.dispose()


async def release_async_engine(engine: AsyncEngine) -> None:
    """Give back an engine from :func:`get_async_engine`; the last holder disposes it."""
    try:
        per_loop = _async.get(asyncio.get_running_loop())
    except RuntimeError:
        per_loop = None
    if _drop(engine, per_loop):
        await engine.dispose()


def dispose_all() -> None:
    """Close every sync pool of this process and forget every engine (async engines of a
    running loop: use :func:`adispose_all`)."""
    with _lock:
        sync = [h.engine for h in _sync.values()]
        sync += [h.engine for h in _private.values() if isinstance(h.engine, Engine)]
        _sync.clear()
        _private.clear()
        _async.clear()
    for engine in sync:
        with suppress(Exception):
            engine.dispose()


async def adispose_all() -> None:
    """:func:`dispose_all`, disposing the async engines of the running loop properly."""
    loop = asyncio.get_running_loop()
    with _lock:
        mine = [h.engine for h in _async.get(loop, {}).values()]
        mine += [h.engine for h in _private.values() if isinstance(h.engine, AsyncEngine)]
    for engine in mine:
        with suppress(Exception):
            await engine.dispose()
    dispose_all()


atexit.register(dispose_all)
