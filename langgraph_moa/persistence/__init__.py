"""Checkpoint persistence: LangGraph savers on SQLAlchemy (SQLite, PostgreSQL, MySQL/MariaDB).

```python
from langgraph_moa.persistence import AsyncSQLAlchemySaver, SQLAlchemySaver

with SQLAlchemySaver.from_url("sqlite:///moa.sqlite") as saver:        # or your Engine
    graph = builder.compile(checkpointer=saver)
    graph.invoke(inputs, {"configurable": {"thread_id": "t1"}})

async with AsyncSQLAlchemySaver.from_url("postgresql://user@host/db") as saver:
    await saver.setup()          # optional: tables are created/migrated on first use
    graph = builder.compile(checkpointer=saver)
    await graph.ainvoke(inputs, {"configurable": {"thread_id": "t1"}})
```

- URLs: any driver spelling; the async saver switches to the async driver itself
  (:mod:`.urls`); one engine per database per process (:mod:`.engines`). Tables are
  prefixed ``moa_`` and versioned by one runner (:mod:`.migrations`).
- Fencing by run ownership: writes whose config carries the run executor's lease token
  (``configurable["__moa_lease__"]``) raise :class:`CheckpointConflictError` unless that
  token still holds the thread's lease in ``moa_threads``; without a token nothing is
  fenced, exactly like LangGraph's own savers (resume, time travel, forks all work).
- Types: LangGraph's safe types, registered classes (``serde_allowlist=[MyModel, ...]``,
  ``schema_allowlist(State)``) and imported pydantic/dataclass/Enum/NamedTuple state
  classes come back as themselves; nothing else is imported or called (:mod:`.serde`).
  ``encrypt=True`` encrypts stored values with ``$LANGGRAPH_AES_KEY``.
- Retention: ``saver.prune_to_last(keep=N)``, ``saver.delete_older_than(timedelta)``
  (checkpoints only); ``moa prune`` / :func:`.retention.prune_command` for the whole store
  (checkpoints, runs, events and threads together, live threads kept).

The exports are imported on first use: ``langgraph_moa.persistence.registry`` (say) does
not load LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langgraph_moa.persistence.engines import (
        create_async_engine,
        create_engine,
        dispose_all,
        get_async_engine,
        get_engine,
    )
    from langgraph_moa.persistence.errors import (
        CheckpointConflictError,
        DatabaseUnavailableError,
        DatabaseURLError,
        DecryptionError,
        PersistenceError,
        SchemaVersionError,
    )
    from langgraph_moa.persistence.saver import (
        INLINE_MAX_BYTES,
        LEASE_CONFIG_KEY,
        AsyncSQLAlchemySaver,
        SQLAlchemySaver,
    )
    from langgraph_moa.persistence.schema import SCHEMA_VERSION
    from langgraph_moa.persistence.serde import make_serde, schema_allowlist
    from langgraph_moa.persistence.urls import async_url, sync_url

_EXPORTS = {
    "CheckpointConflictError": "langgraph_moa.persistence.errors",
    "DatabaseUnavailableError": "langgraph_moa.persistence.errors",
    "DatabaseURLError": "langgraph_moa.persistence.errors",
    "DecryptionError": "langgraph_moa.persistence.errors",
    "PersistenceError": "langgraph_moa.persistence.errors",
    "SchemaVersionError": "langgraph_moa.persistence.errors",
    "INLINE_MAX_BYTES": "langgraph_moa.persistence.saver",
    "LEASE_CONFIG_KEY": "langgraph_moa.persistence.saver",
    "AsyncSQLAlchemySaver": "langgraph_moa.persistence.saver",
    "SQLAlchemySaver": "langgraph_moa.persistence.saver",
    "SCHEMA_VERSION": "langgraph_moa.persistence.schema",
    "make_serde": "langgraph_moa.persistence.serde",
    "schema_allowlist": "langgraph_moa.persistence.serde",
    "async_url": "langgraph_moa.persistence.urls",
    "create_async_engine": "langgraph_moa.persistence.engines",
    "create_engine": "langgraph_moa.persistence.engines",
    "dispose_all": "langgraph_moa.persistence.engines",
    "get_async_engine": "langgraph_moa.persistence.engines",
    "get_engine": "langgraph_moa.persistence.engines",
    "sync_url": "langgraph_moa.persistence.urls",
}

__all__ = [
    "INLINE_MAX_BYTES",
    "LEASE_CONFIG_KEY",
    "SCHEMA_VERSION",
    "AsyncSQLAlchemySaver",
    "CheckpointConflictError",
    "DatabaseURLError",
    "DatabaseUnavailableError",
    "DecryptionError",
    "PersistenceError",
    "SQLAlchemySaver",
    "SchemaVersionError",
    "async_url",
    "create_async_engine",
    "create_engine",
    "dispose_all",
    "get_async_engine",
    "get_engine",
    "make_serde",
    "schema_allowlist",
    "sync_url",
]


def __getattr__(name: str) -> Any:
    """Import an export on first use, so that importing a submodule stays light."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
