"""Replay a run from its call ledger: ``moa replay THREAD [--run RUN] [--live X] [--spec F]``.

The run's graph (its stored spec, or ``spec``) is executed again on an in-memory copy of
the thread as it was when the run started, with every model call answered from the run's
rows of ``moa_calls`` (matched by node and request hash, in order), so no request leaves
the process. Calls of the nodes or agents named in ``live`` (``synthesizer``, ``router``,
``L2_synthesizer``, an agent name) go to their models instead, e.g. to try a new
synthesizer prompt or model (``spec``) on the recorded proposals. A call that is neither
live nor in the ledger (its request changed, say because an earlier live call answered
differently) fails like a failed call would, and the result lists it under ``missing``: such
a replay is not a faithful one. Tools run again (they are not model calls); a spec with a
tool marked ``idempotent: false`` is refused. Nothing is written to the store.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langgraph_moa.persistence.calls import CALLS_KEY, CallLedger, CallRow
from langgraph_moa.runtime.runs import RunError

__all__ = ["CallNotRecordedError", "ReplayCalls", "ReplayResult", "areplay"]


class CallNotRecordedError(RuntimeError):
    """A replayed call whose request is not in the run's ledger."""


class ReplayCalls:
    """A call source (see :class:`langgraph_moa.nodes._calls.CallSource`) answering from
    the recorded calls of one run, except the calls of ``live`` nodes."""

    def __init__(self, rows: Sequence[CallRow], live: Sequence[str] = ()) -> None:
        self.pool: dict[tuple[str, str], deque[CallRow]] = {}
        for row in rows:
            self.pool.setdefault((row.node, row.request_hash), deque()).append(row)
        self.live = set(live)
        self.replayed: list[str] = []
        self.live_calls: list[str] = []
        self.missing: list[str] = []

    def is_live(self, node: str) -> bool:
        """Whether ``node`` (``L1_a1``) is named by ``live`` itself, or by its agent,
        ``router`` or ``synthesizer`` part."""
        return node in self.live or node.partition("_")[2] in self.live

    async def lookup(
        self, node: str, task_id: str, request_hash: str, *, request: Any = None
    ) -> tuple[int, Mapping[str, Any] | None]:
        if self.is_live(node):
            self.live_calls.append(node)
            return 0, None
        queue = self.pool.get((node, request_hash))
        if not queue:
            problem = (
                f"{node}: no recorded call with request hash {request_hash[:12]} (the request "
                "differs from the recorded run's: a changed spec, or an earlier live call "
                f"answered differently; add --live {node.partition('_')[2] or node})"
            )
            self.missing.append(problem)
            raise CallNotRecordedError(problem)
        row = queue.popleft()
        if row.status != "ok":
            self.replayed.append(node)
            raise _recorded_error(row.error or "error")
        if not row.answerable:
            problem = f"{node}: the run kept hashes only (`ledger: hashes`), no reply to replay"
            self.missing.append(problem)
            raise CallNotRecordedError(problem)
        self.replayed.append(node)
        return 0, row.response

    async def record(self, **fields: Any) -> None:
        """Live calls of a replay are not recorded (a replay writes nothing)."""

    def finished(self, request: Any) -> None:
        """Nothing to do once a live call is over."""


def _recorded_error(text: str) -> Exception:
    """The recorded failure of a call, raised again with the same type name and message."""
    name, _, message = text.partition(": ")
    if not name.isidentifier():
        return RuntimeError(text)
    return type(name, (Exception,), {})(message)


@dataclass
class ReplayResult:
    """What a replay gave, next to what the run recorded."""

    thread_id: str
    run_id: str
    answer: Any
    recorded_answer: Any
    replayed: list[str]
    live: list[str]
    missing: list[str]
    status: str = "success"
    notes: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        """Whether the replay's answer is the recorded one, character for character."""
        return _text(self.answer) == _text(self.recorded_answer)

    def to_json(self) -> dict[str, Any]:
        return {
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "status": self.status,
            "same": self.same,
            "answer": self.answer,
            "recorded_answer": self.recorded_answer,
            "replayed_calls": len(self.replayed),
            "live_calls": self.live,
            "missing": self.missing,
            "notes": self.notes,
        }


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    import json

    return json.dumps(value, sort_keys=True, default=str)


