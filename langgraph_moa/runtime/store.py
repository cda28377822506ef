"""Where runs are stored: the default database URL and opening the checkpointer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from platformdirs import user_data_dir

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from langgraph_moa.persistence.registry import RunRegistry
    from langgraph_moa.runtime.runs import StoreError

__all__ = [
    "check_sqlite_file",
    "default_db_url",
    "open_checkpointer",
    "open_registry",
    "resolve_db_url",
    "store_error",
]


def default_db_url() -> str:
    """A SQLite file in the user's data directory (created on first use)."""
    path = Path(user_data_dir("langgraph-moa", appauthor=False)) / "moa.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def resolve_db_url(db_url: str | None) -> str:
    """``db_url``, else ``MOA_DB_URL``, else the default SQLite file."""
    return db_url or os.environ.get("MOA_DB_URL") or default_db_url()


def check_sqlite_file(url: str) -> None:
    """Open an SQLite store's file once, synchronously, before any async driver does: a
    file that cannot be opened raises SQLAlchemy's ``OperationalError`` here, instead of
    leaving aiosqlite's thread to fail against a closed event loop after the error."""
    import sqlite3

    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return  # not a URL: the saver says so in its own words
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if parsed.database.startswith("file:"):
        return  # a URI filename: its options are the driver's business
    try:
        sqlite3.connect(parsed.database).close()
    except sqlite3.Error as exc:
        raise sa.exc.OperationalError("connect", {}, exc) from exc


@asynccontextmanager
async def open_checkpointer(db_url: str | None) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The async SQLAlchemy checkpointer of ``db_url``, set up and ready."""
    from langgraph_moa.persistence import AsyncSQLAlchemySaver

    check_sqlite_file(resolve_db_url(db_url))
    async with AsyncSQLAlchemySaver.from_url(resolve_db_url(db_url)) as saver:
        await saver.setup()
        yield saver


@asynccontextmanager
async def open_registry(db_url: str | None) -> AsyncIterator[RunRegistry]:
    """The run registry of ``db_url`` alone (no checkpointer, no LangGraph), set up.

    For commands that only read runs (``moa runs``): :class:`StoreError` if unreachable.
    """
    from langgraph_moa.persistence.registry import RunRegistry

    url = resolve_db_url(db_url)
    async with AsyncExitStack() as stack:
        try:
            registry = RunRegistry.from_url(url)
            stack.push_async_callback(registry.aclose)
            await registry.setup()
        except (ImportError, ValueError):
            raise
        except Exception as exc:
            raise store_error(url, exc) from exc
        yield registry


def store_error(url: str, exc: BaseException) -> StoreError:
    """The one-line error for a store that cannot be opened (password hidden)."""
    import sqlalchemy as sa

    from langgraph_moa.runtime.runs import StoreError

    try:
        shown = sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        shown = "<the store URL>"
    return StoreError(
        f"cannot open the store {shown}: {type(exc).__name__}: {exc}; check that the database "
        "is running and the URL (--db / MOA_DB_URL) is right; nothing was changed"
    )
