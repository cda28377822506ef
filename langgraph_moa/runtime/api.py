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
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer, Command, Durability, StreamMode

from langgraph_moa.graphs import compile_graph
from langgraph_moa.models import ModelResolver
from langgraph_moa.nodes.budget import BUDGET_KEY
from langgraph_moa.persistence.registry import (
    DEFAULT_STALE_AFTER,
    Owner,
    OwnershipLostError,
    RunOwnedError,
    RunRecord,
    RunRegistry,
)
from langgraph_moa.runtime._results import RunResult, RunStatus, SpecSource
from langgraph_moa.runtime._resume import afork, ahistory, aresume
from langgraph_moa.runtime._resume import open_store as open_store
from langgraph_moa.runtime.executor import Execution, RunExecutor
from langgraph_moa.runtime.runs import (
    RunError,
    RunFinishedError,
    SpecDriftError,
    UnknownThreadError,
    spec_changes,
    spec_data,
)
from langgraph_moa.runtime.store import open_checkpointer, resolve_db_url, store_error
from langgraph_moa.spec import load_spec
from langgraph_moa.state import Usage, add_usage

__all__ = ["MoA", "RunResult", "afork", "ahistory", "aresume", "arun", "run"]


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
        """The LangGraph config of a thread (and run: its id goes into the checkpoints'
        metadata, as the server and the workers do, so a replay finds where it started)."""
        config: RunnableConfig = {"configurable": {"thread_id": thread_id, **configurable}}
        if run_id is not None:
            config["run_id"] = uuid.UUID(run_id)
            config["metadata"] = {"run_id": run_id}
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
                stream_mode=["tasks", "updates", "custom"],
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
