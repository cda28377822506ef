"""Scale-out: runs execute as procrastinate jobs in worker processes on PostgreSQL.

A run is a row of the run registry (``moa_runs``: spec, input, options, status) plus a
procrastinate job ``{run_id, thread_id}``, deferred with ``lock=<thread_id>`` so a thread
never has two active runs and ``queueing_lock=<run_id>`` so a run is never queued twice.
Queue, locks and worker heartbeats live in the PostgreSQL database that holds the
checkpoints and the registry: a deployment has one stateful service.

* ``moa worker`` (:func:`serve`) runs a procrastinate worker. Its job body claims the run
  in the registry (a fenced owner with a heartbeat) and executes it with
  :class:`~langgraph_moa.runtime.worker_runs.MoARunHandler`, or with the HTTP server's run
  handler for runs the server queued (``handler="server"``, see :class:`ProcrastinateExecutor`).
  Stream chunks go to ``moa_run_events`` (:mod:`~langgraph_moa.persistence.events`), which
  any process follows with LISTEN/NOTIFY and replays from an event id.
* Crash recovery: every worker runs a :class:`Reaper`. A job still ``doing`` on a worker
  whose procrastinate heartbeat (sent from the event loop and from a thread, so a busy
  loop does not pass for a dead process) is older than ``stalled_after`` seconds is put
  back in the queue with procrastinate's own ``get_stalled_jobs`` + ``retry_job``, and its
  registry owner is released (fencing out the old worker, should it be alive after all).
  The next worker continues the run from its last checkpoint. Liveness is judged by
  heartbeats, never by how long a run has taken, so a long run on a live worker is not
  handed out again. A PostgreSQL advisory lock lets one reaper act at a time.
* Cancel: ``RunQueue.cancel`` drops a queued job; for a running one, the worker's LISTEN
  connection (``NOTIFY moa_run_cancel``) stops the run at once, and the run's own poll of
  the registry (``cancel_poll``) catches a missed notification.
* SIGTERM drains: the worker takes no new job; each of its runs stops at its next
  checkpoint and goes back to the queue for another worker. After ``shutdown_grace``
  seconds, runs still going are cancelled (the agents that finished keep their
  checkpointed writes) and handed back too. SIGKILL is a crash (see above).

>>> async with RunQueue("postgresql+psycopg://localhost/moa") as queue:
...     run = await queue.submit(spec, "Compare B-trees and LSM-trees")
...     async for event in queue.follow(run.run_id):
...         print(event.event, event.data)
...     print((await queue.get(run.run_id)).answer)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import procrastinate
from langgraph.checkpoint.base import BaseCheckpointSaver
from procrastinate import exceptions as pc_exceptions
from procrastinate.job_context import AbortReason
from procrastinate.jobs import Status

from langgraph_moa.persistence.events import EventLog, RunEvent
from langgraph_moa.persistence.registry import (
    LeaseHeldError,
    OwnershipLostError,
    RunNotFoundError,
    RunOwnedError,
    RunRecord,
    RunRegistry,
)
from langgraph_moa.runtime.api import MoA, RunResult
from langgraph_moa.runtime.executor import RunExecutor
from langgraph_moa.runtime.store import open_checkpointer, resolve_db_url
from langgraph_moa.runtime.worker_reaper import Reaper, _Heartbeat
from langgraph_moa.runtime.worker_runs import (
    DEFAULT_STREAM_MODE,
    MoARunHandler,
    RunBusy,
    RunHandedBack,
    RunTakenOver,
)
from langgraph_moa.runtime.worker_setup import (
    DEFAULT_QUEUE,
    TASK_NAME,
    WorkerConfigError,
    conninfo_of,
    schema_lock,
    setup_schema,
)
from langgraph_moa.spec import GraphSpec, load_spec

__all__ = [
    "DEFAULT_QUEUE",
    "TASK_NAME",
    "ProcrastinateExecutor",
    "Reaper",
    "RunQueue",
    "Submission",
    "WorkerConfigError",
    "WorkerRuntime",
    "WorkerSettings",
    "conninfo_of",
    "make_app",
    "result_of",
    "schema_lock",
    "serve",
    "setup",
    "setup_schema",
]

log = logging.getLogger(__name__)

SERVER_HANDLER = "langgraph_moa.server.worker:open_run_handler"
"""``module:function`` the workers call for runs the HTTP server queued: an async context
manager factory ``open_run_handler(db_url, settings) -> RunHandler`` (see
:class:`RunHandler`), its runs heartbeating on the worker's settings."""

