"""The run registry: threads and runs, next to the checkpoints, in the same SQL store.

The checkpointer keeps a run's state; the registry keeps what the state does not
say: which runs exist, their status, who is running them, and what they cost. It
is what ``moa runs`` lists, what ``moa resume`` checks, and what the HTTP server and
the workers read and write.

Tables (prefix ``moa_``, created by :meth:`RunRegistry.setup` through the migration
runner, component ``registry`` of :mod:`.migrations`):

* ``moa_threads``: ``thread_id``, ``created_at``, ``updated_at``, ``metadata`` (JSON),
  ``status`` (``idle | busy | interrupted | error``), ``owner`` (a tenant, nullable),
  ``spec_name``, and the thread's *lease*: ``lease_token`` (NULL = free), ``lease_epoch``
  (incremented at every acquisition), ``lease_heartbeat_at``, ``lease_host``/``lease_pid``
  (the holding process), ``lease_run_id`` (see :meth:`RunRegistry.acquire_lease`).
* ``moa_runs``: ``run_id``, ``thread_id``, ``spec_name``, ``spec_hash``, ``spec``
  (the spec as JSON), ``spec_source`` (the file it came from, if any), ``status``
  (``pending | running | interrupted | success | error | cancelled``), ``input``,
  ``answer``, ``error``, ``waiting_for`` (the interrupts a paused run waits on),
  ``attempts``, owner process (``owner_host``, ``owner_pid``, ``owner_token``) with
  ``heartbeat_at``, ``created_at``, ``updated_at``, ``started_at``, ``finished_at``,
  ``usage`` (totals), ``metadata`` and ``options`` (JSON for callers' own use),
  ``parent_run_id`` and ``checkpoint_id`` (where a fork started), ``cancel_requested_at``
  (see :meth:`RunRegistry.request_cancel`).

Usage (async only; the engine is a SQLAlchemy ``AsyncEngine``)::

    registry = RunRegistry.from_engine(saver.engine)   # share the checkpointer's engine
    # or: async with RunRegistry.from_url("sqlite:///moa.sqlite") as registry:
    await registry.setup()
    await registry.create_thread("t1", metadata={"user": "ann"}, owner="tenant-a")
    run = await registry.create_run("t1", spec=spec_json, spec_name="team",
                                    spec_hash=h, input={"task": "..."}, owner=Owner.current())
    await registry.heartbeat(run.run_id, Owner.current())      # False: ownership lost
    await registry.update_run(run.run_id, owner=Owner.current(), status="success",
                              answer="...", release=True)

Ownership: a run is owned by at most one live process. :meth:`RunRegistry.claim_run`
takes a run atomically (a compare-and-swap on ``owner_token``) when it is free, owned
by the caller, or its owner is gone: heartbeat older than ``stale_after`` seconds, or
a process id that is dead on this host. Otherwise it raises :class:`RunOwnedError`
naming the owner. Updates passed ``owner=`` are fenced: they raise
:class:`OwnershipLostError` when another process has taken the run since.

Status changes of a run also set its thread's status (``running``/``pending`` ->
``busy``, ``interrupted`` -> ``interrupted``, ``error`` -> ``error``, others ->
``idle``) in the same transaction, unless ``sync_thread=False``.

Times are naive UTC ``datetime`` values taken from this process's clock.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence.engines import get_async_engine
from langgraph_moa.persistence.registry._tables import (
    _V1_COLUMNS as _V1_COLUMNS,
)
from langgraph_moa.persistence.registry._tables import (
    _migration_1 as _migration_1,
)
from langgraph_moa.persistence.registry._tables import (
    _migration_2 as _migration_2,
)
from langgraph_moa.persistence.registry._tables import (
    runs_table as runs_table,
)
from langgraph_moa.persistence.registry._tables import (
    threads_table as threads_table,
)
from langgraph_moa.persistence.registry.leases import LeasesMixin
from langgraph_moa.persistence.registry.runs import RunsMixin
from langgraph_moa.persistence.run_records import (
    ACTIVE_STATUSES as ACTIVE_STATUSES,
)
from langgraph_moa.persistence.run_records import (
    CANCEL_CHANNEL as CANCEL_CHANNEL,
)
from langgraph_moa.persistence.run_records import (
    DEFAULT_STALE_AFTER as DEFAULT_STALE_AFTER,
)
from langgraph_moa.persistence.run_records import (
    RUN_STATUSES as RUN_STATUSES,
)
from langgraph_moa.persistence.run_records import (
    THREAD_STATUSES as THREAD_STATUSES,
)
from langgraph_moa.persistence.run_records import (
    LeaseHeldError as LeaseHeldError,
)
from langgraph_moa.persistence.run_records import (
    Owner as Owner,
)
from langgraph_moa.persistence.run_records import (
    OwnershipLostError as OwnershipLostError,
)
from langgraph_moa.persistence.run_records import (
    RegistryError as RegistryError,
)
from langgraph_moa.persistence.run_records import (
    RunNotFoundError as RunNotFoundError,
)
from langgraph_moa.persistence.run_records import (
    RunOwnedError as RunOwnedError,
)
from langgraph_moa.persistence.run_records import (
    RunRecord as RunRecord,
)
from langgraph_moa.persistence.run_records import (
    RunStatus as RunStatus,
)
from langgraph_moa.persistence.run_records import (
    ThreadExistsError as ThreadExistsError,
)
from langgraph_moa.persistence.run_records import (
    ThreadNotFoundError as ThreadNotFoundError,
)
from langgraph_moa.persistence.run_records import (
    ThreadRecord as ThreadRecord,
)
from langgraph_moa.persistence.run_records import (
    ThreadStatus as ThreadStatus,
)
from langgraph_moa.persistence.run_records import (
    pid_alive as pid_alive,
)
from langgraph_moa.persistence.run_records import (
    thread_status_for as thread_status_for,
)

__all__ = [
    "CANCEL_CHANNEL",
    "RUN_STATUSES",
    "THREAD_STATUSES",
    "LeaseHeldError",
    "Owner",
    "OwnershipLostError",
    "RegistryError",
    "RunNotFoundError",
    "RunOwnedError",
    "RunRecord",
    "RunRegistry",
    "RunStatus",
    "ThreadExistsError",
    "ThreadNotFoundError",
    "ThreadRecord",
    "ThreadStatus",
    "pid_alive",
    "thread_status_for",
]


class RunRegistry(RunsMixin, LeasesMixin):
    """Threads and runs in ``moa_threads``/``moa_runs`` (see the module docstring)."""

    @classmethod
    def from_url(cls, url: str | sa.URL, **engine_kwargs: Any) -> RunRegistry:
        """A registry on the process's engine of ``url`` (:mod:`.engines`; given back by
        :meth:`aclose`)."""
        return cls(get_async_engine(url, **engine_kwargs), owns_engine=True)

    @classmethod
    def from_engine(cls, engine: AsyncEngine | Engine) -> RunRegistry:
        """A registry on a checkpointer's engine (``saver.engine``); a sync engine's URL
        is reopened with an async driver."""
        if isinstance(engine, AsyncEngine):
            return cls(engine)
        if isinstance(engine, Engine):
            return cls.from_url(engine.url)
        raise TypeError(f"expected a SQLAlchemy Engine or AsyncEngine, got {type(engine)}")

    async def __aenter__(self) -> RunRegistry:
        return self
