"""Resume, history and fork of a stored thread: :func:`aresume`, :func:`ahistory`,
:func:`afork`, and :func:`open_store` for the ``moa resume/runs/history/fork`` commands.

They drive a :class:`~langgraph_moa.runtime.api.MoA`, imported on call so that this module
and ``runtime.api`` (which re-exports these names) can be imported in either order.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.types import Command

from langgraph_moa.models import ModelResolver
from langgraph_moa.persistence.registry import (
    DEFAULT_STALE_AFTER,
    Owner,
    RunOwnedError,
    RunRecord,
    RunRegistry,
)
from langgraph_moa.runtime._results import RunResult, SpecSource
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

if TYPE_CHECKING:
    from langgraph_moa.runtime.api import MoA

__all__ = ["afork", "ahistory", "aresume", "open_store"]


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
    from langgraph_moa.runtime.api import MoA

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
    from langgraph_moa.runtime.api import MoA

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
    from langgraph_moa.runtime.api import MoA

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