SERVER_CRONS = "langgraph_moa.server.worker:run_cron_scheduler"
"""``module:function`` of the cron scheduler a worker runs: ``run_cron_scheduler(db_url)``,
an async function that fires due crons until cancelled."""

CheckpointerFactory = Callable[[str], AbstractAsyncContextManager[BaseCheckpointSaver[Any]]]


class RunHandler(Protocol):
    """What executes a queued run in a worker (the HTTP server's handler has this shape)."""

    async def execute(self, run_id: str, *, resume: bool) -> None: ...

    async def dequeued(self, run_id: str) -> None: ...

    def cancel_local(self, run_id: str) -> bool:
        """Stop ``run_id`` at once if this handler runs it here; False otherwise."""
        ...


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker process runs; the timings are seconds."""

    db_url: str | None = None
    concurrency: int = 4
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    name: str | None = None
    heartbeat_interval: float = 10.0
    stalled_after: float = 60.0
    """A worker silent this long is dead: its runs are re-queued."""
    reap_interval: float = 10.0
    shutdown_grace: float = 30.0
    max_attempts: int = 5
    """A run whose worker dies when it has been started this many times (by any worker,
    shutdowns included) is failed, not re-queued; waits for a busy thread do not count."""
    poll_interval: float = 2.0
    """Seconds between polls for jobs when no notification came (runs handed back at a
    shutdown are found this way)."""
    cancel_poll: float = 1.0
    """Seconds between a running run's checks for a cancel request, should the worker's
    LISTEN connection miss its notification (capped at ``heartbeat_interval``)."""
    crons: bool = True
    """Fire due crons from this worker (``SERVER_CRONS``); each tick fires once across all
    workers and servers."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise WorkerConfigError(f"--concurrency must be 1 or more, got {self.concurrency}")
        if not self.queues or any(not q for q in self.queues):
            raise WorkerConfigError("--queues: give one or more non-empty queue names")
        for name in ("heartbeat_interval", "reap_interval", "poll_interval", "cancel_poll"):
            if getattr(self, name) <= 0:
                raise WorkerConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.stalled_after < 2 * self.heartbeat_interval:
            raise WorkerConfigError(
                f"--stalled-after ({self.stalled_after:g}s) must be at least twice the "
                f"heartbeat interval ({self.heartbeat_interval:g}s), or live workers would be "
                "taken for dead and their runs executed twice"
            )
        if self.shutdown_grace < 0:
            raise WorkerConfigError(f"--grace must be 0 or more, got {self.shutdown_grace}")
        if self.max_attempts < 1:
            raise WorkerConfigError(f"--max-attempts must be 1 or more, got {self.max_attempts}")

    @property
    def worker_name(self) -> str:
        return self.name or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Submission:
    """A queued run."""

    run_id: str
    thread_id: str
    job_id: int
    queue: str


class _RetrySoon(procrastinate.BaseRetryStrategy):
    """Hand-backs are queued again at once, busy runs after a short wait; errors never."""

    def __init__(self, busy_wait: int = 2) -> None:
        self.busy_wait = busy_wait

    def get_retry_decision(
        self, *, exception: BaseException, job: Any
    ) -> procrastinate.RetryDecision | None:
        if isinstance(exception, RunHandedBack):
            return procrastinate.RetryDecision(retry_in={"seconds": 0})
        if isinstance(exception, RunBusy):
            return procrastinate.RetryDecision(retry_in={"seconds": self.busy_wait})
        return None


def make_app(db_url: str | None, *, max_pool: int = 8) -> procrastinate.App:
    """A procrastinate app on ``db_url`` with the ``moa.run`` task registered."""
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo_of(db_url), min_size=1, max_size=max_pool
    )
    app = procrastinate.App(connector=connector)
    app.task(name=TASK_NAME, pass_context=True, queue=DEFAULT_QUEUE, retry=_RetrySoon())(_run_job)
    return app


async def setup(db_url: str | None) -> None:
    """Create everything the workers need in ``db_url`` (``moa worker --setup``)."""
    db_url = resolve_db_url(db_url)
    app = make_app(db_url, max_pool=2)
    async with (
        app.open_async(),
        EventLog.from_url(db_url) as events,
        RunRegistry.from_url(db_url) as registry,
    ):
        await setup_schema(app, events, registry)


