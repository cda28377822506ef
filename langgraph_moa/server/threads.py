"""Threads and their state: create, search, patch, delete; read, update and page through
checkpoints (the ``/threads`` paths)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import InvalidUpdateError

from langgraph_moa.persistence.events import thread_event_key
from langgraph_moa.persistence.registry import ThreadExistsError, ThreadRecord
from langgraph_moa.runtime.api import MoA
from langgraph_moa.server import serde
from langgraph_moa.server.core import ACTIVE, ApiError, ServerCore, iso, not_found
from langgraph_moa.server.events import END, StreamEvent
from langgraph_moa.server.schemas import HistoryRequest, StateUpdate, ThreadCreate, ThreadSearch
from langgraph_moa.server.validation import check_metadata, require_checkpoint

__all__ = ["THREAD_POLL", "ThreadService"]

log = logging.getLogger("langgraph_moa.server")

THREAD_POLL = 1.0
"""Longest wait, in seconds, before a thread stream looks for new events (on PostgreSQL a
notification, and in this process an append, wakes it at once)."""


class ThreadService(ServerCore):
    """Threads of a tenant and their checkpointed state."""

    async def thread_json(
        self, record: ThreadRecord, select: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """A thread as the API shapes it, with its current values and interrupts."""
        out: dict[str, Any] = {
            "thread_id": record.thread_id,
            "created_at": iso(record.created_at),
            "updated_at": iso(record.updated_at),
            "state_updated_at": iso(record.updated_at),
            "metadata": record.metadata,
            "status": record.status,
            "config": {},
        }
        if select is None or {"values", "interrupts", "error", "config"} & set(select):
            snapshot = await self._graph_of(record).aget_state(MoA.config(record.thread_id))
            if serde.checkpoint_of(snapshot.config) is None:  # no run yet
                out["values"] = None
            else:
                interrupts: dict[str, list[Any]] = {}
                for task in snapshot.tasks:
                    if task.interrupts:
                        interrupts[task.id] = [serde.interrupt_json(i) for i in task.interrupts]
                out["values"] = serde.jsonable(snapshot.values or {})
                out["interrupts"] = serde.jsonable(interrupts)
                out["error"] = await self._thread_error(record)
                assistant = self.assistants.get(record.spec_name or "")
                out["config"] = {
                    "configurable": {
                        "thread_id": record.thread_id,
                        **(
                            {"graph_id": assistant.graph_id, "assistant_id": assistant.assistant_id}
                            if assistant is not None
                            else {}
                        ),
                    }
                }
        if select is not None:
            out = {k: v for k, v in out.items() if k in select}
        return out

    async def _thread_error(self, record: ThreadRecord) -> Any:
        if record.status != "error":
            return None
        run = await self.registry.latest_run(record.thread_id)
        if run is None or not run.error:
            return None
        name, _, message = run.error.partition(": ")
        return {"error": name, "message": message}

    async def create_thread(self, tenant: str | None, body: ThreadCreate) -> ThreadRecord:
        """Create a thread. The insert decides who owns an id (the database's unique key):
        whoever loses that race, or asks for an id another tenant owns, gets a 404 (a
        tenant never learns that someone else's id exists)."""
        thread_id = body.thread_id or str(uuid.uuid4())
        try:
            return await self.registry.create_thread(
                thread_id, metadata=body.metadata or {}, owner=tenant
            )
        except ThreadExistsError:
            existing = await self.registry.get_thread(thread_id)
        if existing is None or (tenant is not None and existing.owner != tenant):
            raise not_found(thread_id)
        if body.if_exists == "do_nothing":
            return existing
        raise ApiError(409, f"Thread with ID {thread_id} already exists")

    async def search_threads(self, tenant: str | None, body: ThreadSearch) -> list[dict[str, Any]]:
        records = await self.registry.search_threads(
            metadata=body.metadata,
            status=body.status,
            owner=tenant,
            thread_ids=body.ids,
            limit=body.limit,
            offset=body.offset,
            sort_by=body.sort_by or "created_at",
            sort_order=body.sort_order or "desc",
        )
        return [await self.thread_json(r, body.select) for r in records]

    async def patch_thread(
        self, tenant: str | None, thread_id: str, metadata: Mapping[str, Any] | None
    ) -> ThreadRecord:
        await self.thread(tenant, thread_id)
        return await self.registry.update_thread(
            thread_id,
            metadata=metadata or {},
            check_metadata=lambda merged: check_metadata(merged, "the thread's metadata"),
        )

    async def delete_thread(self, tenant: str | None, thread_id: str) -> None:
        record = await self.thread(tenant, thread_id)
        for cron in await self.cron_store.search(tenant, thread_id=thread_id, limit=10_000):
            await self.cron_store.delete(tenant, cron.cron_id)  # its crons go with it
        runs = await self.registry.list_runs(thread_id=thread_id, limit=10_000)
        for run in runs:
            if run.status in ACTIVE:
                await self._cancel(run, "interrupt")
                await self.executor.wait(run.run_id)
        await self.registry.delete_thread(thread_id)
        await self.streams.delete([r.run_id for r in runs])
        checkpointer = self._graph_of(record).checkpointer
        if isinstance(checkpointer, BaseCheckpointSaver):
            await checkpointer.adelete_thread(thread_id)

    async def copy_thread(self, tenant: str | None, thread_id: str) -> ThreadRecord:
        """A new thread (a new UUID, same owner and metadata) with a copy of every
        checkpoint of ``thread_id`` (one transaction); its runs are not copied."""
        record = await self.thread(tenant, thread_id)
        checkpointer = self._graph_of(record).checkpointer
        if not isinstance(checkpointer, BaseCheckpointSaver):  # pragma: no cover - ours is
            raise ApiError(422, "this server's checkpointer cannot copy threads")
        copy_id = str(uuid.uuid4())
        copy = await self.registry.create_thread(
            copy_id, metadata=record.metadata, owner=record.owner, spec_name=record.spec_name
        )
        try:
            await checkpointer.acopy_thread(thread_id, copy_id)
            snapshot = await self._graph_of(copy).aget_state(MoA.config(copy_id))
        except BaseException:
            await self.registry.delete_thread(copy_id)
            await checkpointer.adelete_thread(copy_id)
            raise
        if snapshot.next:
            copy = await self.registry.update_thread(copy_id, status="interrupted")
        return copy

    async def follow_thread(
        self,
        tenant: str | None,
        thread_id: str,
        last_event_id: int | None,
        modes: Collection[str] = ("run_modes",),
    ) -> AsyncIterator[StreamEvent]:
        """The stream events of every run of the tenant's thread, from now on (after
        ``last_event_id`` when given: a reconnecting client gets exactly what it missed,
        across runs), until the thread is deleted (a thread created again under the
        same id is another thread: the stream ends all the same) or the client goes. The
        end of a run is ``metadata`` ``{"status": "run_done", "run_id": ...}``. Event ids
        are the event log's, so only logged runs are seen (every run, unless
        ``persist_streams`` is off).

        ``modes`` (the reference's thread stream modes, any of them): ``run_modes`` every
        event of the runs; ``lifecycle`` only their ``metadata`` events (a run's start and
        end); ``state_update`` a ``state_update`` event ``{"state", "thread_id"}`` for each
        ``POST .../state``, with the state it wrote (:meth:`update_state`).
        """
        record = await self.thread(tenant, thread_id)
        return self._thread_events_after(record, last_event_id, frozenset(modes))

    async def _thread_events_after(
        self, record: ThreadRecord, last_event_id: int | None, modes: frozenset[str]
    ) -> AsyncIterator[StreamEvent]:
        thread_id = record.thread_id
        after = last_event_id
        if after is None:
            after = await self.registry.last_thread_event(thread_id, record.created_at)
        log = self.streams.event_log
        while True:
            rows = await self.registry.thread_events(thread_id, record.created_at, after)
            # looked at after the rows are read: if the thread was created again before,
            # they may be the new thread's, and are not sent
            now = await self.thread_now(record)
            if now == "other":
                return
            for row in rows:
                after = row.id
                if not _thread_wanted(row.event, modes):
                    continue
                if row.event == END.event:
                    done = {"status": "run_done", "run_id": row.run_id}
                    yield StreamEvent("metadata", serde.dumps(done), row.id)
                else:
                    yield StreamEvent(row.event, row.raw, row.id)
            if now == "deleted":
                return  # (or a stateless run's thread, dropped at its end)
            if not rows:
                await log.wait_any(THREAD_POLL)

    async def get_state(
        self,
        tenant: str | None,
        thread_id: str,
        checkpoint: Mapping[str, Any] | None = None,
        *,
        subgraphs: bool = False,
    ) -> dict[str, Any]:
        record = await self.thread(tenant, thread_id)
        config = self._checkpoint_config(thread_id, checkpoint)
        graph = self._graph_of(record)
        checkpoint_id = config["configurable"].get("checkpoint_id")
        await require_checkpoint(self.checkpointer, thread_id, checkpoint_id)
        snapshot = await graph.aget_state(config, subgraphs=subgraphs)
        return serde.snapshot_json(snapshot)

    @staticmethod
    def _checkpoint_config(thread_id: str, checkpoint: Mapping[str, Any] | None) -> RunnableConfig:
        configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
        if checkpoint and checkpoint.get("checkpoint_id"):
            configurable["checkpoint_id"] = checkpoint["checkpoint_id"]
        return {"configurable": configurable}

    async def update_state(
        self, tenant: str | None, thread_id: str, body: StateUpdate
    ) -> dict[str, Any]:
        record = await self.thread(tenant, thread_id)
        async with self._locked(thread_id):
            if await self.registry.list_runs(thread_id=thread_id, status=list(ACTIVE), limit=1):
                raise ApiError(409, "Thread is busy with a run; update its state once it ends")
            checkpoint = body.checkpoint.model_dump() if body.checkpoint else {}
            if body.checkpoint_id:
                checkpoint["checkpoint_id"] = body.checkpoint_id
            await require_checkpoint(self.checkpointer, thread_id, checkpoint.get("checkpoint_id"))
            graph = self._graph_of(record)
            if body.as_node is not None and body.as_node not in graph.nodes:
                raise ApiError(
                    422,
                    f"as_node: unknown node {body.as_node!r}; nodes: "
                    f"{', '.join(n for n in graph.nodes if n != '__start__')}",
                )
            try:
                config = await graph.aupdate_state(
                    self._checkpoint_config(thread_id, checkpoint),
                    body.values,
                    as_node=body.as_node,
                )
            except (InvalidUpdateError, ValueError) as exc:
                raise ApiError(422, f"cannot update the state: {exc}") from None
            snapshot = await graph.aget_state(MoA.config(thread_id))
            await self.registry.update_thread(
                thread_id, status="interrupted" if snapshot.next else "idle"
            )
            # the thread's followers that asked for state_update hear of it, as from the
            # reference: {"state": the new ThreadState, "thread_id"} (logged: replayed too).
            # In the lock, so the events are in the order of the checkpoints; under the key
            # of this thread (its created_at), so a thread created again under the id never
            # reads it; the state is written: a failed append is logged, not raised.
            try:
                if await self.thread_now(record) == "same":
                    await self.streams.event_log.append(
                        thread_event_key(thread_id, record.created_at),
                        "state_update",
                        {"state": serde.snapshot_json(snapshot), "thread_id": thread_id},
                    )
            except Exception:
                log.exception("thread %s: the state_update event was not logged", thread_id)
        written = serde.checkpoint_of(config)
        return {
            "checkpoint": written,
            "checkpoint_id": (written or {}).get("checkpoint_id"),
            "configurable": written,
        }

    async def history(
        self, tenant: str | None, thread_id: str, body: HistoryRequest
    ) -> list[dict[str, Any]]:
        record = await self.thread(tenant, thread_id)
        before_id = body.before_id
        before_config = None
        if before_id is not None:
            await require_checkpoint(self.checkpointer, thread_id, before_id)
            before_config = self._checkpoint_config(thread_id, {"checkpoint_id": before_id})
        checkpoint = body.checkpoint.model_dump() if body.checkpoint else None
        await require_checkpoint(
            self.checkpointer, thread_id, (checkpoint or {}).get("checkpoint_id")
        )
        states = []
        async for snapshot in self._graph_of(record).aget_state_history(
            self._checkpoint_config(thread_id, checkpoint),
            filter=body.metadata or None,
            before=before_config,
            limit=body.limit,
        ):
            states.append(serde.select_state(serde.snapshot_json(snapshot), body.select))
        return states


def _thread_wanted(event: str, modes: frozenset[str]) -> bool:
    """Whether a thread stream with ``modes`` sends a logged ``event`` (a run's end is
    logged as ``end`` and sent as ``metadata``)."""
    if event == "state_update":
        return "state_update" in modes
    if "run_modes" in modes:
        return True
    return "lifecycle" in modes and event in ("metadata", END.event)
