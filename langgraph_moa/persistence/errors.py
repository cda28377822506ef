"""Errors raised by the SQL checkpointer, each naming the problem and what to do."""

from __future__ import annotations

__all__ = [
    "CheckpointConflictError",
    "DatabaseURLError",
    "DatabaseUnavailableError",
    "PersistenceError",
    "SchemaVersionError",
]


class PersistenceError(Exception):
    """Base class of the errors of ``langgraph_moa.persistence``."""


class DatabaseURLError(PersistenceError, ValueError):
    """A database URL that cannot be used (malformed, unknown backend, driver missing)."""


class DatabaseUnavailableError(PersistenceError, ConnectionError):
    """The database did not accept a connection."""


class SchemaVersionError(PersistenceError):
    """The store's schema is missing, or newer than this code understands."""

    def __init__(self, message: str, *, found: int | None, supported: int) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported


class CheckpointConflictError(PersistenceError):
    """A ``put`` whose parent is no longer the latest checkpoint of its thread/namespace.

    Another writer extended the thread since this one read it. Reload the thread
    (``graph.get_state``) and retry, or fork on purpose (``graph.update_state`` or
    ``configurable["moa_fork"] = True``).
    """

    def __init__(
        self, *, thread_id: str, checkpoint_ns: str, parent_id: str, latest_id: str | None
    ) -> None:
        ns = f" namespace {checkpoint_ns!r}" if checkpoint_ns else ""
        super().__init__(
            f"thread {thread_id!r}{ns}: this checkpoint's parent {parent_id} is no longer the "
            f"latest checkpoint (the latest is {latest_id}); another process wrote to the "
            "thread meanwhile. Reload the thread and retry, or fork on purpose with "
            "graph.update_state(...) or configurable['moa_fork']=True."
        )
        self.thread_id = thread_id
        self.checkpoint_ns = checkpoint_ns
        self.parent_id = parent_id
        self.latest_id = latest_id
