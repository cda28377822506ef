"""The server's core, independent of HTTP: assistants, threads, runs and their execution.

:class:`MoAServer` binds each configured spec (an *assistant*, addressed by its graph
name or a UUID derived from it) to the checkpointer, keeps threads and runs in the run
registry (``moa_threads``/``moa_runs``), executes runs through a :class:`RunExecutor`
and fans their events out through :class:`RunStreams`. Every thread belongs to a tenant;
a thread of another tenant is reported as missing (404), never as forbidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import EmptyInputError, GraphRecursionError, InvalidUpdateError
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Send
from sqlalchemy.ext.asyncio import create_async_engine

from langgraph_moa.graphs import TaskError
from langgraph_moa.nodes.synthesizer import ContextWindowError, QuorumError
from langgraph_moa.persistence.registry import (
    Owner,
    OwnershipLostError,
    RunOwnedError,
    RunRecord,
    RunRegistry,
    RunStatus,
    ThreadExistsError,
    ThreadRecord,
    async_url,
)
from langgraph_moa.runtime.api import MoA
from langgraph_moa.runtime.store import open_checkpointer
from langgraph_moa.server import serde
from langgraph_moa.server.events import RunStreams, StreamEvent, engine_json_options
from langgraph_moa.server.executor import InProcessExecutor, RunExecutor
from langgraph_moa.server.schemas import (
    CommandModel,
    HistoryRequest,
    RunCreate,
    StatelessRunCreate,
    StateUpdate,
    ThreadCreate,
    ThreadSearch,
)
from langgraph_moa.server.streaming import StreamMapper, graph_stream_modes
from langgraph_moa.spec import GraphSpec, SpecError

__all__ = ["NAMESPACE_GRAPH", "ApiError", "Assistant", "MoAServer", "ServerOptions"]

log = logging.getLogger("langgraph_moa.server")

NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""Assistant ids are ``uuid5(NAMESPACE_GRAPH, graph_id)``, as in LangGraph Server."""

ACTIVE: tuple[RunStatus, ...] = ("pending", "running")
RESERVED_CONFIGURABLE = ("thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map")
SHOWN_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    QuorumError,
    ContextWindowError,
    GraphRecursionError,
    InvalidUpdateError,
    EmptyInputError,
    TaskError,
    SpecError,
)
"""Errors whose message reaches the client; any other says only "An internal error
occurred" (the traceback goes to the server log)."""


class UnknownInterruptError(ValueError):
    """A ``strict_resume`` run answers an interrupt that is not waiting."""


