"""Tables of the checkpointer and their versioned migrations.

Four tables, laid out like the official PostgreSQL saver's, prefixed ``moa_`` so other
parts of an application can share the database:

- ``moa_checkpoints``: one row per checkpoint; the checkpoint document (everything but
  the large channel values) serialized by the saver's serde, metadata as JSON.
- ``moa_checkpoint_blobs``: one row per (thread, namespace, channel, version) of each
  channel value too large to repeat in every checkpoint, written once.
- ``moa_checkpoint_writes``: pending writes of tasks, per checkpoint.
- ``moa_checkpoint_heads``: the latest checkpoint of each (thread, namespace) and when
  it was written: the compare-and-set target that fences concurrent writers, and the
  index of thread activity that retention uses.

The tables are created and upgraded by the store's migration runner (component
``checkpoints`` of :mod:`.migrations`, whose steps call the functions here). Projects
that manage their schema with Alembic can include :data:`metadata` instead of calling
``setup()``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Double,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    column,
    table,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeEngine

from langgraph_moa.persistence import migrations

__all__ = [
    "SCHEMA_VERSION",
    "blobs",
    "checkpoints",
    "heads",
    "lease_threads",
    "metadata",
    "writes",
]

THREAD_ID_MAX = 255
CHANNEL_MAX = 150
ID_MAX = 64


def _text_key(length: int) -> TypeEngine[str]:
    """A key column compared byte-wise on every backend (case- and accent-sensitive)."""
    return (
        String(length)
        .with_variant(String(length, collation="C"), "postgresql")
        .with_variant(
            mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
        )
    )


def _ascii_key(length: int = ID_MAX) -> TypeEngine[str]:
    """An id column (uuids, versions): ASCII, byte order, one byte per character."""
    return (
        String(length)
        .with_variant(String(length, collation="C"), "postgresql")
        .with_variant(
            mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
        )
    )


def _blob() -> TypeEngine[bytes]:
    return LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def _json() -> TypeEngine[Any]:
    return JSON().with_variant(postgresql.JSONB(), "postgresql")


metadata = MetaData()

_TABLE_ARGS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
}
# Small rows: clustered by primary key on SQLite, with no second copy of the key. Tables
# of large rows stay rowid tables, which pack them densely in insertion order.
_SMALL_ROWS: dict[str, Any] = {**_TABLE_ARGS, "sqlite_with_rowid": False}

checkpoints = Table(
    "moa_checkpoints",
    metadata,
    Column("thread_id", _text_key(THREAD_ID_MAX), primary_key=True),
    Column("checkpoint_ns", _text_key(THREAD_ID_MAX), primary_key=True, server_default=""),
    Column("checkpoint_id", _ascii_key(), primary_key=True),
    Column("parent_checkpoint_id", _ascii_key()),
    Column("type", String(32), nullable=False),
    Column("checkpoint", _blob(), nullable=False),
    Column("metadata", _json(), nullable=False),
    **_TABLE_ARGS,
)

blobs = Table(
    "moa_checkpoint_blobs",
    metadata,
    Column("thread_id", _text_key(THREAD_ID_MAX), primary_key=True),
    Column("checkpoint_ns", _text_key(THREAD_ID_MAX), primary_key=True, server_default=""),
    Column("channel", _text_key(CHANNEL_MAX), primary_key=True),
    Column("version", _ascii_key(), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("blob", _blob()),
    **_TABLE_ARGS,
)

writes = Table(
    "moa_checkpoint_writes",
    metadata,
    Column("thread_id", _text_key(THREAD_ID_MAX), primary_key=True),
    Column("checkpoint_ns", _text_key(THREAD_ID_MAX), primary_key=True, server_default=""),
    Column("checkpoint_id", _ascii_key(), primary_key=True),
    Column("task_id", _ascii_key(), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("task_path", Text, nullable=False),
    Column("channel", _text_key(CHANNEL_MAX), nullable=False),
    Column("type", String(32), nullable=False),
    Column("blob", _blob()),
    **_SMALL_ROWS,
)

heads = Table(
    "moa_checkpoint_heads",
    metadata,
    Column("thread_id", _text_key(THREAD_ID_MAX), primary_key=True),
    Column("checkpoint_ns", _text_key(THREAD_ID_MAX), primary_key=True, server_default=""),
    Column("checkpoint_id", _ascii_key(), nullable=False),
    Column("updated_at", Double, nullable=False),  # unindexed: updates stay HOT on PG
    **_SMALL_ROWS,
)


lease_threads = table("moa_threads", column("thread_id", String()), column("lease_token", String()))
"""The lease columns the savers read of the run registry's ``moa_threads`` (the registry
creates and migrates that table; the savers only check a writer's lease token in it)."""


def _v1(conn: Connection) -> None:
    """The four tables."""
    metadata.create_all(conn, tables=[checkpoints, blobs, writes, heads], checkfirst=True)


SCHEMA_VERSION = migrations.schema_version("checkpoints")
"""The schema version this code reads and writes."""
