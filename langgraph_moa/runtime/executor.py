"""The one run executor: claim, lease, heartbeat, stream, record.

Every run of the registry executes through :meth:`RunExecutor.execute`, whoever started
it (:class:`~langgraph_moa.runtime.api.MoA`, ``moa worker``, ``moa serve``):

1. **Order.** A run whose thread has a newer run that already ended is marked
   ``cancelled`` (``superseded``) and never executed: an old run never overwrites a newer
   answer. With ``wait=True`` a run also waits while an older run of its thread is active
   (``enqueue``).
2. **Lease.** The thread's lease (a compare-and-swap in ``moa_threads``, see
   :meth:`~langgraph_moa.persistence.registry.RunRegistry.acquire_lease`) is the database
   lock that keeps one active run per thread across any number of processes. Its token
   goes to the checkpointer as ``config["configurable"]["__moa_lease__"]``, which rejects
   the writes of a holder that lost it. The run row is claimed for ``owner`` too.
3. **Heartbeat.** While the body runs, the lease and the run's heartbeat are renewed every
   ``heartbeat_interval`` seconds; a lost lease cancels the body (:class:`LeaseLostError`,
   nothing is recorded: the new holder does), a cancel request (``moa cancel``, any
   replica) cancels it and records ``cancelled``. Cancel requests are polled every
   ``cancel_poll`` seconds, and seen at once on PostgreSQL while
   :meth:`RunExecutor.listen_for_cancels` runs (``NOTIFY moa_run_cancel``).
4. **Record.** The end is recorded in one shape whatever the state holds: ``status``,
   ``answer`` (text; anything else as JSON), ``usage`` (the totals:
   ``input_tokens/output_tokens/total_tokens/calls/cost``), ``waiting_for``, ``error``.
   If that write fails (say, a value the database refuses), the run is recorded ``error``
   with the reason instead: every run reaches a terminal status.

A process that dies holding a lease stops renewing it; after ``stale_after`` seconds (or
at once, on the same host, when its pid is gone) another process may take the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import sqlalchemy as sa

from langgraph_moa.persistence.calls import CALLS_KEY, CallLedger, RunCalls
from langgraph_moa.persistence.errors import CheckpointConflictError
from langgraph_moa.persistence.registry import (
    CANCEL_CHANNEL,
    DEFAULT_STALE_AFTER,
    LeaseHeldError,
    Owner,
    OwnershipLostError,
    RegistryError,
    RunNotFoundError,
    RunOwnedError,
    RunRecord,
    RunRegistry,
    runs_table,
)

__all__ = [
    "LEASE_KEY",
    "Execution",
    "LeaseLostError",
    "Outcome",
    "RunEnd",
    "RunExecutor",
    "RunRejectedError",
    "admit_run",
    "usage_totals",
]

log = logging.getLogger(__name__)

LEASE_KEY = "__moa_lease__"
"""``config["configurable"]`` key carrying the lease token to the checkpointer."""
FINAL = ("success", "error", "cancelled", "interrupted")
ACTIVE = ("pending", "running")
USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens", "calls", "cost")

EventSink = Callable[[str, Any], Awaitable[None]]
MultitaskStrategy = Literal["reject", "interrupt", "rollback", "enqueue"]
KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""TCP keepalives of the LISTEN connection, unless the URL sets them: a silently dropped
one fails within about a minute and is opened again, instead of waiting forever."""


class LeaseLostError(OwnershipLostError):
    """Another process took the thread's lease (this one was taken for dead); it stopped
    without recording anything."""


class RunRejectedError(RegistryError):
    """``multitask_strategy="reject"`` and the thread has an active run."""


class Outcome(Protocol):
    """What a body returns (a :class:`~langgraph_moa.runtime.api.RunResult` is one)."""

    status: Any
    answer: Any
    usage: Any