class ApiError(Exception):
    """An HTTP error: status code and a ``detail`` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _not_found(thread_id: str) -> ApiError:
    return ApiError(404, f"Thread with ID {thread_id} not found")


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value is not None else None


@dataclass
class ServerOptions:
    """Tunables of a :class:`MoAServer`."""

    max_concurrency: int = 8
    """Runs executing at once in this process (the in-process executor)."""
    heartbeat: float = 5.0
    """Seconds between SSE heartbeats and between keep-alive newlines of ``/wait``."""
    persist_streams: bool = False
    """Log every run's events (not only resumable ones), e.g. for workers."""
    owner_heartbeat: float = 10.0
    """Seconds between run-ownership heartbeats in the registry."""
    stale_after: float = 30.0
    """A run whose owner's heartbeat is older than this is resumed at startup."""
    stream_ttl: float = 24 * 3600.0
    """Seconds logged stream events are kept for replay (pruned hourly)."""


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
class _Live:
    """What this process knows about a run it executes."""

    cancel_action: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class MoAServer:
    """Assistants, threads and runs over the registry, the checkpointer and an executor.

    Use as an async context manager (or :meth:`start`/:meth:`stop`)::

        async with MoAServer([spec], db_url="sqlite:///moa.sqlite") as server:
            app.include_router(create_router(server))
    """

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
        self.owner = Owner.current()
        self._live: dict[str, _Live] = {}
        self._thread_locks: dict[str, asyncio.Lock] = {}
        self._stopping = False
        self._spec_graphs: dict[str, Assistant] = {}
        self._run_graphs_stack = AsyncExitStack()
        self.checkpointer: BaseCheckpointSaver[Any] | None = None

    # ------------------------------------------------------------- lifecycle ---

    async def __aenter__(self) -> MoAServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the stores, compile the graphs, and resume runs a previous process left."""
        stack = AsyncExitStack()
        try:
            checkpointer = self._checkpointer
            if checkpointer is None:
                checkpointer = await stack.enter_async_context(open_checkpointer(self.db_url))
            self.registry = RunRegistry.from_url(self.db_url)
            stack.push_async_callback(self.registry.aclose)
            await self.registry.setup()
            target = async_url(self.db_url)
            kwargs: dict[str, Any] = engine_json_options()
            if target.get_backend_name() == "sqlite":
                kwargs["connect_args"] = {"timeout": 30}
            else:
                kwargs["pool_pre_ping"] = True
            engine = create_async_engine(target, **kwargs)
            stack.push_async_callback(engine.dispose)
            self.streams = RunStreams(engine)
            await self.streams.setup()
            self.checkpointer = checkpointer
            now = datetime.now(UTC).isoformat()
            for spec in self.specs:
                moa = MoA(spec, checkpointer=checkpointer)
                await stack.enter_async_context(moa)
                self.assistants[spec.name] = Assistant(spec, moa, now)
            self._run_graphs_stack = stack
            if self.role == "server":
                await self.executor.start(self)
                stack.push_async_callback(self._shutdown_executor)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        if self.role == "server":
            pruner = asyncio.create_task(self._prune_events(), name="moa-prune-events")
            stack.push_async_callback(_cancel_task, pruner)
        if self.role == "server" and self.in_process:
            await self._resume_left_runs()

    async def stop(self) -> None:
        """Stop running runs (they resume at the next start) and close the stores."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

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

    async def _shutdown_executor(self) -> None:
        self._stopping = True
        await self.executor.aclose()

    async def _resume_left_runs(self) -> None:
        """Runs this server accepted whose process is gone: continue or start them."""
        for run in await self.registry.stale_runs(stale_after=self.options.stale_after):
            if not run.options.get("server"):
                continue  # someone else's (e.g. a worker queue's) run
            self.streams.open(run.run_id, persist=self._persist(run))
            self._live.setdefault(run.run_id, _Live())
            await self.executor.submit(run.run_id, run.thread_id, resume=run.status == "running")

    def _persist(self, run: RunRecord) -> bool:
        return bool(run.options.get("stream_resumable")) or self.options.persist_streams

    # ------------------------------------------------------------ assistants ---

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

    # --------------------------------------------------------------- threads ---

    async def thread(self, tenant: str | None, thread_id: str) -> ThreadRecord:
        """The tenant's thread (404 for a missing one and for another tenant's)."""
        if not thread_id or len(thread_id) > 255:
            raise _not_found(thread_id)
        record = await self.registry.get_thread(thread_id)
        if record is None or (tenant is not None and record.owner != tenant):
            raise _not_found(thread_id)
        return record

    def _graph_of(self, record: ThreadRecord) -> CompiledStateGraph:
        assistant = self.assistants.get(record.spec_name or "")
        if assistant is None:  # a new thread: any graph reads the same checkpoints
            assistant = next(iter(self.assistants.values()))
        return assistant.graph

    async def thread_json(
        self, record: ThreadRecord, select: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """A thread as the API shapes it, with its current values and interrupts."""
        out: dict[str, Any] = {
            "thread_id": record.thread_id,
            "created_at": _iso(record.created_at),
            "updated_at": _iso(record.updated_at),
            "state_updated_at": _iso(record.updated_at),
            "metadata": record.metadata,
            "status": record.status,
            "config": {},
        }
        if select is None or {"values", "interrupts", "error", "config"} & set(select):
            snapshot = await self._graph_of(record).aget_state(MoA.config(record.thread_id))
            if serde.checkpoint_of(snapshot.config) is None:  # no run yet
                out["values"] = None
            else:
                interrupts: dict[str, list[Any]] = {}
                for task in snapshot.tasks:
                    if task.interrupts:
                        interrupts[task.id] = [serde.interrupt_json(i) for i in task.interrupts]
                out["values"] = serde.jsonable(snapshot.values or {})
                out["interrupts"] = serde.jsonable(interrupts)
                out["error"] = await self._thread_error(record)
                assistant = self.assistants.get(record.spec_name or "")
                out["config"] = {
                    "configurable": {
                        "thread_id": record.thread_id,
                        **(
                            {"graph_id": assistant.graph_id, "assistant_id": assistant.assistant_id}
                            if assistant is not None
                            else {}
                        ),
                    }
                }
        if select is not None:
            out = {k: v for k, v in out.items() if k in select}
        return out

    async def _thread_error(self, record: ThreadRecord) -> Any:
        if record.status != "error":
            return None
        run = await self.registry.latest_run(record.thread_id)
        if run is None or not run.error:
            return None
        name, _, message = run.error.partition(": ")
        return {"error": name, "message": message}

    async def create_thread(self, tenant: str | None, body: ThreadCreate) -> ThreadRecord:
        thread_id = body.thread_id or str(uuid.uuid4())
        existing = await self.registry.get_thread(thread_id)
        if existing is not None:
            if body.if_exists == "do_nothing" and (tenant is None or existing.owner == tenant):
                return existing
            raise ApiError(409, f"Thread with ID {thread_id} already exists")
        try:
            return await self.registry.create_thread(
                thread_id, metadata=body.metadata or {}, owner=tenant
            )
        except ThreadExistsError:
            raise ApiError(409, f"Thread with ID {thread_id} already exists") from None

    async def search_threads(self, tenant: str | None, body: ThreadSearch) -> list[dict[str, Any]]:
        records = await self.registry.search_threads(
            metadata=body.metadata,
            status=body.status,
            owner=tenant,
            thread_ids=body.ids,
            limit=body.limit,
            offset=body.offset,
            sort_by=body.sort_by or "created_at",
            sort_order=body.sort_order or "desc",
        )
        return [await self.thread_json(r, body.select) for r in records]

    async def patch_thread(
        self, tenant: str | None, thread_id: str, metadata: Mapping[str, Any] | None
    ) -> ThreadRecord:
        await self.thread(tenant, thread_id)
        return await self.registry.update_thread(thread_id, metadata=metadata or {})

    async def delete_thread(self, tenant: str | None, thread_id: str) -> None:
        record = await self.thread(tenant, thread_id)
        runs = await self.registry.list_runs(thread_id=thread_id, limit=10_000)
        for run in runs:
            if run.status in ACTIVE:
                await self._cancel(run, "interrupt")
                await self.executor.wait(run.run_id)
        await self.registry.delete_thread(thread_id)
        await self.streams.delete([r.run_id for r in runs])
        checkpointer = self._graph_of(record).checkpointer
        if isinstance(checkpointer, BaseCheckpointSaver):
            await checkpointer.adelete_thread(thread_id)

    # ----------------------------------------------------------------- state ---

    async def get_state(
        self,
        tenant: str | None,
        thread_id: str,
        checkpoint: Mapping[str, Any] | None = None,
        *,
        subgraphs: bool = False,
    ) -> dict[str, Any]:
        record = await self.thread(tenant, thread_id)
        config = self._checkpoint_config(thread_id, checkpoint)
        snapshot = await self._graph_of(record).aget_state(config, subgraphs=subgraphs)
        return serde.snapshot_json(snapshot)

    @staticmethod
    def _checkpoint_config(thread_id: str, checkpoint: Mapping[str, Any] | None) -> RunnableConfig:
        configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
        if checkpoint and checkpoint.get("checkpoint_id"):
            configurable["checkpoint_id"] = checkpoint["checkpoint_id"]
        return {"configurable": configurable}

    async def update_state(
        self, tenant: str | None, thread_id: str, body: StateUpdate
    ) -> dict[str, Any]:
        record = await self.thread(tenant, thread_id)
        async with self._locked(thread_id):
            if await self.registry.list_runs(thread_id=thread_id, status=list(ACTIVE), limit=1):
                raise ApiError(409, "Thread is busy with a run; update its state once it ends")
            checkpoint = body.checkpoint.model_dump() if body.checkpoint else {}
            if body.checkpoint_id:
                checkpoint["checkpoint_id"] = body.checkpoint_id
            graph = self._graph_of(record)
            if body.as_node is not None and body.as_node not in graph.nodes:
                raise ApiError(
                    422,
                    f"as_node: unknown node {body.as_node!r}; nodes: "
                    f"{', '.join(n for n in graph.nodes if n != '__start__')}",
                )
            try:
                config = await graph.aupdate_state(
                    self._checkpoint_config(thread_id, checkpoint),
                    body.values,
                    as_node=body.as_node,
                )
            except (InvalidUpdateError, ValueError) as exc:
                raise ApiError(422, f"cannot update the state: {exc}") from None
            snapshot = await graph.aget_state(MoA.config(thread_id))
            await self.registry.update_thread(
                thread_id, status="interrupted" if snapshot.next else "idle"
            )
        written = serde.checkpoint_of(config)
        return {
            "checkpoint": written,
            "checkpoint_id": (written or {}).get("checkpoint_id"),
            "configurable": written,
        }

    async def history(
        self, tenant: str | None, thread_id: str, body: HistoryRequest
    ) -> list[dict[str, Any]]:
        record = await self.thread(tenant, thread_id)
        before = body.before
        before_config = None
        if before is not None:
            before_id = before if isinstance(before, str) else before.checkpoint_id
            before_config = self._checkpoint_config(thread_id, {"checkpoint_id": before_id})
        checkpoint = body.checkpoint.model_dump() if body.checkpoint else None
        states = []
        async for snapshot in self._graph_of(record).aget_state_history(
            self._checkpoint_config(thread_id, checkpoint),
            filter=body.metadata or None,
            before=before_config,
            limit=body.limit,
        ):
            state = serde.snapshot_json(snapshot)
            if body.select:
                state = {k: v for k, v in state.items() if k in body.select}
            states.append(state)
        return states

    # ------------------------------------------------------------------ runs ---

    def run_json(self, run: RunRecord) -> dict[str, Any]:
        """A run as the API shapes it (``cancelled`` shows as ``interrupted``)."""
        options = run.options
        status = "interrupted" if run.status == "cancelled" else run.status
        return {
            "run_id": run.run_id,
            "thread_id": run.thread_id,
            "assistant_id": options.get("assistant_id"),
            "created_at": _iso(run.created_at),
            "updated_at": _iso(run.updated_at),
            "status": status,
            "metadata": run.metadata,
            "multitask_strategy": options.get("multitask_strategy", "enqueue"),
            "kwargs": {
                "input": run.input if options.get("command") is None else None,
                "command": options.get("command"),
                "config": options.get("config") or {},
                "context": {},
                "stream_mode": options.get("stream_mode", ["values"]),
                "interrupt_before": options.get("interrupt_before"),
                "interrupt_after": options.get("interrupt_after"),
                "webhook": None,
                "feedback_keys": None,
                "temporary": bool(options.get("temporary")),
                "subgraphs": bool(options.get("stream_subgraphs")),
                "resumable": bool(options.get("stream_resumable")),
                "durability": options.get("durability", "async"),
                "checkpoint_during": options.get("durability", "async") != "exit",
            },
        }

    async def run(self, tenant: str | None, thread_id: str, run_id: str) -> RunRecord:
        """The tenant's run of a thread (404 otherwise)."""
        await self.thread(tenant, thread_id)
        run = await self.registry.get_run(run_id)
        if run is None or run.thread_id != thread_id:
            raise ApiError(404, f"Run with ID {run_id} not found")
        return run

    async def list_runs(
        self,
        tenant: str | None,
        thread_id: str,
        *,
        limit: int,
        offset: int,
        status: str | None,
    ) -> list[RunRecord]:
        await self.thread(tenant, thread_id)
        statuses: list[Any] | None = None
        if status is not None:
            statuses = ["interrupted", "cancelled"] if status == "interrupted" else [status]
        return await self.registry.list_runs(
            thread_id=thread_id, status=statuses, limit=limit, offset=offset
        )

    async def create_run(
        self,
        tenant: str | None,
        thread_id: str | None,
        body: RunCreate | StatelessRunCreate,
        *,
        stream_modes: list[str] | None = None,
        subscribe: bool = True,
    ) -> tuple[RunRecord, AsyncIterator[StreamEvent] | None]:
        """Validate, record and submit a run; returns it with a subscription to its events
        (taken before the run starts, so nothing is missed) when ``subscribe``."""
        assistant = self.assistant(body.assistant_id, for_run=True)
        graph = assistant.graph
        modes = stream_modes or body.stream_modes
        for field_name in ("interrupt_before", "interrupt_after"):
            nodes = getattr(body, field_name)
            if isinstance(nodes, list):
                unknown = [n for n in nodes if n not in graph.nodes]
                if unknown:
                    raise ApiError(
                        422,
                        f"{field_name}: unknown node(s) {unknown}; the graph's nodes are "
                        f"{', '.join(n for n in graph.nodes if n != '__start__')}",
                    )
        config = body.config.model_dump(exclude_none=True) if body.config else {}
        configurable = config.get("configurable") or {}
        bad = [k for k in configurable if k in RESERVED_CONFIGURABLE or k.startswith("__")]
        if bad:
            raise ApiError(
                422,
                f"config.configurable: {bad} cannot be set by a client; the thread comes "
                "from the URL and the checkpoint from `checkpoint`/`checkpoint_id`",
            )
        stateless = isinstance(body, StatelessRunCreate)
        options: dict[str, Any] = {
            "server": True,
            "assistant_id": assistant.assistant_id,
            "graph_id": assistant.graph_id,
            "multitask_strategy": getattr(body, "multitask_strategy", "enqueue"),
            "stream_mode": modes,
            "stream_subgraphs": body.stream_subgraphs,
            "stream_resumable": body.stream_resumable,
            "durability": body.effective_durability,
            "interrupt_before": body.interrupt_before,
            "interrupt_after": body.interrupt_after,
            "config": config,
            "command": body.command.model_dump(exclude_none=True) if body.command else None,
            "strict_resume": getattr(body, "strict_resume", False),
            "temporary": stateless and cast(StatelessRunCreate, body).on_completion == "delete",
            "tenant": tenant,
        }
        checkpoint_id = None
        if isinstance(body, RunCreate):
            checkpoint_id = body.checkpoint_id or (
                body.checkpoint.checkpoint_id if body.checkpoint else None
            )
        run_id = str(uuid.uuid4())
        if thread_id is None:
            thread_id = str(uuid.uuid4())
            await self.registry.create_thread(thread_id, owner=tenant, spec_name=assistant.graph_id)
        async with self._locked(thread_id):
            existing = await self.registry.get_thread(thread_id)
            if existing is None:
                if body.if_not_exists != "create":
                    raise _not_found(thread_id)
                existing = await self.registry.create_thread(
                    thread_id, owner=tenant, spec_name=assistant.graph_id, if_exists="do_nothing"
                )
            elif tenant is not None and existing.owner != tenant:
                raise _not_found(thread_id)
            ids = {"graph_id": assistant.graph_id, "assistant_id": assistant.assistant_id}
            if any(k not in existing.metadata for k in ids):  # how clients find their threads
                await self.registry.update_thread(thread_id, metadata={**ids, **existing.metadata})
            run_metadata = {
                "created_by": "system",
                **existing.metadata,
                **ids,
                **(body.metadata or {}),
            }
            active = await self.registry.list_runs(
                thread_id=thread_id, status=list(ACTIVE), limit=1000
            )
            strategy = options["multitask_strategy"]
            if active and strategy == "reject":
                raise ApiError(
                    409,
                    "Thread is already running a task. Wait for it to finish or choose a "
                    "different multitask strategy.",
                )
            if active and strategy == "interrupt":
                for other in active:
                    await self._cancel(other, "interrupt")
            run = await self.registry.create_run(
                thread_id,
                run_id=run_id,
                spec=assistant.spec.model_dump(mode="json"),
                spec_name=assistant.graph_id,
                spec_hash=assistant.spec.spec_hash(),
                input=body.input,
                metadata=run_metadata,
                options=options,
                checkpoint_id=checkpoint_id,
                tenant=tenant,
            )
            if self.in_process:
                self.streams.open(run_id, persist=self._persist(run))
                self._live[run_id] = _Live()
            subscription = (
                self.streams.subscribe(
                    run_id, last_event_id=0, is_active=lambda: self.is_active(run_id)
                )
                if subscribe
                else None
            )
            await self.executor.submit(run_id, thread_id)
        return run, subscription

    async def cancel_run(
        self, tenant: str | None, thread_id: str, run_id: str, action: str
    ) -> RunRecord:
        if action != "interrupt":
            raise ApiError(
                422,
                f"cancel action {action!r} is not supported; use 'interrupt' (checkpoints "
                "are never rolled back)",
            )
        run = await self.run(tenant, thread_id, run_id)
        if run.status in ACTIVE:
            await self._cancel(run, action)
        return run

    async def cancel_if_active(self, run_id: str) -> None:
        """Cancel ``run_id`` if it is still pending or running (a client went away)."""
        run = await self.registry.get_run(run_id)
        if run is not None and run.status in ACTIVE:
            await self._cancel(run, "interrupt")

    async def _cancel(self, run: RunRecord, action: str) -> None:
        live = self._live.get(run.run_id)
        if live is not None:
            live.cancel_action = action
        if not await self.executor.cancel(run.run_id):
            # not in this process's executor: mark it so whoever runs it stops
            with contextlib.suppress(OwnershipLostError):
                await self.registry.update_run(run.run_id, status="cancelled")

    async def wait_run(self, run_id: str) -> None:
        """Return once ``run_id`` has ended (a run of another process: poll the registry)."""
        live = self._live.get(run_id)
        if live is not None:
            await live.done.wait()
            return
        while True:
            run = await self.registry.get_run(run_id)
            if run is None or run.status not in ACTIVE:
                return
            await asyncio.sleep(0.25)

    async def is_active(self, run_id: str) -> bool:
        run = await self.registry.get_run(run_id)
        return run is not None and run.status in ACTIVE

    async def result(self, run: RunRecord, values: Any = None) -> dict[str, Any]:
        """What ``/wait`` and ``/join`` return for an ended run: the values, or
        ``{"__error__": ...}``, or the values with ``__interrupt__``."""
        run = await self.registry.get_run(run.run_id) or run
        if run.status == "error":
            name, _, message = (run.error or "Error: ").partition(": ")
            return {"__error__": {"error": name, "message": message}}
        if values is None:
            record = await self.registry.get_thread(run.thread_id)
            if record is None:
                return {}
            graph = self._graph_of(record)
            snapshot = await graph.aget_state(MoA.config(run.thread_id))
            output = set(graph.output_channels)
            values = serde.jsonable(
                {k: v for k, v in (snapshot.values or {}).items() if k in output}
            )
            if snapshot.interrupts:
                values["__interrupt__"] = [serde.interrupt_json(i) for i in snapshot.interrupts]
        return cast(dict[str, Any], values)

    # ------------------------------------------------------------- execution ---

    async def dequeued(self, run_id: str) -> None:
        """A queued run was cancelled before it started."""
        run = await self.registry.get_run(run_id)
        if run is not None and run.status in ACTIVE:
            await self.registry.update_run(run_id, status="cancelled", release=True)
        await self._finish(run_id)

    async def _finish(self, run_id: str) -> None:
        await self.streams.close(run_id)
        live = self._live.pop(run_id, None)
        if live is not None:
            live.done.set()

    async def execute(self, run_id: str, *, resume: bool) -> None:
        """Execute one run to its end; record its status before its stream closes."""
        live = self._live.setdefault(run_id, _Live())
        try:
            run = await self._claim(run_id)
        except asyncio.CancelledError:
            if self.role == "worker":
                raise
            if self._stopping and live.cancel_action is None:
                await asyncio.shield(self._hand_back(run_id))
            else:
                await asyncio.shield(self.dequeued(run_id))
            return
        if run is None:
            await self._finish(run_id)
            return
        beat = asyncio.create_task(self._heartbeat(run_id))
        final: dict[str, Any] | None = {}
        try:
            final = await self._stream_run(run, resume=resume)
        except asyncio.CancelledError:
            if self.role == "worker":
                final = None  # the worker decides: a user's abort, or a drain (re-queue)
                raise
            if self._stopping and live.cancel_action is None:
                final = None  # shutdown: left running and free, resumed at the next start
            else:
                final = {"status": "cancelled"}
        except Exception as exc:
            error = self._error_of(exc, run_id)
            await self._publish(run_id, "error", error)
            final = {"status": "error", "error": f"{error['error']}: {error['message']}"}
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            if final is None:
                await asyncio.shield(self._hand_back(run_id))
            else:
                await asyncio.shield(self._record_end(run, final))

    async def _claim(self, run_id: str) -> RunRecord | None:
        """Take the run for this process; None when it is not to be run here."""
        queued = await self.registry.get_run(run_id)
        if queued is None or queued.status not in ACTIVE:
            return None  # cancelled or deleted while it waited
        if not self.streams.is_open(run_id):
            self.streams.open(run_id, persist=self._persist(queued))
        try:
            run = await self.registry.claim_run(
                run_id, self.owner, stale_after=self.options.stale_after
            )
        except RunOwnedError:
            log.info("run %s is owned by another process; not running it here", run_id)
            return None
        return run if run.status == "running" else None

    async def _hand_back(self, run_id: str) -> None:
        """Stop without a final status: the run stays active and free, for another process
        or the next start to continue."""
        with contextlib.suppress(Exception):
            await self.registry.release_run(run_id, self.owner)
        self.streams.forget(run_id)
        live = self._live.pop(run_id, None)
        if live is not None:
            live.done.set()

    async def _record_end(self, run: RunRecord, final: dict[str, Any]) -> None:
        run_id = run.run_id
        try:
            status = final.pop("status", None)
            values = {"status": status, **final} if status is not None else {}
            with contextlib.suppress(OwnershipLostError):
                await self.registry.release_run(run_id, self.owner, **values)
            if status is not None and run.options.get("temporary"):
                await self._drop_thread(run.thread_id, run_id)
        except Exception:
            log.exception("cannot record the end of run %s", run_id)
        finally:
            await self._finish(run_id)

    async def _drop_thread(self, thread_id: str, run_id: str) -> None:
        record = await self.registry.get_thread(thread_id)
        await self.registry.delete_thread(thread_id)
        await self.streams.delete([run_id])
        if record is not None:
            checkpointer = self._graph_of(record).checkpointer
            if isinstance(checkpointer, BaseCheckpointSaver):
                await checkpointer.adelete_thread(thread_id)

    async def _prune_events(self) -> None:
        while True:
            try:
                await self.streams.prune(self.options.stream_ttl)
            except Exception:
                log.warning("cannot prune old stream events", exc_info=True)
            await asyncio.sleep(min(3600.0, self.options.stream_ttl))

    async def _heartbeat(self, run_id: str) -> None:
        while True:
            await asyncio.sleep(self.options.owner_heartbeat)
            with contextlib.suppress(Exception):
                await self.registry.heartbeat(run_id, self.owner)

    async def _publish(self, run_id: str, event: str, data: Any) -> None:
        await self.streams.publish(run_id, event, serde.dumps(data))

    @staticmethod
    def _error_of(exc: BaseException, run_id: str) -> dict[str, str]:
        if isinstance(exc, SHOWN_ERRORS):
            return {"error": type(exc).__name__, "message": str(exc)}
        log.error("run %s failed", run_id, exc_info=exc)
        return {"error": type(exc).__name__, "message": "An internal error occurred"}

    async def _stream_run(self, run: RunRecord, *, resume: bool) -> dict[str, Any]:
        options = run.options
        assistant = await self._assistant_of_run(run)
        graph = assistant.graph
        run_id, thread_id = run.run_id, run.thread_id
        await self._publish(run_id, "metadata", {"run_id": run_id, "attempt": run.attempts})
        config = self._run_config(run)
        graph_input = await self._input_of(run, graph, config, resume=resume)
        modes: list[str] = list(options.get("stream_mode") or ["values"])
        mapper = StreamMapper(modes, subgraphs=bool(options.get("stream_subgraphs")))
        stream = graph.astream(
            graph_input,
            config,
            stream_mode=cast(Any, graph_stream_modes(modes)),
            subgraphs=True,
            output_keys=graph.output_channels,
            durability=options.get("durability") or "async",
            interrupt_before=options.get("interrupt_before"),
            interrupt_after=options.get("interrupt_after"),
        )
        async for item in stream:
            namespace, mode, chunk = cast(tuple[tuple[str, ...], str, Any], item)
            for event, payload in mapper.map(namespace, mode, chunk):
                await self._publish(run_id, event, payload)
        result = await assistant.moa.aresult(thread_id, run_id)
        final: dict[str, Any] = {
            "status": "interrupted" if result.status == "interrupted" else "success",
            "answer": result.answer,
            "usage": {"total": result.usage, "by_agent": result.usage_by_agent},
            "waiting_for": serde.jsonable(result.interrupts) or None,
        }
        return final

    async def _assistant_of_run(self, run: RunRecord) -> Assistant:
        """The graph a run was created for: the served spec, or (in a worker, or after the
        spec file changed) the spec recorded with the run."""
        served = self.assistants.get(str(run.options.get("graph_id")))
        if served is not None and (
            run.spec_hash is None or served.spec.spec_hash() == run.spec_hash
        ):
            return served
        if run.spec is None:
            raise ValueError(f"run {run.run_id} has no recorded spec and its graph is not served")
        key = run.spec_hash or run.run_id
        if key not in self._spec_graphs:
            spec = GraphSpec.model_validate(run.spec)
            moa = MoA(spec, checkpointer=self.checkpointer)
            await self._run_graphs_stack.enter_async_context(moa)
            self._spec_graphs[key] = Assistant(spec, moa, datetime.now(UTC).isoformat())
        return self._spec_graphs[key]

    def _run_config(self, run: RunRecord) -> RunnableConfig:
        options = run.options
        requested: dict[str, Any] = dict(options.get("config") or {})
        configurable = {**(requested.pop("configurable", None) or {}), "thread_id": run.thread_id}
        if run.checkpoint_id:
            configurable["checkpoint_id"] = run.checkpoint_id
        metadata = {
            **(requested.pop("metadata", None) or {}),
            **(run.metadata or {}),
            "run_id": run.run_id,
            "thread_id": run.thread_id,
            "assistant_id": options.get("assistant_id"),
            "graph_id": options.get("graph_id"),
            "run_attempt": run.attempts,
        }
        config: dict[str, Any] = {
            **requested,
            "configurable": configurable,
            "metadata": metadata,
            "run_id": uuid.UUID(run.run_id),
        }
        return cast(RunnableConfig, config)

    async def _input_of(
        self,
        run: RunRecord,
        graph: CompiledStateGraph,
        config: RunnableConfig,
        *,
        resume: bool,
    ) -> Any:
        options = run.options
        if resume:
            snapshot = await graph.aget_state(config)
            if snapshot.next and (snapshot.metadata or {}).get("run_id") == run.run_id:
                return None  # continue from this run's last checkpoint
        command = options.get("command")
        if command:
            if options.get("strict_resume") and command.get("resume") is not None:
                snapshot = await graph.aget_state(config)
                if not snapshot.interrupts:
                    raise UnknownInterruptError(
                        "the thread is not waiting on an interrupt, so there is nothing to "
                        "resume (strict_resume)"
                    )
            return _command(CommandModel.model_validate(command))
        return run.input


async def _cancel_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _command(model: CommandModel) -> Command[Any]:
    goto: Any = model.goto
    if isinstance(goto, dict):
        goto = Send(goto["node"], goto.get("input"))
    elif isinstance(goto, list):
        goto = [Send(g["node"], g.get("input")) if isinstance(g, dict) else g for g in goto]
    kwargs: dict[str, Any] = {}
    if model.resume is not None:
        kwargs["resume"] = model.resume
    if model.update is not None:
        kwargs["update"] = model.update
    if goto is not None:
        kwargs["goto"] = goto
    return Command(**kwargs)
