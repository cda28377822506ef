"""The body of a queued run in a worker: run (or continue) one registry run of a thread.

A run queued by ``moa run --submit`` or :class:`~langgraph_moa.runtime.workers.RunQueue`
is a row of ``moa_runs`` (spec, input, options) plus a procrastinate job naming it.
:class:`MoARunHandler` executes it: claims the run in the registry (a fenced owner, with a
heartbeat), starts it, or continues it from the thread's last checkpoint when an earlier
attempt of the same run got that far, appends its stream chunks to ``moa_run_events``, and
records the outcome. Continuing never repeats the nodes whose writes were checkpointed:
finished layers, and the agents of the interrupted layer that had already answered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, cast

from langgraph.checkpoint.base import BaseCheckpointSaver

from langgraph_moa.persistence.events import EventLog
from langgraph_moa.persistence.registry import (
    LeaseHeldError,
    Owner,
    OwnershipLostError,
    RunOwnedError,
    RunRegistry,
)
from langgraph_moa.runtime.api import MoA
from langgraph_moa.runtime.executor import Execution, RunExecutor
from langgraph_moa.spec import load_spec

__all__ = ["DEFAULT_STREAM_MODE", "MoARunHandler", "RunBusy", "RunHandedBack", "RunTakenOver"]

log = logging.getLogger(__name__)

DEFAULT_STREAM_MODE = ("updates", "tasks")
FINAL = ("success", "error", "cancelled", "interrupted")


class RunHandedBack(Exception):
    """The worker is shutting down: the run stopped at a checkpoint and goes back to the
    queue."""


class RunBusy(Exception):
    """Another live process still owns the run in the registry; try again shortly."""


class RunTakenOver(Exception):
    """This worker was taken for dead (frozen longer than the dead-worker threshold) and
    the run went to another worker; this one stopped without recording anything."""


class MoARunHandler:
    """Executes registry runs with a shared checkpointer (one per worker process)."""

    def __init__(
        self,
        registry: RunRegistry,
        checkpointer: BaseCheckpointSaver[Any],
        events: EventLog,
        *,
        heartbeat_interval: float = 10.0,
        stale_after: float = 60.0,
        cancel_poll: float = 1.0,
        draining: Callable[[], bool] = lambda: False,
        worker_name: str | None = None,
    ) -> None:
        self.registry = registry
        self.checkpointer = checkpointer
        self.events = events
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.draining = draining
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.executor = RunExecutor(
            registry,
            heartbeat_interval=heartbeat_interval,
            stale_after=stale_after,
            cancel_poll=cancel_poll,
        )
        self._graphs: OrderedDict[str, MoA] = OrderedDict()

    async def moa_for(self, spec_data: Mapping[str, Any], interrupt_after: Any = ()) -> MoA:
        """The compiled MoA of a spec (cached per process by spec hash and pauses)."""
        spec = load_spec(dict(spec_data))
        pauses = tuple(interrupt_after or ())
        key = f"{spec.spec_hash()}:{','.join(pauses)}"
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        moa = await MoA(spec, checkpointer=self.checkpointer, interrupt_after=pauses).__aenter__()
        self._graphs[key] = moa
        while len(self._graphs) > 32:
            self._graphs.popitem(last=False)
        return moa

    def cancel_local(self, run_id: str) -> bool:
        """Stop ``run_id`` at once if this worker runs it; False otherwise."""
        return self.executor.cancel_local(run_id)

    async def dequeued(self, run_id: str) -> None:
        """The run was cancelled before a worker took it."""
        await self.registry.update_run(run_id, status="cancelled", release=True)
        await self.events.append(run_id, "end", None)

    async def execute(self, run_id: str, *, resume: bool = False) -> None:
        """Run ``run_id`` to its end, an interrupt, or an error, and record that.

        Raises :class:`RunHandedBack` when the worker drains, :class:`RunBusy` when the
        registry says a live process owns the run, :class:`RunTakenOver` when another
        worker took the run meanwhile, and ``CancelledError`` when cancelled (the caller
        records a cancellation; a shutdown leaves the run resumable).
        """
        run = await self.registry.get_run(run_id)
        if run is None:
            log.error("queued run %s is not in the registry; dropping it", run_id)
            return
        if run.status == "cancelled" or (run.status in FINAL and not resume):
            # a cancel request ends a queued run nobody holds (`moa cancel`, RunQueue.cancel
            # racing this worker for the job): its followers still wait for an end, and a
            # retried job (attempt > 1) must not take a cancelled run back
            log.info("run %s is already %s; nothing to do", run_id, run.status)
            if await self.events.last(run_id, "end") is None:
                await self.events.append(run_id, "end", None)
            return
        if run.spec is None:
            await self._fail(run_id, None, ValueError("the run has no spec in the registry"))
            return
        spec, options = run.spec, run.options

        async def body(execution: Execution) -> Any:
            moa = await self.moa_for(spec, options.get("interrupt_after"))
            await self._run(
                run_id,
                run.thread_id,
                spec,
                run.input,
                options,
                execution.run.attempts,  # the times a worker started it, with this one
                execution.configurable(),
            )
            return await moa.aresult(run.thread_id, run_id)

        async def emit(event: str, data: Any) -> None:
            log.error("run %s failed: %s", run_id, data)
            await self.events.append(run_id, event, data)

        try:
            await self.executor.execute(
                run,
                body,
                owner=Owner.new(),
                resume_ended=resume,
                emit=emit,
                on_stop=None,
                hand_back=(RunHandedBack,),
            )
        except (RunOwnedError, LeaseHeldError) as exc:
            raise RunBusy(str(exc)) from None
        except OwnershipLostError as exc:  # the lease went to another worker meanwhile
            raise RunTakenOver(f"run {run_id} was taken over by another worker: {exc}") from None
        await self.events.append(run_id, "end", None)

    async def _run(
        self,
        run_id: str,
        thread_id: str,
        spec: Mapping[str, Any],
        run_input: Any,
        options: Mapping[str, Any],
        attempt: int,
        configurable: Mapping[str, Any],
    ) -> None:
        if self.draining():
            raise RunHandedBack("the worker is shutting down")
        moa = await self.moa_for(spec, options.get("interrupt_after"))
        snapshot = await moa.graph.aget_state(MoA.config(thread_id))
        ours = (snapshot.metadata or {}).get("run_id") == run_id
        if ours and (not snapshot.next or snapshot.interrupts):
            return  # an earlier attempt finished the run; only its outcome is missing
        graph_input = None if ours else MoA.input_of(run_input, options.get("resume"))
        modes = list(options.get("stream_mode") or DEFAULT_STREAM_MODE)
        await self.events.append(
            run_id,
            "metadata",
            {
                "run_id": run_id,
                "thread_id": thread_id,
                "attempt": attempt,
                "resumed": ours,
                "worker": self.worker_name,
            },
        )
        config = MoA.config(thread_id, run_id, **configurable)
        config["metadata"] = {"run_id": run_id}
        stream = cast(
            AsyncGenerator[tuple[str, Any], None],
            moa.graph.astream(
                graph_input, config, stream_mode=[*modes, "checkpoints"], durability="sync"
            ),
        )
        async with contextlib.aclosing(stream), self.events.writer(run_id) as emit:
            async for mode, chunk in stream:
                if mode in modes:
                    emit(mode, chunk)
                if mode == "checkpoints" and self.draining():
                    raise RunHandedBack("the worker is shutting down")

    async def _fail(self, run_id: str, owner: Owner | None, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.error("run %s failed: %s", run_id, message)
        await self.events.append(
            run_id, "error", {"error": type(exc).__name__, "message": str(exc)}
        )
        with contextlib.suppress(OwnershipLostError):
            await self.registry.update_run(
                run_id, owner=owner, release=owner is not None, status="error", error=message
            )
        await self.events.append(run_id, "end", None)
