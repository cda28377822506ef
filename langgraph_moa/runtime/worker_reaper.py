"""Worker liveness: the :class:`Reaper` that re-queues the runs of dead workers, and the
heartbeat thread that keeps a worker's procrastinate row fresh."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import procrastinate
import psycopg
from procrastinate import exceptions as pc_exceptions
from procrastinate.jobs import Status

from langgraph_moa.persistence.events import EventLog
from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.runtime.worker_setup import TASK_NAME, _conninfo

if TYPE_CHECKING:
    from langgraph_moa.runtime.workers import WorkerSettings

log = logging.getLogger("langgraph_moa.runtime.workers")

_REAPER_LOCK = 0x6D6F_6172  # advisory lock key ("moar")


class Reaper:
    """Re-queues the runs of dead workers with procrastinate's stalled-job API."""

    def __init__(
        self,
        app: procrastinate.App,
        events: EventLog,
        registry: RunRegistry,
        settings: WorkerSettings,
    ) -> None:
        self.app, self.events, self.registry, self.settings = app, events, registry, settings

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            try:
                await self.reap_once()
            except Exception:  # a database hiccup must not stop the worker
                log.exception("reaper pass failed; retrying in %ss", self.settings.reap_interval)

    async def reap_once(self) -> list[int]:
        """One pass: the ids of the jobs put back in the queue (or failed for good)."""
        async with await psycopg.AsyncConnection.connect(
            _conninfo(self.events), autocommit=True
        ) as conn:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_REAPER_LOCK,))
            row = await cur.fetchone()
            if not row or not row[0]:
                return []  # another worker's reaper is at it
            try:
                return await self._reap(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_REAPER_LOCK,))

    async def _reap(self, conn: psycopg.AsyncConnection[Any]) -> list[int]:
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(
            task_name=TASK_NAME, seconds_since_heartbeat=self.settings.stalled_after
        )
        done: list[int] = []
        for job in stalled:
            assert job.id is not None
            run_id = str(job.task_kwargs.get("run_id"))
            try:
                claims = await self._claims(run_id, job)
                if claims >= self.settings.max_attempts:
                    await manager.finish_job_by_id_async(job.id, Status.FAILED, delete_job=False)
                    message = (
                        f"the run was started {claims} times and its worker died; "
                        "giving up (see the worker logs)"
                    )
                    await self.registry.update_run(
                        run_id, status="error", error=message, release=True
                    )
                    await self.events.append(
                        run_id, "error", {"error": "WorkerLost", "message": message}
                    )
                    await self.events.append(run_id, "end", None)
                    log.error("run %s (job %s): %s", run_id, job.id, message)
                else:
                    await manager.retry_job(job)
                    await self.registry.update_run(run_id, status="pending", release=True)
                    await self._wake_workers(conn, job.queue, job.id)
                    log.warning(
                        "run %s (job %s) lost worker %s; re-queued", run_id, job.id, job.worker_id
                    )
            except pc_exceptions.ConnectorException as exc:  # it finished meanwhile
                log.info("job %s changed while being re-queued: %s", job.id, exc)
                continue
            done.append(job.id)
        return done

    async def _claims(self, run_id: str, job: procrastinate.jobs.Job) -> int:
        """How many times a worker started the run: the registry's claims, not the job's
        procrastinate attempts, which also count the short waits of a busy thread
        (:class:`RunBusy`) and hand-backs before the run started. A run no worker started
        is re-queued whatever its job's count: workers that die before they claim it are
        not the run's fault."""
        run = await self.registry.get_run(run_id)
        return run.attempts if run is not None else job.attempts + 1

    @staticmethod
    async def _wake_workers(conn: psycopg.AsyncConnection[Any], queue: str, job_id: int) -> None:
        """Tell idle workers a job is ready, as procrastinate's insert trigger does (a retried
        job would otherwise wait for their next poll)."""
        payload = json.dumps({"type": "job_inserted", "job_id": job_id})
        for channel in (f"procrastinate_queue_v1#{queue}", "procrastinate_any_queue_v1"):
            await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class _Heartbeat(threading.Thread):
    """The worker's procrastinate heartbeat, also sent from a thread of its own.

    procrastinate beats from the event loop; a loop held up by a slow synchronous step
    (creating model clients loads TLS certificates, for one) would make a live worker look
    dead and its runs be executed twice. This thread keeps telling the database the
    process is alive, through procrastinate's own ``procrastinate_update_heartbeat_v1``.
    """

    def __init__(self, conninfo: str, interval: float, worker_id: Callable[[], int | None]):
        super().__init__(name="moa-worker-heartbeat", daemon=True)
        self.conninfo, self.interval, self.worker_id = conninfo, interval, worker_id
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                    while not self.stopped.wait(self.interval):
                        worker_id = self.worker_id()
                        if worker_id is not None:
                            conn.execute(
                                "SELECT procrastinate_update_heartbeat_v1(%s)", (worker_id,)
                            )
            except psycopg.Error as exc:
                log.warning("heartbeat thread: %s; reconnecting", exc)
                self.stopped.wait(self.interval)
