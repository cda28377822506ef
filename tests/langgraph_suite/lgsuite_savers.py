"""Our four savers as LangGraph's suite wants its checkpointers: one context manager each.

Every call gets a fresh store (a new SQLite file in a temporary directory, or a new
PostgreSQL database dropped afterwards) with ``setup()`` already called. The PostgreSQL
server is ``$MOA_LGSUITE_PG`` (an admin URL; default ``postgresql://postgres@127.0.0.1:5432/
postgres``).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from langgraph_moa.persistence import AsyncSQLAlchemySaver, SQLAlchemySaver

PG_ADMIN = os.environ.get("MOA_LGSUITE_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

__all__ = [
    "PG_ADMIN",
    "moa_postgres",
    "moa_postgres_aio",
    "moa_sqlite",
    "moa_sqlite_aio",
    "pg_server_url",
]


def pg_server_url() -> str:
    """``$MOA_LGSUITE_PG`` without its database name, ending in ``/`` (psycopg spelling)."""
    return PG_ADMIN.rsplit("/", 1)[0] + "/"


@contextmanager
def _pg_database() -> Iterator[str]:
    import psycopg

    # not uuid.uuid4: LangGraph's deterministic_uuids fixture patches it during the test
    name = f"lgsuite_{secrets.token_hex(8)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server_url() + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _sqlite_file() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="lgsuite-") as tmp:
        yield f"sqlite:///{tmp}/checkpoints.sqlite"


@contextmanager
def moa_sqlite() -> Iterator[SQLAlchemySaver]:
    """``SQLAlchemySaver`` on a fresh SQLite file."""
    with _sqlite_file() as url, SQLAlchemySaver.from_url(url) as saver:
        saver.setup()
        yield saver


@contextmanager
def moa_postgres() -> Iterator[SQLAlchemySaver]:
    """``SQLAlchemySaver`` on a fresh PostgreSQL database."""
    with _pg_database() as url, SQLAlchemySaver.from_url(url) as saver:
        saver.setup()
        yield saver


@asynccontextmanager
async def moa_sqlite_aio() -> AsyncIterator[AsyncSQLAlchemySaver]:
    """``AsyncSQLAlchemySaver`` on a fresh SQLite file."""
    with _sqlite_file() as url:
        async with AsyncSQLAlchemySaver.from_url(url) as saver:
            await saver.setup()
            yield saver


@asynccontextmanager
async def moa_postgres_aio() -> AsyncIterator[AsyncSQLAlchemySaver]:
    """``AsyncSQLAlchemySaver`` on a fresh PostgreSQL database."""
    with _pg_database() as url:
        async with AsyncSQLAlchemySaver.from_url(url) as saver:
            await saver.setup()
            yield saver