def result_of(run: RunRecord) -> RunResult:
    """A :class:`RunResult` from a run's registry record (after its ``end`` event)."""
    return RunResult(
        thread_id=run.thread_id,
        run_id=run.run_id,
        status=run.status,
        answer=run.answer,
        usage=run.usage,  # type: ignore[arg-type]
        interrupts=list(run.waiting_for or []),
        notes=[run.error] if run.error else [],
    )


def _warm_up() -> None:
    """Import the model clients before taking jobs: a first import inside a run blocks the
    event loop for a second or more, and with it the worker's heartbeats."""
    from langchain_openai import ChatOpenAI

    ChatOpenAI(model="warm-up", api_key="unused", base_url="http://127.0.0.1:9/v1")  # type: ignore[arg-type]


async def _run_job(context: procrastinate.JobContext, **job: Any) -> str:
    runtime = context.additional_context.get("moa")
    if not isinstance(runtime, WorkerRuntime):
        raise RuntimeError("moa.run jobs run in `moa worker` processes (no WorkerRuntime here)")
    return await runtime.execute(context, job)


@dataclass
class WorkerRuntime:
    """What the jobs of one worker process share: registry, checkpointer, events, handlers."""

    settings: WorkerSettings
    events: EventLog
    registry: RunRegistry
    checkpointer_factory: CheckpointerFactory = open_checkpointer
    draining: bool = False
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    _handlers: dict[str, RunHandler] = field(default_factory=dict)
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def __aenter__(self) -> WorkerRuntime:
        await asyncio.to_thread(_warm_up)
        db_url = resolve_db_url(self.settings.db_url)
        saver = await self._stack.enter_async_context(self.checkpointer_factory(db_url))
        self._handlers["moa"] = MoARunHandler(
            self.registry,
            saver,
            self.events,
            heartbeat_interval=self.settings.heartbeat_interval,
            stale_after=self.settings.stalled_after,
            cancel_poll=self.settings.cancel_poll,
            draining=lambda: self.draining,
            worker_name=self.settings.worker_name,
        )
        return self

    @property
    def cancel_listening(self) -> asyncio.Event:
        """Set while :meth:`listen_for_cancels` has its LISTEN connection."""
        return self._moa().executor.cancel_listening

    def _moa(self) -> MoARunHandler:
        moa = self._handlers["moa"]
        assert isinstance(moa, MoARunHandler)
        return moa

    async def listen_for_cancels(self) -> None:
        """Stop this worker's runs as soon as a cancel request is made (``NOTIFY``), not at
        their next poll; one LISTEN connection serves every handler. Runs until cancelled."""
        moa = self._moa()

        async def elsewhere(run_id: str) -> None:  # not a run of the moa handler
            for handler in list(self._handlers.values()):
                if handler is not moa and handler.cancel_local(run_id):
                    return

        await moa.executor.listen_for_cancels(elsewhere)

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def handler(self, kind: str) -> RunHandler:
        """The handler of ``kind`` (``moa``, or ``server`` opened on first use)."""
        async with self._opening:  # concurrent first jobs open it once
            return await self._handler(kind)

    async def _handler(self, kind: str) -> RunHandler:
        if kind not in self._handlers:
            if kind != "server":
                raise ValueError(f"unknown run handler {kind!r}; this worker knows moa, server")
            module_name, _, func_name = SERVER_HANDLER.partition(":")
            try:
                factory = getattr(importlib.import_module(module_name), func_name)
            except (ImportError, AttributeError) as exc:
                raise RuntimeError(
                    f"runs queued by the HTTP server need {SERVER_HANDLER} (install "
                    f"langgraph-moa[server] on the workers): {exc}"
                ) from exc
            db_url = resolve_db_url(self.settings.db_url)
            opened = factory(db_url, self.settings)
            handler = await self._stack.enter_async_context(opened)
            runner = getattr(handler, "runner", None)
            if isinstance(runner, RunExecutor):  # its runs hear this worker's listener too
                runner.cancel_listening = self.cancel_listening
            self._handlers[kind] = handler
        return self._handlers[kind]

    async def execute(self, context: procrastinate.JobContext, job: Mapping[str, Any]) -> str:
        """Run one job; returns the run's registry status."""
        run_id = str(job["run_id"])
        if self.draining:
            raise RunHandedBack("the worker is shutting down")
        handler = await self.handler(str(job.get("handler", "moa")))
        # a retried job (busy thread, hand-back, dead worker) may resume where it stopped
        resume = bool(job.get("resume")) or context.job.attempts > 0
        try:
            try:
                await handler.execute(run_id, resume=resume)
            except (RunOwnedError, LeaseHeldError) as exc:  # a live process has it
                raise RunBusy(str(exc)) from None
            except OwnershipLostError as exc:  # the lease went to another worker
                raise RunTakenOver(f"run {run_id} was taken over: {exc}") from None
        except RunTakenOver as exc:
            # The reaper gave this job to another worker while this process was frozen. Do
            # not let procrastinate finish the job under the other worker's feet (that
            # would release the thread's lock early): wait until the other worker is done.
            log.warning("%s; waiting for that worker before letting the job go", exc)
            await self._wait_job_elsewhere(context)
            raise
        except asyncio.CancelledError:
            if context.abort_reason() == AbortReason.USER_REQUEST:
                await self.registry.update_run(run_id, status="cancelled", release=True)
                await self.events.append(run_id, "end", None)
                raise
            await self.registry.update_run(run_id, status="pending", release=True)
            raise RunHandedBack("cancelled by the worker's shutdown") from None
        run = await self.registry.get_run(run_id)
        return run.status if run is not None else "unknown"

    async def _wait_job_elsewhere(self, context: procrastinate.JobContext) -> None:
        assert context.job.id is not None
        active = (Status.TODO.value, Status.DOING.value)
        while True:
            jobs = await context.app.job_manager.list_jobs_async(id=context.job.id)
            if not any(job.status in active for job in jobs):
                return  # the other execution ended
            if all(job.attempts == context.job.attempts for job in jobs):
                return  # not queued again: the job is still this execution's
            await asyncio.sleep(self.settings.poll_interval)


