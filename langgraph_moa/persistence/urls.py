"""Database URLs: switch between the sync and async driver of a backend, make engines.

Users type sync-style URLs (``sqlite:///moa.sqlite``, ``postgresql://user@host/db``,
``mysql://root@host/db``); :func:`sync_url` and :func:`async_url` turn any of them into
the URL of the driver this project uses on each side:

========== ======================== ==============================
backend    sync                     async
========== ======================== ==============================
SQLite     ``sqlite`` (pysqlite)    ``sqlite+aiosqlite``
PostgreSQL ``postgresql+psycopg``   ``postgresql+psycopg_async``
MySQL      ``mysql+pymysql``        ``mysql+aiomysql``
MariaDB    ``mariadb+pymysql``      ``mariadb+aiomysql``
========== ======================== ==============================

:func:`create_engine` and :func:`create_async_engine` make engines set up for the
checkpointer: SQLite in WAL mode with a busy timeout and ``BEGIN IMMEDIATE``
transactions (several processes can write one file), pre-pinged pooled connections
for the servers (the saver
reconnects itself when a pooled connection has died, so there is no ping per checkout).
"""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
from sqlalchemy.pool import StaticPool

from langgraph_moa.persistence.errors import DatabaseURLError

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "async_url",
    "backend_of",
    "create_async_engine",
    "create_engine",
    "install_sqlite_events",
    "is_sqlite_memory",
    "redact",
    "sync_url",
]

SQLITE_BUSY_TIMEOUT_MS = 60_000
"""How long a SQLite connection waits for another writer before giving up."""

_SYNC_DRIVER = {
    "sqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_ASYNC_DRIVER = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg_async",
    "mysql": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
}
_ALIASES = {"postgres": "postgresql", "pgsql": "postgresql", "sqlite3": "sqlite"}
_KNOWN_DRIVERS = {
    "sqlite": {"", "pysqlite", "aiosqlite"},
    "postgresql": {"", "psycopg", "psycopg_async", "psycopg2", "asyncpg"},
    "mysql": {"", "pymysql", "aiomysql", "mysqldb", "asyncmy"},
    "mariadb": {"", "pymysql", "aiomysql", "mysqldb", "asyncmy"},
}


def _parse(url: str | URL) -> URL:
    if isinstance(url, URL):
        return url
    if not isinstance(url, str) or not url.strip():
        raise DatabaseURLError(
            f"database URL {url!r} is empty; pass a SQLAlchemy URL such as "
            "sqlite:///moa.sqlite or postgresql://user@host/db"
        )
    try:
        return make_url(url.strip())
    except ArgumentError as exc:
        raise DatabaseURLError(
            f"cannot parse database URL {url!r} ({exc}); expected a SQLAlchemy URL such as "
            "sqlite:///moa.sqlite, postgresql://user@host/db or mysql://user@host/db"
        ) from None


def backend_of(url: str | URL) -> str:
    """``sqlite``, ``postgresql``, ``mysql`` or ``mariadb``; an error for anything else."""
    u = _parse(url)
    name, _, driver = u.drivername.partition("+")
    name = _ALIASES.get(name, name)
    if name not in _KNOWN_DRIVERS:
        raise DatabaseURLError(
            f"database URL {redact(u)!r}: backend {name!r} is not supported; use sqlite, "
            "postgresql, mysql or mariadb"
        )
    if driver not in _KNOWN_DRIVERS[name]:
        raise DatabaseURLError(
            f"database URL {redact(u)!r}: driver {driver!r} is not supported for {name}; "
            f"drop the '+{driver}' part and the right driver is chosen for you"
        )
    return name


def sync_url(url: str | URL) -> str:
    """``url`` with the sync driver of its backend (see the module table)."""
    u = _parse(url)
    return _render(u.set(drivername=_SYNC_DRIVER[backend_of(u)]))


def async_url(url: str | URL) -> str:
    """``url`` with the async driver of its backend (see the module table)."""
    u = _parse(url)
    return _render(u.set(drivername=_ASYNC_DRIVER[backend_of(u)]))


def redact(url: str | URL) -> str:
    """``url`` with its password hidden, for messages."""
    try:
        return _parse(url).render_as_string(hide_password=True)
    except DatabaseURLError:
        return "<unparseable URL>"


def _render(u: URL) -> str:
    return u.render_as_string(hide_password=False)


def is_sqlite_memory(url: str | URL) -> bool:
    """Whether ``url`` is an in-memory SQLite database (one per connection)."""
    u = _parse(url)
    if backend_of(u) != "sqlite":
        return False
    db = u.database or ""
    return db in ("", ":memory:") or (db.startswith("file:") and "mode=memory" in db)


def _engine_kwargs(u: URL, engine_kwargs: dict[str, Any], *, is_async: bool) -> dict[str, Any]:
    kw = dict(engine_kwargs)
    backend = backend_of(u)
    if backend == "sqlite":
        if is_sqlite_memory(u):
            # One shared connection, or every connection would see its own database.
            kw.setdefault("poolclass", StaticPool)
            kw.setdefault("connect_args", {}).setdefault("check_same_thread", False)
        else:
            kw.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    else:
        kw.setdefault("pool_recycle", 1800)
    return kw


def create_engine(url: str | URL, **engine_kwargs: Any) -> Engine:
    """A sync engine for ``url`` (any driver spelling), set up for the checkpointer."""
    u = _parse(sync_url(url))
    try:
        engine = sa.create_engine(u, **_engine_kwargs(u, engine_kwargs, is_async=False))
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        raise _missing_driver(u, exc) from None
    if engine.dialect.name == "sqlite":
        install_sqlite_events(engine)
    return engine


def create_async_engine(url: str | URL, **engine_kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (sync-style URLs are switched to the async driver)."""
    u = _parse(async_url(url))
    try:
        engine = _sa_create_async_engine(u, **_engine_kwargs(u, engine_kwargs, is_async=True))
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
    ``database is locked``. Idempotent.
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
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine._moa_sqlite_events = True  # type: ignore[attr-defined]
