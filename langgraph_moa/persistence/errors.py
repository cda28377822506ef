"""Errors raised by the SQL checkpointer, each naming the problem and what to do."""

from __future__ import annotations

__all__ = [
    "CheckpointConflictError",
    "DatabaseURLError",
    "DatabaseUnavailableError",
    "DecryptionError",
    "PersistenceError",
    "SchemaVersionError",
]


class PersistenceError(Exception):
    """Base class of the errors of ``langgraph_moa.persistence``."""


class DatabaseURLError(PersistenceError, ValueError):
    """A database URL that cannot be used (malformed, unknown backend, driver missing)."""


class DatabaseUnavailableError(PersistenceError, ConnectionError):
    """The database did not accept a connection."""


class DecryptionError(PersistenceError, ValueError):
    """A stored value that the configured AES key cannot decrypt (a different key wrote it,
    or the bytes were altered). Nothing is changed in the store."""


class SchemaVersionError(PersistenceError):
    """The store's schema is missing, or newer than this code understands."""

    def __init__(self, message: str, *, found: int | None, supported: int) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported


class CheckpointConflictError(PersistenceError):
    """A ``put``/``put_writes`` whose run no longer holds its thread's lease.

    The run executor passes its lease token as ``configurable["__moa_lease__"]``; the
    saver refuses the write when the thread's lease (``moa_threads.lease_token``) is
    free or held by another run: this run lost the thread and must stop. Nothing of
    the refused write is stored.
    """

    def __init__(
        self, *, thread_id: str, checkpoint_ns: str, token: str, holder: str | None
    ) -> None:
        ns = f" (namespace {checkpoint_ns!r})" if checkpoint_ns else ""
        held = "is free" if holder is None else "is held by another run"
        super().__init__(
            f"thread {thread_id!r}{ns}: write refused, the thread's lease {held} "
            f"(this writer's lease token {token!r} is stale); this run no longer owns "
            "the thread and must stop"
        )
        self.thread_id = thread_id
        self.checkpoint_ns = checkpoint_ns
        self.token = token
        self.holder = holder