async def serve(
    settings: WorkerSettings,
    *,
    checkpointer_factory: CheckpointerFactory = open_checkpointer,
    ready: Callable[[], None] | None = None,
) -> None:
    """Run one worker process until SIGTERM/SIGINT, then drain (see the module docstring)."""
    from procrastinate.worker import Worker

    db_url = resolve_db_url(settings.db_url)
    conninfo = conninfo_of(db_url)
    app = make_app(db_url, max_pool=settings.concurrency + 4)
    async with (
        app.open_async(),
        EventLog.from_url(db_url) as events,
        RunRegistry.from_url(db_url) as registry,
    ):
        await setup_schema(app, events, registry)
        runtime = WorkerRuntime(settings, events, registry, checkpointer_factory)
        async with schema_lock(conninfo):  # the checkpointer creates its tables
            await runtime.__aenter__()
        worker = Worker(
            app=app,
            queues=list(settings.queues),
            name=settings.worker_name,
            concurrency=settings.concurrency,
            additional_context={"moa": runtime},
            install_signal_handlers=False,
            update_heartbeat_interval=settings.heartbeat_interval,
            stalled_worker_timeout=settings.stalled_after,
            shutdown_graceful_timeout=settings.shutdown_grace,
            fetch_job_polling_interval=settings.poll_interval,
            abort_job_polling_interval=settings.poll_interval,
            delete_jobs="successful",
        )
        beat = _Heartbeat(conninfo, settings.heartbeat_interval, lambda: worker.worker_id)
        beat.start()
        cancels = asyncio.create_task(runtime.listen_for_cancels(), name="moa-cancels")
        try:
            with contextlib.suppress(TimeoutError):  # if it cannot connect, the polls see them
                listening = runtime.cancel_listening.wait()
                await asyncio.wait_for(listening, settings.heartbeat_interval)
            running = asyncio.create_task(worker.run(), name="procrastinate-worker")
            reaper = asyncio.create_task(Reaper(app, events, registry, settings).run_forever())
            crons = asyncio.create_task(_fire_crons(db_url)) if settings.crons else None
            loop = asyncio.get_running_loop()

            def drain() -> None:
                if runtime.draining:
                    log.warning("already draining; SIGKILL stops the worker at once")
                    return
                log.info("draining: runs go back to the queue at their next checkpoint")
                runtime.draining = True
                running.cancel()

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, drain)
            log.info(
                "worker %s: queues %s, %d runs at a time, heartbeat %gs, dead after %gs",
                settings.worker_name,
                ",".join(settings.queues),
                settings.concurrency,
                settings.heartbeat_interval,
                settings.stalled_after,
            )
            if ready is not None:
                ready()
            try:
                await running
            except asyncio.CancelledError:
                if not runtime.draining:
                    raise
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                background = [reaper, cancels, *([crons] if crons else [])]
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
        finally:
            cancels.cancel()  # already done when the worker ran
            await asyncio.gather(cancels, return_exceptions=True)
            beat.stopped.set()
            await asyncio.to_thread(beat.join)
            await runtime.__aexit__(None, None, None)


