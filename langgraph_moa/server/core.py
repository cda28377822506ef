"""What every part of the server shares: options, assistants, errors, and the state of a
:class:`ServerCore` (registry, streams, executor, per-thread locks) with its lookups.

:class:`~langgraph_moa.server.service.MoAServer` is assembled from :class:`ServerCore` and the
per-resource parts in ``threads.py``, ``runs.py`` and ``execution.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from langgraph_moa.persistence.assistants import AssistantRecord, AssistantStore
from langgraph_moa.persistence.crons import CronStore
from langgraph_moa.persistence.registry import (
    Owner,
    RunRecord,
    RunRegistry,
    RunStatus,
    ThreadRecord,
)
from langgraph_moa.persistence.store import AsyncSQLAlchemyStore
from langgraph_moa.runtime.api import MoA
from langgraph_moa.runtime.executor import RunExecutor as Runner
from langgraph_moa.server.events import RunStreams
from langgraph_moa.server.executor import InProcessExecutor, RunExecutor
from langgraph_moa.spec import GraphSpec

__all__ = [
    "ACTIVE",
    "NAMESPACE_GRAPH",
    "SPEC_GRAPHS_KEPT",
    "ApiError",
    "Assistant",
    "LiveRun",
    "ServerCore",
    "ServerOptions",
    "iso",
    "not_found",
]

NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""Assistant ids are ``uuid5(NAMESPACE_GRAPH, graph_id)``, as in LangGraph Server."""

ACTIVE: tuple[RunStatus, ...] = ("pending", "running")

SPEC_GRAPHS_KEPT = 16
"""How many graphs compiled from recorded specs (a run's or a cron's spec that is not the
served one) a process keeps, least recently used dropped first."""


