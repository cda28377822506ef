"""The Python API: run, stream, pause and resume a spec against a SQL store.

>>> async with MoA("team.yaml", db_url="sqlite:///moa.sqlite") as moa:
...     result = await moa.ainvoke("Compare B-trees and LSM-trees")
...     print(result.answer, result.thread_id)

Runs are durable: with a store (``db_url``, or ``registry=``) every run has a row in the
run registry (status, spec, owner process with a heartbeat, attempts, usage), its
checkpoints are written with durability ``sync``, and a run that died at any moment
is continued with ``ainvoke(None, thread_id=...)`` or :func:`aresume`: agents that
finished keep their proposals and are not called again. A paused run (a layer with
``interrupt_before_synthesis``, or ``interrupt_after=`` nodes) goes on with
``ainvoke(resume=...)`` / :func:`aresume` with a :class:`Decision`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer, Command, Durability, StreamMode

from langgraph_moa.graphs import compile_graph
from langgraph_moa.models import ModelResolver
from langgraph_moa.nodes.budget import BUDGET_KEY, usage_report
from langgraph_moa.persistence.registry import (
    DEFAULT_STALE_AFTER,
    Owner,
    OwnershipLostError,
    RunOwnedError,
    RunRecord,
    RunRegistry,
)
from langgraph_moa.runtime.executor import Execution, RunExecutor
from langgraph_moa.runtime.runs import (
    Decision,
    HumanInputNeededError,
    RunError,
    RunFinishedError,
    SpecDriftError,
    UnknownThreadError,
    copy_checkpoint,
    describe_interrupt,
    describe_waiting,
    spec_changes,
    spec_data,
)
from langgraph_moa.runtime.store import open_checkpointer, resolve_db_url, store_error
from langgraph_moa.spec import GraphSpec, load_spec
from langgraph_moa.state import Usage, add_usage

__all__ = ["MoA", "RunResult", "afork", "ahistory", "aresume", "arun", "run"]

RunStatus = Literal["pending", "running", "interrupted", "success", "error", "cancelled"]
SpecSource = GraphSpec | str | Path | Mapping[str, Any]


@dataclass
class RunResult:
    """What a run left: its ids, status, answer and usage."""

    thread_id: str
    run_id: str
    status: RunStatus
    answer: str | None
    usage: Usage = field(default_factory=lambda: Usage())
    usage_by_agent: dict[str, Usage] = field(default_factory=dict)
    interrupts: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    next: list[str] = field(default_factory=list)
    """Nodes that run next when the run is paused (empty when it finished)."""
    interrupt_ids: list[str] = field(default_factory=list)
    """Ids of :attr:`interrupts`, for ``Command(resume={id: value})`` when there are several."""

    def to_json(self) -> dict[str, Any]:
        """The object ``moa run --json`` prints."""
        return {
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "status": self.status,
            "answer": self.answer,
            "usage": {
                "total": self.usage,
                "by_layer": usage_report(self.values)["by_layer"],
                "by_agent": self.usage_by_agent,
            },
            "interrupts": self.interrupts,
            "next": self.next,
            "notes": self.notes,
        }

    @property
    def waiting_for(self) -> list[dict[str, Any]]:
        """What a paused run waits for: the interrupts, or the nodes after a pause."""
        if self.interrupts:
            ids = self.interrupt_ids or [""] * len(self.interrupts)
            return [
                {**(i if isinstance(i, dict) else {"value": i}), "interrupt_id": n}
                for i, n in zip(self.interrupts, ids, strict=False)
            ]
        if self.next:
            return [{"kind": "paused", "next": self.next}]
        return []


_NODE = re.compile(r"^L(\d+)_(.+)$")


class MoA:
    """A spec compiled into a graph and bound to a checkpointer and a run registry.

    ``registry``: a :class:`RunRegistry`, ``False`` for none, or ``None`` (default) for
    one on the same store when MoA opens the store itself (``db_url``); with an injected
    ``checkpointer`` and no ``registry`` runs are not recorded. ``interrupt_after``:
    node names (``L1_router``), agent names (every layer's node of that agent) or
    ``router``/``synthesizer`` (every layer's), after which the run pauses.
    ``store``: a LangGraph ``BaseStore`` (e.g. :class:`~langgraph_moa.persistence.store.
    AsyncSQLAlchemyStore`) compiled into the graph, so nodes and tools can take ``store``
    (or call ``langgraph.config.get_store()``) for memory shared across threads.
    """

    def __init__(
        self,
        spec: SpecSource,
        *,
        db_url: str | None = None,
        checkpointer: Checkpointer = None,
        models: ModelResolver | None = None,
        registry: RunRegistry | bool | None = None,
        spec_source: str | Path | None = None,
        interrupt_after: Sequence[str] = (),
        owner: Owner | None = None,
        heartbeat_interval: float = 5.0,
        stale_after: float = DEFAULT_STALE_AFTER,
        store: BaseStore | None = None,
    ) -> None:
        if spec_source is None and isinstance(spec, (str, Path)):
            spec_source = Path(spec).resolve()
        self.spec = load_spec(spec)
        self.spec_source = str(spec_source) if spec_source is not None else None
        self.db_url = db_url
        self.owner = owner or Owner.current()
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.interrupt_after = self._pause_nodes(interrupt_after)
        self._checkpointer = checkpointer
        self.store = store
        self._registry_arg = registry
        self.registry: RunRegistry | None = registry if isinstance(registry, RunRegistry) else None
        self.checkpointer: Any = checkpointer
        self._models = models
        self._stack: AsyncExitStack | None = None
        self._graph: CompiledStateGraph | None = None
        self._run_executor: RunExecutor | None = None

    def _pause_nodes(self, names: Sequence[str]) -> list[str]:
        layers = range(1, len(self.spec.layers) + 1)
        nodes: list[str] = []
        valid = {
            f"L{n}_{a}" for n in layers for a in [*self.spec.layers[n - 1].agents, "router"]
        } | {f"L{n}_synthesizer" for n in layers}
        for name in names:
            if name in valid:
                found = [name]
            else:
                found = [f"L{n}_{name}" for n in layers if f"L{n}_{name}" in valid]
            if not found:
                raise ValueError(
                    f"cannot pause after {name!r}: not a node or agent of spec "
                    f"{self.spec.name!r}; use one of {sorted(valid)} or an agent name"
                )
            nodes += [f for f in found if f not in nodes]
        return nodes

    @property
    def graph(self) -> CompiledStateGraph:
        """The compiled graph (available inside ``async with``)."""
        if self._graph is None:
            raise RuntimeError("use `async with MoA(...) as moa:` before running it")
        return self._graph

    async def __aenter__(self) -> MoA:
        self._stack = AsyncExitStack()
        try:
            checkpointer = self._checkpointer
            if checkpointer is None:
                url = resolve_db_url(self.db_url)
                try:
                    checkpointer = await self._stack.enter_async_context(open_checkpointer(url))
                except (ImportError, ValueError):
                    raise
                except Exception as exc:
                    raise store_error(url, exc) from exc
                if self._registry_arg is None:
                    self._registry_arg = True
            self.checkpointer = checkpointer
            if self.registry is None and self._registry_arg is True:
                engine = getattr(checkpointer, "engine", None)
                if engine is not None:
                    self.registry = RunRegistry.from_engine(engine)
                elif self._checkpointer is None or self.db_url:
                    self.registry = RunRegistry.from_url(resolve_db_url(self.db_url))
                else:
                    raise ValueError(
                        "registry=True with a checkpointer that has no `engine`: pass "
                        "registry=RunRegistry.from_url(url) or db_url= of the same database"
                    )
                self._stack.push_async_callback(self.registry.aclose)
                await self.registry.setup()
            self._graph = compile_graph(
                self.spec,
                checkpointer=checkpointer,
                models=self._models,
                interrupt_after=self.interrupt_after or None,
                store=self.store,
            )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._graph = None

    @staticmethod
    def config(thread_id: str, run_id: str | None = None, **configurable: Any) -> RunnableConfig:
        """The LangGraph config of a thread (and run)."""
        config: RunnableConfig = {"configurable": {"thread_id": thread_id, **configurable}}
        if run_id is not None:
            config["run_id"] = uuid.UUID(run_id)
        return config

    @staticmethod
    def input_of(task: str | Mapping[str, Any] | None, resume: Any = None) -> Any:
        """Graph input for a new task, a resume value, or ``None`` to continue."""
        if resume is not None:
            return resume if isinstance(resume, Command) else Command(resume=resume)
        if isinstance(task, str):
            return {"task": task}
        return dict(task) if task is not None else None

    async def astream(
        self,
        task: str | Mapping[str, Any] | None = None,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
        resume: Any = None,
        stream_mode: StreamMode | Sequence[StreamMode] = ("updates",),
        durability: Durability = "sync",
        budget: Mapping[str, Any] | None = None,
        configurable: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Stream a run with LangGraph's stream modes (``updates``, ``values``, ``messages``...).

        This is the bare graph stream: it does not touch the run registry (use
        :meth:`ainvoke` with ``on_event`` for a recorded, resumable run).
        """
        extra = {BUDGET_KEY: dict(budget)} if budget is not None else {}
        config = self.config(thread_id or uuid.uuid4().hex, run_id, **extra, **(configurable or {}))
        async for chunk in self.graph.astream(
            self.input_of(task, resume),
            config,
            stream_mode=stream_mode,
            durability=durability,
            **kwargs,
        ):
            yield chunk

    async def ainvoke(
        self,
        task: str | Mapping[str, Any] | None = None,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
        resume: Any = None,
        durability: Durability = "sync",
        on_event: Callable[[str, Any], None] | None = None,
        force: bool = False,
        metadata: Mapping[str, Any] | None = None,
        budget: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Run to the end (or to a pause) and return the result.

        ``budget`` (``{"max_total_tokens": N, "max_cost": X}``, a key set to None lifts
        that limit) replaces the spec's limits for this invocation: resuming a run that
        stopped on its budget with a larger one goes on from where it stopped.

        ``task=None`` continues the thread's latest run from its last checkpoint (after
        a crash, a cancel or a pause); ``resume=value`` answers a pending interrupt
        (``Command(resume=value)``). With a registry the run is claimed for this process
        (:class:`RunOwnedError` if a live process has it), its spec must match the one
        it started with (:class:`SpecDriftError` unless ``force``), and a finished run
        raises :class:`RunFinishedError`. Cancelling the call (Ctrl-C) leaves the run
        ``interrupted`` and resumable; a cancel request (:meth:`acancel`, ``moa cancel``,
        from any process) ends it ``cancelled`` and returns that. The run executes through
        :class:`~langgraph_moa.runtime.executor.RunExecutor` (the thread's lease, one
        active run per thread across processes): another live run of the thread raises
        :class:`~langgraph_moa.persistence.registry.LeaseHeldError`, and
        :class:`~langgraph_moa.runtime.executor.LeaseLostError` means another process took
        the thread over while this one was taken for dead.
        """
        thread_id = thread_id or uuid.uuid4().hex
        record = await self._begin(task, thread_id, run_id, resume, force, metadata)
        run_id = record.run_id if record is not None else (run_id or str(uuid.uuid4()))

        async def body(lease: dict[str, Any]) -> RunResult:
            async for mode, chunk in self.astream(
                task,
                thread_id=thread_id,
                run_id=run_id,
                resume=resume,
                stream_mode=["tasks", "updates"],
                durability=durability,
                budget=budget,
                configurable=lease,
            ):
                if on_event is not None:
                    on_event(mode, chunk)
            return await self.aresult(thread_id, run_id)

        if record is None or self.registry is None:
            return await body({})
        result: list[RunResult] = []

        async def recorded(execution: Execution) -> RunResult:
            result.append(await body(execution.configurable()))
            return result[0]

        async def usage() -> Mapping[str, Any]:
            return dict((await self.aresult(thread_id, record.run_id)).usage)

        ended = await self._executor().execute(
            record,
            recorded,
            owner=self.owner,
            resume_ended=True,
            reraise=True,
            usage_so_far=usage,
        )
        if result:
            if ended is not None and ended.status != result[0].status:  # not recorded as it was
                result[0].status = ended.status
                result[0].notes.append(ended.error or "")
            return result[0]
        status = ended.status if ended is not None else "cancelled"
        return RunResult(  # cancelled on request (e.g. `moa cancel`) or superseded
            thread_id=thread_id,
            run_id=run_id,
            status=status,
            answer=None,
            notes=[ended.error] if ended is not None and ended.error else [],
        )

    def _executor(self) -> RunExecutor:
        assert self.registry is not None
        if self._run_executor is None or self._run_executor.registry is not self.registry:
            self._run_executor = RunExecutor(
                self.registry,
                heartbeat_interval=self.heartbeat_interval,
                stale_after=self.stale_after,
            )
        return self._run_executor

    async def acancel(
        self, run_id: str | None = None, *, thread_id: str | None = None
    ) -> list[RunRecord]:
        """Cancel a run, or every active run of a thread, in whichever process runs it or
        has it queued (``moa serve``, ``moa worker``, another ``MoA``): a cancel request in
        the registry that the holder sees within a second (at once in this process).
        Returns the runs as they are now (a queued run is already ``cancelled``)."""
        if self.registry is None:
            raise RunError("cancelling needs a run registry (open MoA with db_url=)")
        if (run_id is None) == (thread_id is None):
            raise ValueError("give a run_id or a thread_id (not both)")
        if run_id is not None:
            if await self.registry.get_run(run_id) is None:
                raise RunError(f"no run {run_id!r} in this store; `moa runs` lists them")
            ids = [run_id]
        else:
            active = await self.registry.list_runs(
                thread_id=thread_id, status=["pending", "running"], limit=1000
            )
            ids = [r.run_id for r in active]
        return [await self._executor().cancel(i) for i in ids]

    async def _begin(
        self,
        task: Any,
        thread_id: str,
        run_id: str | None,
        resume: Any,
        force: bool,
        metadata: Mapping[str, Any] | None,
    ) -> RunRecord | None:
        """Create (new input) or claim (continue) the run's registry row."""
        registry = self.registry
        if registry is None:
            return None
        if task is not None and resume is None:
            latest = await registry.latest_run(thread_id)
            if latest is not None and latest.status in ("pending", "running"):
                if latest.owner_token not in (None, self.owner.token) and not latest.owner_gone(
                    stale_after=self.stale_after
                ):
                    raise RunOwnedError(
                        latest,
                        f"thread {thread_id} is busy: run {latest.run_id} is being run by "
                        f"{latest.describe_owner()}; wait for it or use another thread",
                    )
                with contextlib.suppress(OwnershipLostError):
                    await registry.update_run(
                        latest.run_id,
                        status="cancelled",
                        error="superseded by a new run on the thread",
                        release=True,
                    )
            return await registry.create_run(
                thread_id,
                run_id=run_id,
                spec=spec_data(self.spec),
                spec_name=self.spec.name,
                spec_hash=self.spec.spec_hash(),
                spec_source=self.spec_source,
                input={"task": task} if isinstance(task, str) else task,
                metadata=metadata,
                options={"interrupt_after": self.interrupt_after},
            )
        record = await registry.get_run(run_id) if run_id else await registry.latest_run(thread_id)
        if record is None:
            snapshot = await self.graph.aget_state(self.config(thread_id))
            if snapshot.created_at is None:
                raise UnknownThreadError(
                    f"no run and no checkpoint for thread {thread_id!r}; `moa runs` lists "
                    "the runs of this store (is --db / MOA_DB_URL the same as for the run?)"
                )
            return await registry.create_run(  # a thread run before the registry existed
                thread_id,
                run_id=run_id,
                spec=spec_data(self.spec),
                spec_name=self.spec.name,
                spec_hash=self.spec.spec_hash(),
                spec_source=self.spec_source,
                metadata={"adopted": True, **(metadata or {})},
            )
        if record.status == "success":
            raise RunFinishedError(
                f"run {record.run_id} of thread {record.thread_id} already finished "
                "(success); nothing to resume. Start a new run on the thread with "
                f"`moa run --thread {record.thread_id} TASK`, or `moa fork` it"
            )
        if record.spec_hash and record.spec_hash != self.spec.spec_hash() and not force:
            changes = spec_changes(record.spec or {}, spec_data(self.spec))
            raise SpecDriftError(
                f"the spec of run {record.run_id} changed since it started "
                f"({record.spec_hash} -> {self.spec.spec_hash()}):\n  "
                + "\n  ".join(changes or ["(no field-level difference found)"])
                + "\nresume with the stored spec (leave out --spec), or pass --force to "
                "continue with the changed one",
                changes,
            )
        if record.owner_token not in (None, self.owner.token) and not record.owner_gone(
            stale_after=self.stale_after
        ):
            raise RunOwnedError(
                record,
                f"run {record.run_id} of thread {record.thread_id} is being run by "
                f"{record.describe_owner()}; wait for it, stop that process, or try again once "
                f"its heartbeat is older than {self.stale_after:.0f}s",
            )
        # Keep what the earlier attempt left (its outcome, a replaced spec) in the metadata.
        metadata = dict(record.metadata)
        metadata["attempts_log"] = [
            *(metadata.get("attempts_log") or []),
            {
                "attempt": record.attempts,
                "status": record.status,
                "error": record.error,
                "owner": record.describe_owner() if record.owner_token else None,
                "until": record.to_json()["updated_at"],
            },
        ]
        replaced: dict[str, Any] = {}
        if record.spec_hash and record.spec_hash != self.spec.spec_hash():
            previous = list(metadata.get("previous_specs") or [])
            previous.append({"spec_hash": record.spec_hash, "spec": record.spec})
            metadata["previous_specs"] = previous
            replaced = {"spec": spec_data(self.spec), "spec_hash": self.spec.spec_hash()}
        return await registry.update_run(record.run_id, metadata=metadata, **replaced)

    async def aresult(self, thread_id: str, run_id: str = "") -> RunResult:
        """The result as the thread's last checkpoint has it."""
        snapshot = await self.graph.aget_state(self.config(thread_id))
        values = dict(snapshot.values or {})
        by_agent: dict[str, Usage] = values.get("usage") or {}
        total: Usage = Usage()
        for usage in by_agent.values():
            total = add_usage(total, usage)
        interrupts = [i.value for i in snapshot.interrupts]
        status: RunStatus = "interrupted" if interrupts or snapshot.next else "success"
        return RunResult(
            thread_id=thread_id,
            run_id=run_id or str((snapshot.metadata or {}).get("run_id", "")),
            status=status,
            answer=values.get("answer") or None,
            usage=total,
            usage_by_agent=by_agent,
            interrupts=interrupts,
            notes=list(values.get("notes") or []),
            values=values,
            next=list(snapshot.next),
            interrupt_ids=[i.id for i in snapshot.interrupts],
        )

    async def aedit(
        self, thread_id: str, *, proposals: Mapping[str, str] | None = None, plan: Any = None
    ) -> None:
        """Replace proposals and/or the next layer's plan of a run paused by
        ``interrupt_after`` (a new checkpoint; the old ones stay). For a layer paused by
        ``interrupt_before_synthesis`` pass ``resume={"proposals": {...}}`` instead."""
        config = self.config(thread_id)
        snapshot = await self.graph.aget_state(config)
        if not snapshot.next:
            raise RunError(f"thread {thread_id} is not paused; there is nothing to edit")
        at = [m.groups() for m in map(_NODE.match, snapshot.next) if m is not None]
        layers = sorted({int(n) for n, _ in at})
        kinds = {kind for _, kind in at}
        if plan is not None:
            if len(layers) != 1 or kinds & {"router", "synthesizer"}:
                raise RunError(
                    "the plan can only be edited while the run is paused after a router "
                    "(interrupt_after=['L1_router'] or `--pause-after router`); it waits "
                    f"before {list(snapshot.next)}"
                )
            from langgraph_moa.nodes.router import PlanError, parse_plan

            layer = layers[0]
            try:
                steps = parse_plan(list(plan), list(self.spec.layers[layer - 1].agents))
            except PlanError as exc:
                raise RunError(f"edited plan of layer {layer}: {exc}") from None
            await self.graph.aupdate_state(
                config, {"plans": {str(layer): steps}}, as_node=f"L{layer}_router"
            )
        if proposals:
            if "synthesizer" not in kinds:
                raise RunError(
                    "proposals can only be replaced while the run waits before a synthesizer "
                    "(pause after the agents, or interrupt_before_synthesis); it waits before "
                    f"{list(snapshot.next)}"
                )
            layer = min(int(n) for n, kind in at if kind == "synthesizer")
            written = (snapshot.values.get("proposals") or {}).get(str(layer), {})
            unknown = sorted(set(proposals) - set(written))
            if unknown:
                raise RunError(
                    f"layer {layer} has no proposal of {unknown}; it has {sorted(written)}"
                )
            update = {
                a: {**written[a], "content": text, "status": "ok", "error": None}
                for a, text in proposals.items()
            }
            await self.graph.aupdate_state(
                config,
                {"proposals": {str(layer): update}},
                as_node=f"L{layer}_{next(iter(proposals))}",
            )

    def invoke(self, task: str | Mapping[str, Any] | None = None, **kwargs: Any) -> RunResult:
        """Synchronous :meth:`ainvoke`: opens the store, runs, closes it."""

        async def once() -> RunResult:
            async with self:
                return await self.ainvoke(task, **kwargs)

        return asyncio.run(once())


async def arun(
    spec: SpecSource,
    task: str | Mapping[str, Any] | None,
    *,
    db_url: str | None = None,
    **kwargs: Any,
) -> RunResult:
    """Run ``spec`` on ``task`` once and return the result."""
    async with MoA(spec, db_url=db_url) as moa:
        return await moa.ainvoke(task, **kwargs)


def run(spec: SpecSource, task: str | Mapping[str, Any] | None, **kwargs: Any) -> RunResult:
    """Synchronous :func:`arun`."""
    return asyncio.run(arun(spec, task, **kwargs))


# ------------------------------------------------------------------ resume/fork ---


@contextlib.asynccontextmanager
async def open_store(db_url: str | None) -> AsyncIterator[tuple[Any, RunRegistry]]:
    """The checkpointer and the registry of a store; :class:`StoreError` if unreachable."""
    url = resolve_db_url(db_url)
    async with AsyncExitStack() as stack:
        try:
            saver = await stack.enter_async_context(open_checkpointer(url))
            engine = getattr(saver, "engine", None)
            registry = (
                RunRegistry.from_engine(engine) if engine is not None else RunRegistry.from_url(url)
            )
            stack.push_async_callback(registry.aclose)
            await registry.setup()
        except (ImportError, ValueError):
            raise
        except Exception as exc:
            raise store_error(url, exc) from exc
        yield saver, registry


def _current_spec(run: RunRecord, spec: SpecSource | None) -> tuple[GraphSpec | None, str]:
    """The spec a resume would use instead of the stored one, if any, and where it is from."""
    if spec is not None:
        source = str(spec) if isinstance(spec, (str, Path)) else "the given spec"
        return load_spec(spec), source
    if run.spec_source and Path(run.spec_source).is_file():
        return load_spec(run.spec_source), run.spec_source
    return None, "the stored spec"


async def aresume(
    thread_id: str,
    *,
    db_url: str | None = None,
    spec: SpecSource | None = None,
    force: bool = False,
    decision: Decision | None = None,
    resume: Any = None,
    models: ModelResolver | None = None,
    on_event: Callable[[str, Any], None] | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
    on_start: Callable[[RunRecord, MoA], None] | None = None,
    budget: Mapping[str, Any] | None = None,
) -> RunResult:
    """Continue the latest run of ``thread_id`` from its last checkpoint, with its spec.

    ``budget`` (``{"max_total_tokens": N, "max_cost": X}``, e.g. from
    :func:`~langgraph_moa.nodes.budget.parse_budget`) raises the limits of a run that
    stopped on its budget; it is kept in the run's options for later resumes.

    The spec is the one stored with the run; when ``spec`` is given, or the file the
    run was started from has changed, a different hash raises :class:`SpecDriftError`
    listing the changes, unless ``force`` (then the new spec is used and the old one
    kept in the run's metadata). A run waiting for a person needs a ``decision``
    (approve, or replace proposals / the plan) or a raw ``resume`` value.
    """
    async with open_store(db_url) as (saver, registry):
        record = await registry.latest_run(thread_id)
        if record is None:
            if spec is None:
                raise UnknownThreadError(
                    f"no run recorded for thread {thread_id!r} in this store; `moa runs` "
                    "lists the runs (is --db / MOA_DB_URL the same as for the run?)"
                )
            use = load_spec(spec)
        else:
            if record.status == "success":
                raise RunFinishedError(
                    f"run {record.run_id} of thread {thread_id} already finished (success); "
                    f"nothing to resume. Start a new run on the thread with `moa run --thread "
                    f"{thread_id} TASK`, or `moa fork` it"
                )
            if record.owner_token not in (None, Owner.current().token) and not (
                record.owner_gone(stale_after=stale_after)
            ):
                raise RunOwnedError(
                    record,
                    f"run {record.run_id} of thread {thread_id} is being run by "
                    f"{record.describe_owner()}; wait for it or stop that process first",
                )
            current, where = _current_spec(record, spec)
            if current is None:
                if record.spec is None:
                    raise RunError(
                        f"run {record.run_id} has no stored spec; pass the spec it ran with"
                    )
                use = load_spec(record.spec)
            elif current.spec_hash() != record.spec_hash and not force:
                changes = spec_changes(record.spec or {}, spec_data(current))
                raise SpecDriftError(
                    f"the spec changed since run {record.run_id} started ({where}: "
                    f"{record.spec_hash} -> {current.spec_hash()}):\n  "
                    + "\n  ".join(changes or ["(no field-level difference found)"])
                    + "\npass --force to resume with the changed spec, or restore it",
                    changes,
                )
            else:
                use = current
            waiting = record.status == "interrupted" and bool(record.waiting_for)
            on_budget = waiting and all(w.get("kind") == "budget" for w in record.waiting_for or [])
            if (
                on_budget
                and budget is None
                and resume is None
                and (decision is None or decision.empty)
            ):
                raise HumanInputNeededError(
                    f"run {record.run_id} of thread {thread_id} stopped on its budget "
                    f"({describe_waiting(record)}); resume it with a larger one: `moa resume "
                    f"{thread_id} --budget tokens=N,cost=X` (or --approve to let the next "
                    "call go ahead)"
                )
            answered = on_budget and budget is not None  # a larger budget is the answer
            if waiting and not answered and resume is None and (decision is None or decision.empty):
                raise HumanInputNeededError(
                    f"run {record.run_id} of thread {thread_id} waits for "
                    f"{describe_waiting(record)}; go on with `moa resume {thread_id} "
                    "--approve`, or replace a proposal with --edit AGENT=TEXT / --edit-file"
                )
            if not waiting and decision is not None and not decision.empty:
                raise RunError(
                    f"run {record.run_id} of thread {thread_id} is not waiting for a "
                    "decision (it was stopped, not paused); resume it without "
                    "--approve/--edit"
                )
        options = dict(record.options) if record is not None else {}
        if budget is not None:
            budget = {**(options.get("budget") or {}), **budget}
            if record is not None:
                options["budget"] = budget
                await registry.update_run(record.run_id, options=options)
        elif options.get("budget"):
            budget = options["budget"]
        async with MoA(
            use,
            checkpointer=saver,
            registry=registry,
            models=models,
            spec_source=record.spec_source if record is not None else None,
            interrupt_after=list(options.get("interrupt_after") or []),
            stale_after=stale_after,
        ) as moa:
            if record is not None and on_start is not None:
                on_start(record, moa)
            if decision is not None and not decision.empty and resume is None:
                asked = list(record.waiting_for or []) if record is not None else []
                interrupts = [w for w in asked if w.get("kind") != "paused"]
                if interrupts:
                    resume = _answer(interrupts, decision, use)
                else:
                    await moa.aedit(thread_id, proposals=decision.proposals, plan=decision.plan)
            return await moa.ainvoke(
                None,
                thread_id=thread_id,
                run_id=record.run_id if record is not None else None,
                resume=resume,
                force=force,
                on_event=on_event,
                budget=budget,
            )


def _answer(interrupts: list[dict[str, Any]], decision: Decision, spec: GraphSpec) -> Any:
    """The resume value of a decision: for a layer waiting before its synthesizer
    ``{"proposals": edits}``, for any other interrupt (e.g. a budget) ``True`` (go on)."""
    if decision.plan is not None:
        raise RunError(
            "the run waits before a synthesizer: its plan is already carried out, only "
            "proposals can be replaced (pause after the router to edit a plan)"
        )
    values: dict[str, Any] = {}
    placed: set[str] = set()
    for item in interrupts:
        if item.get("kind") == "approve_synthesis":
            agents = spec.layers[int(item["layer"]) - 1].agents
            edits = {a: t for a, t in decision.proposals.items() if a in agents}
            placed.update(edits)
            values[str(item.get("interrupt_id") or "")] = {"proposals": edits}
        else:
            values[str(item.get("interrupt_id") or "")] = True
    unplaced = sorted(set(decision.proposals) - placed)
    if unplaced:
        raise RunError(
            f"--edit names {unplaced}, but no layer waiting for approval has such an agent "
            f"(waiting: {', '.join(describe_interrupt(i) for i in interrupts)})"
        )
    if len(values) == 1:
        return Command(resume=next(iter(values.values())))
    return Command(resume=values)


async def ahistory(thread_id: str, *, db_url: str | None = None) -> list[dict[str, Any]]:
    """The checkpoints of a thread, oldest first: id, step, source, the nodes that wrote
    it (``after``), the nodes that run next, and when it was written."""
    async with open_store(db_url) as (saver, registry):
        record = await registry.latest_run(thread_id)
        if record is None or record.spec is None:
            raise UnknownThreadError(
                f"no run recorded for thread {thread_id!r} in this store; `moa runs` lists them"
            )
        async with MoA(record.spec, checkpointer=saver, registry=False) as moa:
            snapshots = [s async for s in moa.graph.aget_state_history(moa.config(thread_id))]
    snapshots.reverse()
    rows: list[dict[str, Any]] = []
    previous_next: list[str] = []
    for snap in snapshots:
        meta = dict(snap.metadata or {})
        rows.append(
            {
                "checkpoint_id": snap.config["configurable"]["checkpoint_id"],
                "step": meta.get("step"),
                "source": meta.get("source"),
                "after": previous_next if meta.get("source") == "loop" else [],
                "next": list(snap.next),
                "created_at": snap.created_at,
                "parent_id": (snap.parent_config or {})
                .get("configurable", {})
                .get("checkpoint_id"),
            }
        )
        previous_next = list(snap.next)
    return rows


async def afork(
    thread_id: str,
    checkpoint_id: str,
    *,
    db_url: str | None = None,
    new_thread_id: str | None = None,
    spec: SpecSource | None = None,
    models: ModelResolver | None = None,
    on_event: Callable[[str, Any], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> RunResult:
    """Start a new thread from checkpoint ``checkpoint_id`` of ``thread_id`` (time travel)
    and run it to the end; ``spec`` replaces the stored spec (same layers and agents,
    e.g. other models). The source thread is not changed."""
    async with open_store(db_url) as (saver, registry):
        source = await registry.latest_run(thread_id)
        if source is None and spec is None:
            raise UnknownThreadError(
                f"no run recorded for thread {thread_id!r} in this store; `moa runs` lists them"
            )
        use = load_spec(spec) if spec is not None else load_spec(source.spec)  # type: ignore[union-attr,arg-type]
        new_thread_id = new_thread_id or uuid.uuid4().hex
        if await registry.get_thread(new_thread_id) is not None:
            raise RunError(f"thread {new_thread_id!r} already exists; pick a new thread id")
        await copy_checkpoint(saver, thread_id, checkpoint_id, new_thread_id)
        options = source.options if source is not None else {}
        async with MoA(
            use,
            checkpointer=saver,
            registry=registry,
            models=models,
            interrupt_after=list(options.get("interrupt_after") or []),
        ) as moa:
            record = await registry.create_run(
                new_thread_id,
                spec=spec_data(use),
                spec_name=use.name,
                spec_hash=use.spec_hash(),
                spec_source=source.spec_source if source is not None and spec is None else None,
                input=source.input if source is not None else None,
                options={"interrupt_after": moa.interrupt_after},
                parent_run_id=source.run_id if source is not None else None,
                checkpoint_id=checkpoint_id,
                metadata={"forked_from": {"thread_id": thread_id, "checkpoint_id": checkpoint_id}},
            )
            if on_start is not None:
                on_start(new_thread_id)
            return await moa.ainvoke(
                None, thread_id=new_thread_id, run_id=record.run_id, on_event=on_event
            )