async def _fire_crons(db_url: str) -> None:
    """Run the cron scheduler of ``SERVER_CRONS`` (needs the ``server`` extra)."""
    module_name, _, func_name = SERVER_CRONS.partition(":")
    try:
        scheduler = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        log.info("crons are not fired by this worker (no %s: %s)", SERVER_CRONS, exc)
        return
    while True:
        try:
            await scheduler(db_url)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("the cron scheduler stopped; starting it again", exc_info=True)
            await asyncio.sleep(5)


class _Queue:
    """Deferring and cancelling ``moa.run`` jobs (shared by the client and the executor)."""

    def __init__(self, db_url: str | None, queue: str) -> None:
        self.db_url = resolve_db_url(db_url)
        self.queue = queue
        self.app = make_app(self.db_url, max_pool=4)
        self.events: EventLog
        self.registry: RunRegistry
        self._stack = AsyncExitStack()

    async def _open(self) -> None:
        await self._stack.enter_async_context(self.app.open_async())
        # made here, in the event loop that uses them: one engine per database and loop
        self.events = await self._stack.enter_async_context(EventLog.from_url(self.db_url))
        self.registry = RunRegistry.from_url(self.db_url)
        self._stack.push_async_callback(self.registry.aclose)
        await setup_schema(self.app, self.events, self.registry)

    async def _close(self) -> None:
        await self._stack.aclose()

    async def _defer(
        self,
        run_id: str,
        thread_id: str,
        *,
        handler: str,
        resume: bool = False,
        queue: str | None = None,
        priority: int = 0,
    ) -> int | None:
        """Queue a job for the run; None when it is queued already."""
        deferrer = self.app.configure_task(
            TASK_NAME,
            lock=thread_id,
            queueing_lock=run_id,
            queue=queue or self.queue,
            priority=priority,
        )
        try:
            return await deferrer.defer_async(
                run_id=run_id, thread_id=thread_id, handler=handler, resume=resume
            )
        except pc_exceptions.AlreadyEnqueued:
            return None

    async def _cancel_job(self, run_id: str) -> str | None:
        """Cancel a queued job; the job's status before (``doing``: a worker has it).

        A job a worker has is not aborted: the worker sees the cancel request (made first
        by the caller; its NOTIFY at once, the registry at the run's next poll) and its
        executor cancels the run once, so LangGraph
        still stores its last writes; procrastinate's abort would cancel the job's task a
        second time, cutting that short."""
        for job in await self.app.job_manager.list_jobs_async(queueing_lock=run_id):
            if job.status == Status.TODO.value:
                assert job.id is not None
                if await self.app.job_manager.cancel_job_by_id_async(job.id):
                    return job.status
            if job.status in (Status.TODO.value, Status.DOING.value):
                return Status.DOING.value  # running, or taken by a worker since the listing
        return None


