"""Executing one run with the run executor (:mod:`langgraph_moa.runtime.executor`): it
claims the run and the thread's lease, beats, and records the end; the server streams
the graph into the run's events (the :class:`~langgraph_moa.server.executor.RunHandler`
side of the server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import EmptyInputError, GraphRecursionError, InvalidUpdateError
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Send

from langgraph_moa.graphs import TaskError
from langgraph_moa.nodes.synthesizer import ContextWindowError, QuorumError
from langgraph_moa.persistence.registry import (
    LeaseHeldError,
    OwnershipLostError,
    RunOwnedError,
    RunRecord,
)
from langgraph_moa.persistence.store import TenantView
from langgraph_moa.runtime.api import MoA
from langgraph_moa.runtime.executor import Execution, RunEnd
from langgraph_moa.server import serde
from langgraph_moa.server.core import ACTIVE, Assistant, LiveRun, ServerCore
from langgraph_moa.server.schemas import CommandModel
from langgraph_moa.server.streaming import StreamMapper, graph_stream_modes
from langgraph_moa.spec import SpecError

__all__ = ["SHOWN_ERRORS", "RunExecution", "UnknownInterruptError"]

log = logging.getLogger("langgraph_moa.server")

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


class RunExecution(ServerCore):
    """Runs one run to its end; called by the executor."""

    async def dequeued(self, run_id: str) -> None:
        """A queued run was cancelled before it started."""
        run = await self.registry.get_run(run_id)
        if run is not None and run.status in ACTIVE:
            await self.registry.update_run(run_id, status="cancelled", release=True)
        await self._finish(run_id)

    async def _finish(self, run_id: str, *, log_end: bool = True) -> None:
        await self.streams.close(run_id, log_end=log_end)
        live = self._live.pop(run_id, None)
        if live is not None:
            live.done.set()

    async def execute(self, run_id: str, *, resume: bool) -> None:
        """Execute one run to its end through the run executor (thread lease, heartbeat,
        cancel requests, one recorded shape); its status is recorded before its stream
        closes."""
        live = self._live.setdefault(run_id, LiveRun())
        run = await self.registry.get_run(run_id)
        if run is None or run.status not in ACTIVE:
            # in a worker, a run ended before its job ran (a cancel): followers need an end
            unended = run is not None and self.role == "worker" and not self.streams.is_open(run_id)
            if unended and await self.streams.event_log.last(run_id, "end") is None:
                self.streams.open(run_id, persist=True)
            await self._finish(run_id)  # cancelled or deleted while it waited
            return
        if not self.streams.is_open(run_id):
            self.streams.open(run_id, persist=self._persist(run))

        async def body(execution: Execution) -> RunEnd:
            return await self._stream_run(execution.run, execution.configurable(), resume)

        async def emit(event: str, data: Any) -> None:
            await self._publish(run_id, event, data)

        def on_stop() -> str | None:
            if self.role == "worker" or (self._stopping and live.cancel_action is None):
                return None  # the worker decides; a shutdown leaves it for the next process
            return "cancelled"

        ended = None
        try:
            ended = await self.runner.execute(
                run,
                body,
                owner=self.owner,
                wait=self.role == "server",
                emit=emit,
                describe_error=lambda exc: self._describe(exc, run_id),
                on_stop=on_stop,
            )
        except asyncio.CancelledError:
            if self.role == "worker":
                self._forget(run_id)
                raise
            if on_stop() is None:
                self._forget(run_id)
                return
        except (RunOwnedError, LeaseHeldError) as exc:
            if self.role == "worker":  # the worker queues the job again (RunBusy)
                self._forget(run_id)
                raise
            log.info("run %s is not run here: %s", run_id, exc)
        except OwnershipLostError as exc:
            log.warning("%s", exc)
            self._forget(run_id)
            if self.role == "worker":  # the worker waits for the one that took it over
                raise
            return
        dropped = False
        if ended is not None and ended.status not in ACTIVE and run.options.get("temporary"):
            with contextlib.suppress(Exception):
                await self._drop_thread(run.thread_id, run_id)
                dropped = True
        await self._finish(run_id, log_end=not dropped)

    def _forget(self, run_id: str) -> None:
        """Stop following a run another process (or the next start) continues."""
        self.streams.forget(run_id)
        live = self._live.pop(run_id, None)
        if live is not None:
            live.done.set()

    async def _drop_thread(self, thread_id: str, run_id: str) -> None:
        record = await self.registry.get_thread(thread_id)
        await self.registry.delete_thread(thread_id)
        await self.streams.delete([run_id])
        if record is not None:
            checkpointer = self._graph_of(record).checkpointer
            if isinstance(checkpointer, BaseCheckpointSaver):
                await checkpointer.adelete_thread(thread_id)

    async def _publish(self, run_id: str, event: str, data: Any) -> None:
        await self.streams.publish(run_id, event, serde.dumps(data))

    @staticmethod
    def _describe(exc: BaseException, run_id: str) -> tuple[str, str]:
        if isinstance(exc, SHOWN_ERRORS):
            return type(exc).__name__, str(exc)
        log.error("run %s failed", run_id, exc_info=exc)
        return type(exc).__name__, "An internal error occurred"

    async def _stream_run(self, run: RunRecord, lease: Mapping[str, Any], resume: bool) -> RunEnd:
        options = run.options
        assistant = await self._assistant_of_run(run)
        # the run's agents see the long-term memory of its tenant, as /store shows it
        memory = TenantView(self.store, run.options.get("tenant"))
        graph = assistant.graph.copy({"store": memory})
        run_id = run.run_id
        await self._publish(run_id, "metadata", {"run_id": run_id, "attempt": run.attempts})
        config = self._run_config(run)
        config["configurable"].update(lease)
        if resume and await self._already_ended(graph, run):
            return await self._end_of(assistant, run)  # only its outcome was missing
        graph_input = await self._input_of(run, graph, config, resume=resume)
        modes: list[str] = list(options.get("stream_mode") or ["values"])
        mapper = StreamMapper(modes, subgraphs=bool(options.get("stream_subgraphs")))
        kwargs: dict[str, Any] = {
            "stream_mode": graph_stream_modes(modes),
            "subgraphs": True,
            # the protocol's values are the whole state, as the reference's v3 stream
            "output_keys": (
                graph.stream_channels if options.get("protocol") else graph.output_channels
            ),
            "durability": options.get("durability") or "async",
            "interrupt_before": options.get("interrupt_before"),
            "interrupt_after": options.get("interrupt_after"),
        }
        if "events" in modes:
            stream = self._with_events(graph, graph_input, config, run_id, kwargs)
        else:
            stream = graph.astream(graph_input, config, **kwargs)
        async for item in stream:
            namespace, mode, chunk = cast(tuple[tuple[str, ...], str, Any], item)
            for event, payload in mapper.map(namespace, mode, chunk):
                await self._publish(run_id, event, payload)
        return await self._end_of(assistant, run)

    async def _with_events(
        self,
        graph: CompiledStateGraph,
        graph_input: Any,
        config: RunnableConfig,
        run_id: str,
        kwargs: dict[str, Any],
    ) -> AsyncIterator[Any]:
        """``graph.astream`` items through ``astream_events`` (v2): the graph's own stream
        chunks are yielded, every other LangChain event is published as ``events``."""
        async for event in graph.astream_events(graph_input, config, version="v2", **kwargs):
            if "langsmith:hidden" in (event.get("tags") or ()):
                continue
            if event["event"] == "on_chain_stream" and event["run_id"] == run_id:
                yield event["data"]["chunk"]
            else:
                await self._publish(run_id, "events", event)

    @staticmethod
    async def _already_ended(graph: CompiledStateGraph, run: RunRecord) -> bool:
        """The thread's last checkpoint is this run's final (or paused) one."""
        snapshot = await graph.aget_state(MoA.config(run.thread_id))
        ours = (snapshot.metadata or {}).get("run_id") == run.run_id
        return ours and (not snapshot.next or bool(snapshot.interrupts))

    @staticmethod
    async def _end_of(assistant: Assistant, run: RunRecord) -> RunEnd:
        result = await assistant.moa.aresult(run.thread_id, run.run_id)
        return RunEnd(
            "interrupted" if result.status == "interrupted" else "success",
            answer=result.answer,
            usage=result.usage,
            waiting_for=serde.jsonable(result.interrupts) or None,
        )

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
        return await self.graph_of_spec(run.spec)

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
