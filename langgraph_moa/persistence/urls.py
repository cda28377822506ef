"""Database URLs: switch between the sync and async driver of a backend.

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

Engines are made by :mod:`langgraph_moa.persistence.engines` (one pool per database).
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from langgraph_moa.persistence.errors import DatabaseURLError

__all__ = ["async_url", "backend_of", "is_sqlite_memory", "parse_url", "redact", "sync_url"]

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


def parse_url(url: str | URL) -> URL:
    """``url`` parsed, or a :class:`DatabaseURLError` saying what is wrong with it."""
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
    u = parse_url(url)
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
    u = parse_url(url)
    return _render(u.set(drivername=_SYNC_DRIVER[backend_of(u)]))


def async_url(url: str | URL) -> str:
    """``url`` with the async driver of its backend (see the module table)."""
    u = parse_url(url)
    return _render(u.set(drivername=_ASYNC_DRIVER[backend_of(u)]))


def redact(url: str | URL) -> str:
    """``url`` with its password hidden, for messages."""
    try:
        return parse_url(url).render_as_string(hide_password=True)
    except DatabaseURLError:
        return "<unparseable URL>"


def _render(u: URL) -> str:
    return u.render_as_string(hide_password=False)


def is_sqlite_memory(url: str | URL) -> bool:
    """Whether ``url`` is an in-memory SQLite database (one per connection)."""
    u = parse_url(url)
    if backend_of(u) != "sqlite":
        return False
    db = u.database or ""
    return db in ("", ":memory:") or (db.startswith("file:") and "mode=memory" in db)
