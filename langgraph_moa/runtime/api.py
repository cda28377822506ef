"""The Python API: run, stream and resume a spec against a SQL store.

>>> async with MoA("team.yaml", db_url="sqlite:///moa.sqlite") as moa:
...     result = await moa.ainvoke("Compare B-trees and LSM-trees")
...     print(result.answer, result.thread_id)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer, Command, Durability, StreamMode

from langgraph_moa.graphs import GraphSpec, compile_graph, load_spec
from langgraph_moa.models import ModelResolver
from langgraph_moa.runtime.store import open_checkpointer
from langgraph_moa.state import Usage, add_usage

__all__ = ["MoA", "RunResult", "arun", "run"]

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

    def to_json(self) -> dict[str, Any]:
        """The object ``moa run --json`` prints."""
        return {
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "status": self.status,
            "answer": self.answer,
            "usage": {"total": self.usage, "by_agent": self.usage_by_agent},
            "interrupts": self.interrupts,
            "notes": self.notes,
        }


class MoA:
    """A spec compiled into a graph and bound to a checkpointer."""

    def __init__(
        self,
        spec: SpecSource,
        *,
        db_url: str | None = None,
        checkpointer: Checkpointer = None,
        models: ModelResolver | None = None,
    ) -> None:
        self.spec = load_spec(spec)
        self.db_url = db_url
        self._checkpointer = checkpointer
        self._models = models
        self._stack: AsyncExitStack | None = None
        self._graph: CompiledStateGraph | None = None

    @property
    def graph(self) -> CompiledStateGraph:
        """The compiled graph (available inside ``async with``)."""
        if self._graph is None:
            raise RuntimeError("use `async with MoA(...) as moa:` before running it")
        return self._graph

    async def __aenter__(self) -> MoA:
        self._stack = AsyncExitStack()
        checkpointer = self._checkpointer
        if checkpointer is None:
            checkpointer = await self._stack.enter_async_context(open_checkpointer(self.db_url))
        self._graph = compile_graph(self.spec, checkpointer=checkpointer, models=self._models)
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
            return Command(resume=resume)
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
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Stream a run with LangGraph's stream modes (``updates``, ``values``, ``messages``...)."""
        config = self.config(thread_id or uuid.uuid4().hex, run_id)
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
    ) -> RunResult:
        """Run to the end (or to an interrupt) and return the result.

        ``task=None`` continues the thread from its last checkpoint (resume after a
        crash); ``resume=value`` answers a pending interrupt.
        """
        thread_id = thread_id or uuid.uuid4().hex
        run_id = run_id or str(uuid.uuid4())
        async for mode, chunk in self.astream(
            task,
            thread_id=thread_id,
            run_id=run_id,
            resume=resume,
            stream_mode=["tasks", "updates"],
            durability=durability,
        ):
            if on_event is not None:
                on_event(mode, chunk)
        return await self.aresult(thread_id, run_id)

    async def aresult(self, thread_id: str, run_id: str = "") -> RunResult:
        """The result as the thread's last checkpoint has it."""
        snapshot = await self.graph.aget_state(self.config(thread_id))
        values = dict(snapshot.values or {})
        by_agent: dict[str, Usage] = values.get("usage") or {}
        total: Usage = Usage()
        for usage in by_agent.values():
            total = add_usage(total, usage)
        interrupts = [i.value for i in snapshot.interrupts]
        status: RunStatus
        if interrupts or snapshot.next:
            status = "interrupted"
        else:
            status = "success" if values.get("answer") else "pending"
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
