"""ENGINES AND SCHEMA SET-UP OF THE SAVERS: the one place that creates engines and tables.

Every engine a saver takes (``from_url``, the sync twin of the async saver) is the
process's shared engine of its database (:mod:`langgraph_moa.persistence.engines`), and
every table creation or migration goes through the store's migration runner
(:mod:`langgraph_moa.persistence.migrations`, component ``checkpoints``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence import migrations
from langgraph_moa.persistence._sql import Statements
from langgraph_moa.persistence.engines import get_async_engine, get_engine
from langgraph_moa.persistence.errors import SchemaVersionError
from langgraph_moa.persistence.saver._connections import Connections
from langgraph_moa.persistence.urls import redact, sync_url

COMPONENT = "checkpoints"


def new_engine(url: str | URL, **engine_kwargs: Any) -> Engine:
    """The sync engine of a saver made from a URL (``from_url``); give it back with
    :func:`~langgraph_moa.persistence.engines.release_engine`."""
    return get_engine(url, **engine_kwargs)


def new_async_engine(url: str | URL, **engine_kwargs: Any) -> AsyncEngine:
    """The async engine of a saver made from a URL (``from_url``)."""
    return get_async_engine(url, **engine_kwargs)


def twin_engine(engine: AsyncEngine) -> Engine:
    """The sync engine of the database of ``engine``, for the async saver's sync methods."""
    return get_engine(sync_url(engine.url))


class Setup(Connections):
    """Schema version checks and migrations (tables: :mod:`..schema`)."""

    def _setup_sync(self) -> None:
        """Create or upgrade the tables (the runner holds a database-wide lock)."""
        with self._sa_connect() as conn:
            migrations.upgrade(conn, COMPONENT)
        self._stmts = None
        self._ready = False

    def _check_ready(self) -> None:
        """Check the schema version once; set up or migrate if allowed."""
        supported = migrations.schema_version(COMPONENT)
        with self._sa_connect() as conn:
            found = self._schema_version(conn)
        if found is not None and found > supported:
            self._setup_sync()  # raises SchemaVersionError, naming both versions
        if found != supported:
            if not self.auto_setup:
                raise SchemaVersionError(
                    f"the checkpoint tables at {redact(self._sync_engine.url)} are "
                    + ("missing" if found is None else f"at schema version {found}")
                    + f"; call saver.setup() to bring them to version {supported}",
                    found=found,
                    supported=supported,
                )
            self._setup_sync()
        self._stmts = Statements(self._sync_engine.dialect)
        self._ready = True

    @staticmethod
    def _schema_version(conn: Connection) -> int | None:
        return migrations.current_version(conn, COMPONENT)

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._check_ready()
