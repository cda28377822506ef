"""LangGraph checkpointers on SQLAlchemy: SQLite, PostgreSQL, MySQL/MariaDB, sync and async.

``SQLAlchemySaver`` takes a sync ``Engine``, ``AsyncSQLAlchemySaver`` an ``AsyncEngine``;
both implement every method of ``BaseCheckpointSaver`` in both flavours (the async
methods of the sync saver run in a worker thread; the sync methods of the async saver
use a sync engine of their own on the same database).

Storage (see :mod:`..schema`): a checkpoint row holds the checkpoint document with the
small channel values inline; larger values are written once per (thread, namespace,
channel, version) to the blobs table, so a channel that did not change is not written
again. ``get_tuple`` is one indexed query, plus one primary-key lookup of blobs when
the checkpoint has large values.

Fencing by run ownership: a ``put``/``put_writes`` whose config carries a lease token
(``configurable["__moa_lease__"]``, set by the run executor) checks, in its own
transaction, that the token still holds the thread's lease in ``moa_threads`` (row
locked on PostgreSQL/MySQL; SQLite's write lock) and raises
:class:`CheckpointConflictError` otherwise, storing nothing. Without a token there is
no fencing, as with LangGraph's own savers: any checkpoint may be written after any
other (resume, time travel, forks), and the latest is the one with the largest id.

Modules, each a layer of one class chain (bottom first): ``_connections`` (pooled
connections, transactions, retries), ``_setup`` (ENGINE CREATION and schema set-up:
the one place), ``_codec`` (rows <-> checkpoints), ``_hot`` (put, put_writes,
get_tuple, list), ``_admin`` (delete, copy, prune, retention), ``_api`` (the public
sync/async pairs, written once over two adapters), ``sync`` and ``aio`` (the savers).
"""

from langgraph_moa.persistence.saver._codec import INLINE_MAX_BYTES, LEASE_CONFIG_KEY
from langgraph_moa.persistence.saver.aio import AsyncSQLAlchemySaver
from langgraph_moa.persistence.saver.sync import SQLAlchemySaver

__all__ = ["INLINE_MAX_BYTES", "LEASE_CONFIG_KEY", "AsyncSQLAlchemySaver", "SQLAlchemySaver"]
