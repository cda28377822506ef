"""Checkpoint persistence: LangGraph savers on SQLAlchemy (SQLite, PostgreSQL, MySQL/MariaDB)."""

from langgraph_moa.persistence.errors import (
    CheckpointConflictError,
    DatabaseUnavailableError,
    DatabaseURLError,
    PersistenceError,
    SchemaVersionError,
)
from langgraph_moa.persistence.saver import (
    FORK_CONFIG_KEY,
    INLINE_MAX_BYTES,
    AsyncSQLAlchemySaver,
    SQLAlchemySaver,
)
from langgraph_moa.persistence.schema import SCHEMA_VERSION
from langgraph_moa.persistence.serde import make_serde, schema_allowlist
from langgraph_moa.persistence.urls import async_url, create_async_engine, create_engine, sync_url

__all__ = [
    "FORK_CONFIG_KEY",
    "INLINE_MAX_BYTES",
    "SCHEMA_VERSION",
    "AsyncSQLAlchemySaver",
    "CheckpointConflictError",
    "DatabaseURLError",
    "DatabaseUnavailableError",
    "PersistenceError",
    "SQLAlchemySaver",
    "SchemaVersionError",
    "async_url",
    "create_async_engine",
    "create_engine",
    "make_serde",
    "schema_allowlist",
    "sync_url",
]