class ApiError(Exception):
    """An HTTP error: status code and a ``detail`` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def not_found(thread_id: str) -> ApiError:
    return ApiError(404, f"Thread with ID {thread_id} not found")


def iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value is not None else None


@dataclass
class ServerOptions:
    """Tunables of a :class:`MoAServer`."""

    max_concurrency: int = 8
    """Runs executing at once in this process (the in-process executor)."""
    heartbeat: float = 5.0
    """Seconds between SSE heartbeats and between keep-alive newlines of ``/wait``."""
    persist_streams: bool = True
    """Log every run's events (not only resumable ones): the thread stream
    (``GET /threads/{id}/stream``) and its ``Last-Event-ID`` replay read them, and so do
    runs executed by workers. Off, only ``stream_resumable`` runs are logged."""
    owner_heartbeat: float = 10.0
    """Seconds between heartbeats of thread leases and run owners in the registry, and
    between sweeps for runs whose process is gone."""
    stale_after: float = 30.0
    """A run (and its thread's lease) whose heartbeat is older than this belongs to a dead
    process: any replica takes it over at its next sweep. On one host a dead process id
    counts at once. So a killed replica's runs continue within ``stale_after +
    owner_heartbeat`` seconds (``owner_heartbeat`` on the same host)."""
    cancel_poll: float = 1.0
    """Seconds between checks for cancel requests made through another process."""
    stream_ttl: float = 24 * 3600.0
    """Seconds logged stream events are kept for replay (pruned hourly)."""
    cron_poll: float = 5.0
    """Longest sleep of the cron scheduler between looks for due crons (it also wakes at
    the earliest next tick, and at once for a cron created through this process)."""
    crons: bool = True
    """Run the cron scheduler in this process (every replica may: a tick fires once)."""


@dataclass
class Assistant:
    """A configured spec served as an assistant."""

    spec: GraphSpec
    moa: MoA
    created_at: str

    @property
    def graph_id(self) -> str:
        return self.spec.name

    @property
    def assistant_id(self) -> str:
        return str(uuid.uuid5(NAMESPACE_GRAPH, self.graph_id))

    @property
    def graph(self) -> CompiledStateGraph:
        return self.moa.graph

    def to_json(self) -> dict[str, Any]:
        return {
            "assistant_id": self.assistant_id,
            "graph_id": self.graph_id,
            "config": {},
            "context": {},
            "metadata": {"created_by": "system"},
            "version": 1,
            "name": self.graph_id,
            "description": self.spec.description,
            "created_at": self.created_at,
            "updated_at": self.created_at,
        }


@dataclass
class LiveRun:
    """What this process knows about a run it executes."""

    cancel_action: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ServerCore:
    """The state the server's parts share, and the lookups they all use."""

    def __init__(
        self,
        specs: Sequence[GraphSpec],
        *,
        db_url: str,
        checkpointer: BaseCheckpointSaver[Any] | None = None,
        executor: RunExecutor | None = None,
        options: ServerOptions | None = None,
        role: Literal["server", "worker"] = "server",
    ) -> None:
        if not specs and role == "server":
            raise ValueError("give at least one spec to serve")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"two specs share a name (graph id): {names}; rename one")
        self.specs = list(specs)
        self.db_url = db_url
        self.role = role
        self.options = dataclasses.replace(options) if options else ServerOptions()
        self.executor: RunExecutor = executor or InProcessExecutor(self.options.max_concurrency)
        self.in_process = bool(getattr(self.executor, "in_process", False))
        if not self.in_process or role == "worker":  # events cross processes via the log
            self.options.persist_streams = True
        self._checkpointer = checkpointer
        self._stack: AsyncExitStack | None = None
        self.assistants: dict[str, Assistant] = {}
        self.registry: RunRegistry
        self.streams: RunStreams
        self.store: AsyncSQLAlchemyStore
        self.assistant_store: AssistantStore
        self.cron_store: CronStore
        self.owner = Owner.current()
        self._live: dict[str, LiveRun] = {}
        self._thread_locks: dict[str, asyncio.Lock] = {}
        self._stopping = False
        self._spec_graphs: OrderedDict[str, Assistant] = OrderedDict()
        self._run_graphs_stack = AsyncExitStack()
        self.checkpointer: BaseCheckpointSaver[Any] | None = None
        self.runner: Runner

    @contextlib.asynccontextmanager
    async def _locked(self, thread_id: str) -> AsyncIterator[None]:
        """Serialize run creation and state updates of one thread in this process."""
        lock = self._thread_locks.setdefault(thread_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._thread_locks.pop(thread_id, None)

    async def graph_of_spec(self, spec: GraphSpec | Mapping[str, Any]) -> Assistant:
        """The graph of a recorded spec, compiled once per spec hash: the last
        :data:`SPEC_GRAPHS_KEPT` are kept, so a worker that alternates between specs (crons
        or runs of different versions of one graph) reuses them instead of compiling one
        per run. A dropped graph is not closed: a run may still be using it, and it holds
        nothing but the compiled graph (the checkpointer is the server's)."""
        graph_spec = spec if isinstance(spec, GraphSpec) else GraphSpec.model_validate(spec)
        key = graph_spec.spec_hash()
        found = self._spec_graphs.get(key)
        if found is not None:
            self._spec_graphs.move_to_end(key)
            return found
        moa = MoA(graph_spec, checkpointer=self.checkpointer)
        await moa.__aenter__()
        found = Assistant(graph_spec, moa, datetime.now(UTC).isoformat())
        self._spec_graphs[key] = found
        while len(self._spec_graphs) > SPEC_GRAPHS_KEPT:
            self._spec_graphs.popitem(last=False)
        return found

    def _persist(self, run: RunRecord) -> bool:
        return bool(run.options.get("stream_resumable")) or self.options.persist_streams

    def assistant(self, ref: str, *, for_run: bool = False) -> Assistant:
        """The assistant called ``ref`` (graph name or assistant id)."""
        found = self.assistants.get(ref)
        if found is None:
            found = next((a for a in self.assistants.values() if a.assistant_id == ref), None)
        if found is None:
            if for_run:
                raise ApiError(
                    422,
                    f"Invalid assistant: '{ref}'. Must be either:\n"
                    "- A valid assistant UUID, or\n"
                    f"- One of the registered graphs: {', '.join(self.assistants)}",
                )
            raise ApiError(404, f"Assistant {ref} not found")
        return found

    def _system(self, ref: str) -> Assistant | None:
        found = self.assistants.get(ref)
        if found is None:
            found = next((a for a in self.assistants.values() if a.assistant_id == ref), None)
        return found

    async def resolve_assistant(
        self, tenant: str | None, ref: str, *, for_run: bool = False
    ) -> tuple[Assistant, AssistantRecord | None]:
        """The served graph of the assistant ``ref`` (graph name, system id, or the id of
        one of the tenant's assistants) and the stored assistant if it is one. Another
        tenant's assistant is missing: 404 (422 for a run, as LangGraph Server)."""
        system = self._system(ref)
        if system is not None:
            return system, None
        record = await self._stored(tenant, ref)
        if record is not None and record.graph_id in self.assistants:
            return self.assistants[record.graph_id], record
        return self.assistant(ref, for_run=for_run), None  # raises the usual error

    async def _stored(self, tenant: str | None, ref: str) -> AssistantRecord | None:
        try:
            uuid.UUID(ref)
        except ValueError:
            return None
        return await self.assistant_store.get(tenant, ref)

    async def thread(self, tenant: str | None, thread_id: str) -> ThreadRecord:
        """The tenant's thread (404 for a missing one and for another tenant's)."""
        if not thread_id or len(thread_id) > 255:
            raise not_found(thread_id)
        record = await self.registry.get_thread(thread_id)
        if record is None or (tenant is not None and record.owner != tenant):
            raise not_found(thread_id)
        return record

    async def thread_now(self, record: ThreadRecord) -> Literal["same", "deleted", "other"]:
        """What became of the thread ``record`` was read from: ``same``, ``deleted``, or
        ``other`` when it was deleted and created again under the same id (a new thread,
        maybe another tenant's, whose runs are not the old thread's followers' to see)."""
        now = await self.registry.get_thread(record.thread_id)
        if now is None:
            return "deleted"
        if now.created_at != record.created_at or now.owner != record.owner:
            return "other"
        return "same"

    def _graph_of(self, record: ThreadRecord) -> CompiledStateGraph:
        assistant = self.assistants.get(record.spec_name or "")
        if assistant is None:  # a new thread: any graph reads the same checkpoints
            assistant = next(iter(self.assistants.values()))
        return assistant.graph

    async def _cancel(self, run: RunRecord, action: str) -> None:
        await self._cancel_id(run.run_id, action)

    def cancel_local(self, run_id: str) -> bool:
        """Stop ``run_id`` at once if this process runs it; False otherwise."""
        return self.runner.cancel_local(run_id)

    async def _cancel_id(self, run_id: str, action: str = "interrupt") -> None:
        """Cancel a run wherever it is: a request in the registry that the process holding
        it sees at once when it listens (``moa serve`` or ``moa worker`` on PostgreSQL),
        else within its ``cancel_poll`` seconds; here at once."""
        live = self._live.get(run_id)
        if live is not None:
            live.cancel_action = action
        await self.registry.request_cancel(run_id)
        if not self.runner.cancel_local(run_id):
            await self.executor.cancel(run_id)  # queued here, or a worker's job
