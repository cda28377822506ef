"""ENGINES AND SCHEMA SET-UP OF THE SAVERS: the one place that creates engines and tables.

Every engine a saver makes (``from_url``, the sync twin of the async saver) comes from
:func:`new_engine` / :func:`new_async_engine`, and every table creation or migration
goes through :meth:`Setup._setup_sync`. Replace these two to move the savers onto a
shared engine factory or a common migration runner.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, func, insert, inspect, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence._sql import Statements
from langgraph_moa.persistence.errors import PersistenceError, SchemaVersionError
from langgraph_moa.persistence.saver._connections import Connections
from langgraph_moa.persistence.schema import MIGRATIONS, SCHEMA_VERSION, migrations
from langgraph_moa.persistence.urls import create_async_engine, create_engine, redact, sync_url

_MIGRATION_LOCK = "moa_checkpoint_migrations"
_PG_LOCK_ID = 0x6D6F615F636B7074 & 0x7FFFFFFFFFFFFFFF  # "moa_ckpt"


def new_engine(url: str | URL, **engine_kwargs: Any) -> Engine:
    """The sync engine of a saver made from a URL (``from_url``)."""
    return create_engine(url, **engine_kwargs)


def new_async_engine(url: str | URL, **engine_kwargs: Any) -> AsyncEngine:
    """The async engine of a saver made from a URL (``from_url``)."""
    return create_async_engine(url, **engine_kwargs)


def twin_engine(engine: AsyncEngine) -> Engine:
    """A sync engine on the database of ``engine``, for the async saver's sync methods."""
    return create_engine(sync_url(engine.url))


class Setup(Connections):
    """Schema version checks and migrations (tables: :mod:`..schema`)."""

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