async def areplay(
    thread_id: str,
    *,
    run_id: str | None = None,
    db_url: str | None = None,
    live: Sequence[str] = (),
    spec: Any = None,
) -> ReplayResult:
    """Replay a run of ``thread_id`` (its latest with recorded calls, or ``run_id``) from
    the call ledger; see the module docs."""
    from langgraph_moa.graphs import compile_graph
    from langgraph_moa.runtime.api import MoA
    from langgraph_moa.runtime.store import open_checkpointer, open_registry
    from langgraph_moa.spec import load_spec

    async with open_registry(db_url) as registry:
        ledger = CallLedger(registry.engine)
        if run_id is not None:
            run = await registry.get_run(run_id)
            if run is None or run.thread_id != thread_id:
                raise RunError(f"no run {run_id!r} of thread {thread_id!r}; `moa runs` lists them")
            rows = await ledger.list(run_id=run_id)
        else:
            calls = await ledger.list(thread_id=thread_id)
            if not calls:
                raise RunError(
                    f"no model calls recorded for thread {thread_id!r} (`moa calls` lists "
                    "them; runs before the call ledger existed cannot be replayed)"
                )
            run = await registry.get_run(calls[-1].run_id)
            if run is None:
                raise RunError(f"run {calls[-1].run_id} is not in the registry any more")
            rows = [c for c in calls if c.run_id == run.run_id]
        if not rows:
            raise RunError(f"no model calls recorded for run {run.run_id}")
    if spec is None and run.spec is None:
        raise RunError(f"run {run.run_id} has no spec in the registry; pass one (--spec)")
    graph_spec = load_spec(spec if spec is not None else run.spec)  # type: ignore[arg-type]
    unsafe = sorted(n for n, t in graph_spec.tools.items() if not t.idempotent)
    if unsafe:
        raise RunError(
            f"spec {graph_spec.name!r} has tools that are not idempotent ({', '.join(unsafe)}); "
            "a replay runs tools again, so it is refused"
        )
    known = {r.node for r in rows} | {r.node.partition("_")[2] for r in rows}
    nodes = {f"L{n}_{a}" for n, layer in enumerate(graph_spec.layers, 1) for a in layer.agents}
    nodes |= {f"L{n}_{k}" for n in range(1, len(graph_spec.layers) + 1) for k in ("router",)}
    nodes |= {f"L{n}_synthesizer" for n in range(1, len(graph_spec.layers) + 1)}
    valid = known | nodes | {n.partition("_")[2] for n in nodes}
    for name in live:
        if name not in valid:
            raise RunError(
                f"--live {name!r}: not a node or agent of spec {graph_spec.name!r}; use one "
                f"of {sorted(valid)}"
            )
    memory = _memory_saver()
    copy = f"replay-{uuid.uuid4().hex}"
    async with open_checkpointer(db_url) as saver:
        start = await _start_of(saver, thread_id, run.run_id)
        if start is not None:
            await memory.aput(
                {"configurable": {"thread_id": copy, "checkpoint_ns": ""}},
                start.checkpoint,
                start.metadata,
                dict(start.checkpoint["channel_versions"]),
            )
    source = ReplayCalls(rows, live)
    graph = compile_graph(graph_spec, checkpointer=memory)
    config = MoA.config(copy)
    config["configurable"][CALLS_KEY] = source
    notes: list[str] = []
    status = "success"
    try:
        await graph.ainvoke(MoA.input_of(run.input), config)
    except Exception as exc:  # e.g. a synthesizer whose call was not recorded
        status, notes = "error", [f"{type(exc).__name__}: {exc}"]
    snapshot = await graph.aget_state(MoA.config(copy))
    values = dict(snapshot.values or {})
    if status == "success" and (snapshot.interrupts or snapshot.next):
        status = "interrupted"
    return ReplayResult(
        thread_id=thread_id,
        run_id=run.run_id,
        answer=values.get("answer") or None,
        recorded_answer=run.answer,
        replayed=source.replayed,
        live=source.live_calls,
        missing=source.missing,
        status=status,
        notes=[*notes, *(values.get("notes") or [])],
    )


def _memory_saver() -> Any:
    """An in-memory saver with our savers' channel versions (``<counter:012>.<random>``):
    LangGraph's own (32 digits) would sort below the copied ones, and nothing would run."""
    from langgraph.checkpoint.memory import InMemorySaver

    from langgraph_moa.persistence.saver._hot import HotPath

    class MemorySaver(InMemorySaver):
        get_next_version = HotPath.get_next_version

    return MemorySaver()


async def _start_of(saver: Any, thread_id: str, run_id: str) -> Any:
    """The checkpoint the run started from (the thread's state before its first
    checkpoint), or None when the run started the thread."""
    first = None
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    async for item in saver.alist(config, filter={"run_id": run_id}):
        first = item  # newest first: the last one is the run's first checkpoint
    if first is None or first.parent_config is None:
        return None
    return await saver.aget_tuple(first.parent_config)