@dataclass
class RunEnd:
    """The end of a run, in the one shape the registry keeps."""

    status: str
    answer: Any = None
    usage: Mapping[str, Any] | None = None
    error: str | None = None
    waiting_for: Any = None

    @classmethod
    def of(cls, outcome: Outcome | RunEnd) -> RunEnd:
        if isinstance(outcome, RunEnd):
            return outcome
        status = "interrupted" if outcome.status == "interrupted" else "success"
        return cls(
            status=status,
            answer=outcome.answer,
            usage=outcome.usage,
            waiting_for=getattr(outcome, "waiting_for", None) or None,
        )

    def values(self) -> dict[str, Any]:
        """The registry columns."""
        return {
            "status": self.status,
            "answer": _text(self.answer),
            "usage": usage_totals(self.usage),
            "error": self.error,
            "waiting_for": self.waiting_for or None,
        }


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    return json.dumps(value, default=str, ensure_ascii=False)


def usage_totals(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Usage totals in the registry's shape; a ``{"total": ...}`` wrapper is unwrapped."""
    if not usage:
        return {}
    if isinstance(usage.get("total"), Mapping):
        usage = usage["total"]
    return {k: usage[k] for k in USAGE_KEYS if isinstance(usage.get(k), int | float)}


@dataclass
class Execution:
    """A run being executed here: its record, owner, lease token and epoch."""

    run: RunRecord
    owner: Owner
    token: str
    epoch: int = 0
    stop: str | None = None
    """Why the body was cancelled: ``cancel`` (requested), ``lost`` (lease lost)."""
    task: asyncio.Task[Any] | None = field(default=None, repr=False)
    calls: RunCalls | None = field(default=None, repr=False)
    """The run's call ledger for this execution (every model call is recorded there)."""
    cancelled: bool = field(default=False, init=False, repr=False)
    """This execution cancelled ``task`` (once; the cancellation is ours to take back)."""
    _cancels_before: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        # cancellations of the caller's task requested before this run (an earlier run of
        # the same task that lost its lease, a caller that swallowed one) are not this run's
        if self.task is not None:
            self._cancels_before = self.task.cancelling()

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def thread_id(self) -> str:
        return self.run.thread_id

    def configurable(self) -> dict[str, Any]:
        """What to put into the run's ``config["configurable"]``: the lease token and the
        call ledger."""
        found: dict[str, Any] = {LEASE_KEY: self.token}
        if self.calls is not None:
            found[CALLS_KEY] = self.calls
        return found

    def interrupt(self, reason: str) -> None:
        """Cancel the body with ``reason`` (``cancel`` or ``lost``), once: a second cancel
        (the heartbeat seeing the request this process acted on) would cut short the body's
        own cleanup, such as LangGraph waiting for its last checkpoint writes."""
        if self.stop is None:
            self.stop = reason
        task = self.task
        if task is None or task.done() or task.cancelling() > self._cancels_before:
            return  # ended, or already being cancelled (by us, or by the caller: a shutdown)
        self.cancelled = True
        task.cancel(f"run {reason}")


async def admit_run(
    registry: RunRegistry,
    run: RunRecord,
    strategy: MultitaskStrategy,
    cancel: Callable[[str], Awaitable[Any]],
) -> None:
    """Apply a multitask strategy to a run just created on its thread (in any process).

    ``reject``: if an older run of the thread is active, the new run is deleted and
    :class:`RunRejectedError` raised (two replicas admitting at once: the older run wins).
    ``interrupt``/``rollback``: the older active runs are cancelled (``cancel(run_id)``);
    the new run waits for their lease. ``enqueue``: the new run waits its turn.
    """
    older = await _older_active(registry, run)
    if not older:
        return
    if strategy == "reject":
        await registry.delete_run(run.run_id)
        raise RunRejectedError(
            f"Thread is already running a task (run {older[0].run_id}). Wait for it to "
            "finish or choose a different multitask strategy."
        )
    if strategy in ("interrupt", "rollback"):
        for other in older:
            await cancel(other.run_id)


async def _older_active(registry: RunRegistry, run: RunRecord) -> list[RunRecord]:
    c = runs_table.c
    query = (
        sa.select(runs_table)
        .where(
            c.thread_id == run.thread_id,
            c.run_id != run.run_id,
            c.status.in_(ACTIVE),
            sa.or_(
                c.created_at < run.created_at,
                sa.and_(c.created_at == run.created_at, c.run_id < run.run_id),
            ),
        )
        .order_by(c.created_at.asc())
    )
    async with registry._reading() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [registry._run_record(r) for r in rows]


async def _newer_ended(registry: RunRegistry, run: RunRecord) -> RunRecord | None:
    """The first ended run of the thread newer than ``run``, in the order of
    :func:`_older_active`: created later, or at the same instant with a larger run id."""
    c = runs_table.c
    query = (
        sa.select(runs_table)
        .where(
            c.thread_id == run.thread_id,
            c.run_id != run.run_id,
            c.status.in_(FINAL),
            sa.or_(
                c.created_at > run.created_at,
                sa.and_(c.created_at == run.created_at, c.run_id > run.run_id),
            ),
        )
        .order_by(c.created_at.asc(), c.run_id.asc())
        .limit(1)
    )
    async with registry._reading() as conn:
        row = (await conn.execute(query)).mappings().first()
    return registry._run_record(row) if row is not None else None


class RunExecutor:
    """Executes registry runs (see the module docstring); one per process is enough."""

    def __init__(
        self,
        registry: RunRegistry,
        *,
        heartbeat_interval: float = 5.0,
        stale_after: float = DEFAULT_STALE_AFTER,
        cancel_poll: float = 1.0,
        lease_poll: float = 0.5,
    ) -> None:
        self.registry = registry
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.cancel_poll = min(cancel_poll, heartbeat_interval)
        self.lease_poll = lease_poll
        self.running: dict[str, Execution] = {}
        self.cancel_listening = asyncio.Event()
        """Set while :meth:`listen_for_cancels` has its LISTEN connection (PostgreSQL)."""
        self._waiting: dict[str, asyncio.Event] = {}

    # ---------------------------------------------------------------- cancel ---

    async def cancel(self, run_id: str) -> RunRecord:
        """Cancel ``run_id`` wherever it runs or waits: a request in the database that the
        holding process sees at its next poll, or at once while it listens (PostgreSQL),
        and at once when it is this one."""
        run = await self.registry.request_cancel(run_id)
        self.cancel_local(run_id)
        return run

    def cancel_local(self, run_id: str) -> bool:
        """Stop ``run_id`` if this executor runs it or waits to; False otherwise."""
        if run_id in self._waiting:
            self._waiting[run_id].set()
            return True
        execution = self.running.get(run_id)
        if execution is None:
            return False
        execution.interrupt("cancel")
        return True

    async def listen_for_cancels(
        self, on_request: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        """On PostgreSQL, act on cancel requests as they are made (``NOTIFY
        moa_run_cancel``) instead of at the next poll; ``on_request(run_id)`` is called
        for requests about runs this executor neither runs nor waits for (e.g. queued in
        the caller). Runs until cancelled; returns at once on other databases."""
        if self.registry.dialect != "postgresql":
            return
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        url = self.registry.engine.url.set(drivername="postgresql")
        given = url.render_as_string(hide_password=False)
        keepalive = {k: v for k, v in KEEPALIVE.items() if k not in conninfo_to_dict(given)}
        conninfo = make_conninfo(given, **keepalive)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    self.cancel_listening.set()
                    async for note in conn.notifies():
                        if self.cancel_local(note.payload) or on_request is None:
                            continue
                        try:
                            await on_request(note.payload)
                        except Exception:  # e.g. the database blinked; the polls retry
                            log.exception("cancel request for run %s failed", note.payload)
            except Exception as exc:  # the polls still see the requests meanwhile
                log.warning("cancel listener lost its connection (%s); reconnecting", exc)
            finally:
                self.cancel_listening.clear()
            await asyncio.sleep(self.heartbeat_interval)

    # --------------------------------------------------------------- execute ---

    async def execute(
        self,
        run: RunRecord | str,
        body: Callable[[Execution], Awaitable[Outcome | RunEnd]],
        *,
        owner: Owner | None = None,
        wait: bool = False,
        resume_ended: bool = False,
        emit: EventSink | None = None,
        describe_error: Callable[[BaseException], tuple[str, str]] | None = None,
        on_stop: str | Callable[[], str | None] | None = "interrupted",
        reraise: bool = False,
        usage_so_far: Callable[[], Awaitable[Mapping[str, Any] | None]] | None = None,
        hand_back: tuple[type[BaseException], ...] = (),
    ) -> RunRecord | None:
        """Execute a run with ``body`` and record its end; return the recorded run.

        ``wait``: wait for the thread's lease and for older active runs (``enqueue``);
        otherwise a busy thread raises :class:`~langgraph_moa.persistence.registry.
        LeaseHeldError`. ``resume_ended``: the run may have ended before (a resumed pause,
        error or cancel); otherwise an ended run is left alone (returns it). A run still
        active when read and ended since (a cancel) is left alone either way. ``emit``
        receives an ``error`` event (``{"error", "message"}``) when the body fails;
        ``describe_error`` names an exception for it (default: type and message).
        ``on_stop``: the status recorded when the caller cancels the task (Ctrl-C), or a
        function deciding it then; None leaves the run active and free for another
        process (a shutdown hand-back).
        ``reraise``: after recording ``error``, raise the body's exception.
        ``usage_so_far``: the usage to record when the run stops or fails midway.
        ``hand_back``: exceptions of the body that give the run back (``pending``, no
        owner, for another process to continue), re-raised.

        Raises :class:`LeaseLostError` when another process took the thread meanwhile
        (nothing recorded), ``RunOwnedError`` when a live process owns the run, and
        re-raises the caller's cancellation after recording ``on_stop``.
        """
        registry = self.registry
        owner = owner or Owner.new()
        record = await registry.get_run(run) if isinstance(run, str) else run
        if record is None:
            raise RunNotFoundError(f"no run {run!r}")
        if record.status not in ACTIVE and not resume_ended:
            return record
        # a run that was still active when read and has ended since (a cancel request
        # ending it in the queue) is not one to resume: leave it ended
        resume_ended = resume_ended and record.status not in ACTIVE
        newer = await _newer_ended(registry, record)
        if newer is not None:
            return await self._supersede(record, newer)
        token = uuid.uuid4().hex
        epoch = await self._acquire(record, token, owner, wait)
        if epoch is None:  # cancelled while it waited
            return await registry.get_run(record.run_id)
        claimed: RunRecord | None = None
        try:
            fresh = await registry.get_run(record.run_id)
            if fresh is None or (fresh.status not in ACTIVE and not resume_ended):
                return fresh  # cancelled or deleted while it waited
            newer = await _newer_ended(registry, record)
            if newer is not None:
                return await self._supersede(record, newer)
            claimed = await registry.claim_run(
                record.run_id, owner, stale_after=self.stale_after, resume_ended=resume_ended
            )
        except RunOwnedError:
            latest = await registry.get_run(record.run_id)
            if latest is not None and latest.status not in ACTIVE and not resume_ended:
                return latest  # cancelled between the read and the claim
            raise
        finally:
            if claimed is None:  # not run here: the lease goes back at once, not when stale
                await self._release(record.thread_id, token)
        calls = RunCalls(
            CallLedger(registry.engine), claimed.run_id, claimed.thread_id, claimed.attempts
        )
        calls.prefetch()
        execution = Execution(
            claimed, owner, token, epoch, task=asyncio.current_task(), calls=calls
        )
        self.running[record.run_id] = execution
        beat = asyncio.create_task(self._heartbeat(execution), name=f"lease-{record.run_id}")
        try:
            try:

                async def recorded(execution: Execution) -> Outcome | RunEnd:
                    try:
                        return await body(execution)
                    finally:  # the run's calls are in the ledger before its end is
                        await asyncio.shield(calls.flush())

                return await self._run(
                    execution,
                    recorded,
                    emit,
                    describe_error,
                    on_stop,
                    reraise,
                    usage_so_far,
                    hand_back,
                )
            except hand_back:
                await asyncio.shield(self._hand_back(execution, "pending"))
                raise
        finally:

            async def clean_up() -> None:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
                self.running.pop(record.run_id, None)
                await self._release(record.thread_id, token)

            await _to_the_end(clean_up())

    async def _run(
        self,
        execution: Execution,
        body: Callable[[Execution], Awaitable[Outcome | RunEnd]],
        emit: EventSink | None,
        describe_error: Callable[[BaseException], tuple[str, str]] | None,
        on_stop: str | Callable[[], str | None] | None,
        reraise: bool,
        usage_so_far: Callable[[], Awaitable[Mapping[str, Any] | None]] | None,
        hand_back: tuple[type[BaseException], ...] = (),
    ) -> RunRecord | None:
        task = execution.task

        async def usage() -> Mapping[str, Any] | None:
            if usage_so_far is None:
                return None
            try:
                return await usage_so_far()
            except Exception:
                return None

        try:
            end = RunEnd.of(await body(execution))
            execution.task = None  # ended: a late cancel request must not hit the recording
        except asyncio.CancelledError:
            if execution.stop == "lost":
                if task is not None and execution.cancelled:
                    task.uncancel()  # our cancel: the caller gets LeaseLostError instead
                raise LeaseLostError(
                    f"run {execution.run_id}: another process took thread "
                    f"{execution.thread_id} (this one was taken for dead); it stopped"
                ) from None
            if execution.stop == "cancel":
                if task is not None:
                    task.uncancel()
                execution.task = None
                end = RunEnd("cancelled", error="cancelled on request", usage=await usage())
            else:
                if callable(on_stop):
                    on_stop = on_stop()
                if on_stop is None:
                    await _to_the_end(self._hand_back(execution))
                else:
                    status = on_stop

                    async def record_stop() -> None:
                        stop = RunEnd(status, error="stopped before the end", usage=await usage())
                        await self._record(execution, stop)

                    await _to_the_end(record_stop())
                raise
        except OwnershipLostError:
            raise
        except hand_back:
            raise
        except Exception as exc:
            if _fenced(exc):  # the checkpointer refused a write: the lease is gone
                raise LeaseLostError(
                    f"run {execution.run_id}: the checkpointer refused its write, another "
                    f"process holds thread {execution.thread_id} now; it stopped"
                ) from exc
            name, message = (describe_error or _describe)(exc)
            execution.task = None  # first: a cancel arriving now must not cut the record short
            if emit is not None:
                with contextlib.suppress(Exception):
                    await emit("error", {"error": name, "message": message})
            end = RunEnd("error", error=f"{name}: {message}", usage=await usage())
            recorded = await asyncio.shield(self._record(execution, end))
            if reraise:
                raise
            return recorded
        return await asyncio.shield(self._record(execution, end))

    async def _record(self, execution: Execution, end: RunEnd) -> RunRecord | None:
        """Record the end (fenced by the owner); on failure record ``error`` with why."""
        run_id, owner = execution.run_id, execution.owner
        try:
            return await self.registry.update_run(run_id, owner=owner, release=True, **end.values())
        except OwnershipLostError:
            log.warning("run %s: another process owns it now; not recording its end", run_id)
            return None
        except Exception as exc:
            log.exception("run %s: cannot record its end (%s)", run_id, end.status)
            reason = f"cannot record the end of the run ({end.status}): {type(exc).__name__}: "
            reason += _clean(str(exc))
        try:
            return await self.registry.update_run(
                run_id, owner=owner, release=True, status="error", error=reason, usage={}
            )
        except Exception:
            log.exception("run %s: cannot record that its end failed", run_id)
            return None

    async def _hand_back(self, execution: Execution, status: str | None = None) -> None:
        values = {"status": status} if status is not None else {}
        with contextlib.suppress(Exception):
            await self.registry.update_run(
                execution.run_id,
                owner=execution.owner,
                release=True,
                sync_thread=status is not None,
                **values,
            )

    async def _supersede(self, run: RunRecord, newer: RunRecord) -> RunRecord:
        log.warning("run %s: newer run %s already ended; not running it", run.run_id, newer.run_id)
        with contextlib.suppress(OwnershipLostError):
            return await self.registry.update_run(
                run.run_id,
                status="cancelled",
                error=f"superseded: run {newer.run_id} of the thread, created later, already ended",
                release=True,
                sync_thread=False,
            )
        return run

    async def _acquire(self, run: RunRecord, token: str, owner: Owner, wait: bool) -> int | None:
        """The thread's lease for ``token``: its epoch, or None when cancelled meanwhile."""
        woken = self._waiting.setdefault(run.run_id, asyncio.Event())
        try:
            while True:
                ahead = await _older_active(self.registry, run) if wait else []
                if not ahead:
                    try:
                        return await self.registry.acquire_lease(
                            run.thread_id,
                            token,
                            owner=owner,
                            run_id=run.run_id,
                            stale_after=self.stale_after,
                        )
                    except LeaseHeldError:
                        if not wait:
                            raise
                if woken.is_set() or await self.registry.cancel_requested([run.run_id]):
                    await self.registry.update_run(
                        run.run_id,
                        status="cancelled",
                        error="cancelled before it started",
                        release=True,
                        sync_thread=False,
                    )
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), self.lease_poll)
        finally:
            self._waiting.pop(run.run_id, None)

    async def _release(self, thread_id: str, token: str) -> None:
        try:
            await self.registry.release_lease(thread_id, token)
        except Exception:  # it expires by itself
            log.warning("cannot release the lease of thread %s", thread_id, exc_info=True)

    async def _heartbeat(self, execution: Execution) -> None:
        """Renew the lease and the run's heartbeat; stop the body when the lease is lost
        or a cancel is requested."""
        registry, run_id = self.registry, execution.run_id
        since_beat = 0.0
        # a notification that came between the claim and the run's entry in `running`
        # found nothing to stop: look once now rather than at the first poll
        look_now = self.cancel_listening.is_set()
        while True:
            if look_now:
                look_now = False
            else:
                await asyncio.sleep(self.cancel_poll)
                since_beat += self.cancel_poll
            try:
                if await registry.cancel_requested([run_id]):
                    execution.interrupt("cancel")
                    return
                if since_beat + 1e-9 < self.heartbeat_interval:
                    continue
                since_beat = 0.0
                held = await registry.renew_lease(execution.thread_id, execution.token)
                owned = held and await registry.heartbeat(run_id, execution.owner)
            except Exception as exc:  # a blip of the database must not kill the run
                log.warning("heartbeat of run %s failed: %s", run_id, exc)
                continue
            if not owned:
                execution.interrupt("lost")
                return


async def _to_the_end(step: Awaitable[Any]) -> None:
    """Await ``step`` to its end even when this task is cancelled again meanwhile (a second
    Ctrl-C, a shutdown): cleanup that records a run's end or gives back its lease must not be
    cut short; the cancellation is raised once the step is done."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
        except Exception:  # the step failed (it is done): raised below, or logged
            pass
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            log.warning("cleanup after a cancellation failed", exc_info=task.exception())
        raise asyncio.CancelledError
    task.result()


def _fenced(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) is the checkpointer's lease refusal."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, CheckpointConflictError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _describe(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def _clean(text: str, limit: int = 500) -> str:
    text = text.replace("\x00", "\\x00").splitlines()[0] if text else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