class RunQueue(_Queue):
    """Submit runs to the workers and follow them, from any process that reaches the database."""

    def __init__(self, db_url: str | None = None, *, queue: str = DEFAULT_QUEUE) -> None:
        super().__init__(db_url, queue)

    async def __aenter__(self) -> RunQueue:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def submit(
        self,
        spec: GraphSpec | Mapping[str, Any] | str,
        task: str | Mapping[str, Any] | None = None,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
        resume: Any = None,
        stream_mode: Sequence[str] = DEFAULT_STREAM_MODE,
        interrupt_after: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int = 0,
    ) -> Submission:
        """Record a ``pending`` run of ``spec`` on ``thread_id`` (new by default) and queue it.

        ``task=None`` continues the thread from its last checkpoint; ``resume=value``
        answers a pending interrupt; ``interrupt_after`` names nodes or agents to pause
        after (as :class:`~langgraph_moa.runtime.api.MoA`). Runs of one thread execute one
        at a time, in the order they were queued.
        """
        graph_spec = load_spec(spec)
        thread_id = thread_id or uuid.uuid4().hex
        run_id = run_id or str(uuid.uuid4())
        try:
            uuid.UUID(run_id)
        except ValueError:
            raise ValueError(f"run_id must be a UUID, got {run_id!r}") from None
        run_input = {"task": task} if isinstance(task, str) else task
        await self.registry.create_run(
            thread_id,
            run_id=run_id,
            spec=graph_spec.model_dump(mode="json"),
            spec_name=graph_spec.name,
            spec_hash=graph_spec.spec_hash(),
            input=dict(run_input) if run_input is not None else None,
            metadata=metadata,
            options={
                "stream_mode": list(stream_mode),
                "resume": resume,
                "interrupt_after": MoA(graph_spec, interrupt_after=interrupt_after).interrupt_after,
                "queue": queue or self.queue,
            },
        )
        job_id = await self._defer(run_id, thread_id, handler="moa", queue=queue, priority=priority)
        assert job_id is not None  # the run id is new, so is its queueing lock
        return Submission(run_id, thread_id, job_id, queue or self.queue)

    def follow(self, run_id: str, after: int = 0) -> AsyncIterator[RunEvent]:
        """The run's events after event id ``after``, live, until its ``end``."""
        return self.events.follow(run_id, after)

    async def get(self, run_id: str) -> RunRecord | None:
        """The run's registry record (status, answer, usage, error, owner...)."""
        return await self.registry.get_run(run_id)

    async def wait(self, run_id: str) -> RunRecord:
        """Wait for the run's ``end`` event and return its record."""
        async for _ in self.follow(run_id):
            pass
        run = await self.get(run_id)
        assert run is not None
        return run

    async def cancel(self, run_id: str) -> bool:
        """Cancel a queued run, or ask its worker to stop it; False when it is over."""
        ended_here = False  # a queued run nobody holds, ended by the request itself
        with contextlib.suppress(RunNotFoundError):
            earlier = await self.registry.get_run(run_id)
            run = await self.registry.request_cancel(run_id)
            queued = earlier is not None and earlier.status == "pending"
            ended_here = queued and run.status == "cancelled"
        before = await self._cancel_job(run_id)
        if before == Status.TODO.value:  # dropped from the queue: no worker will end it
            await self.registry.update_run(run_id, status="cancelled", release=True)
            await self.events.append(run_id, "end", None)
        elif before is None and ended_here and await self.events.last(run_id, "end") is None:
            # its job was lost (or a worker took it and saw the cancel, ending it too)
            await self.events.append(run_id, "end", None)
        return before is not None or ended_here


class ProcrastinateExecutor(_Queue):
    """The HTTP server's ``RunExecutor`` backed by workers (``moa serve --workers``).

    ``submit`` queues a job that a ``moa worker`` executes with the server's own run handler
    (``SERVER_HANDLER``), ``cancel`` drops a queued job (a worker's run sees the registry's
    cancel request); events reach the server through ``moa_run_events``. Stopping the
    server leaves the runs to the workers.
    """

    def __init__(
        self, db_url: str | None = None, *, queue: str = DEFAULT_QUEUE, poll: float = 0.5
    ) -> None:
        super().__init__(db_url, queue)
        self.poll = poll
        self._handler: RunHandler | None = None

    async def start(self, handler: RunHandler) -> None:
        self._handler = handler
        await self._open()

    async def submit(self, run_id: str, thread_id: str, *, resume: bool = False) -> None:
        await self._defer(run_id, thread_id, handler="server", resume=resume)

    async def cancel(self, run_id: str) -> bool:
        before = await self._cancel_job(run_id)
        if before == Status.TODO.value and self._handler is not None:
            await self._handler.dequeued(run_id)
        return before is not None

    async def wait(self, run_id: str) -> None:
        while True:
            jobs = await self.app.job_manager.list_jobs_async(queueing_lock=run_id)
            if not any(j.status in (Status.TODO.value, Status.DOING.value) for j in jobs):
                return
            await asyncio.sleep(self.poll)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._close()
