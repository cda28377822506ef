"""Crons (the ``/runs/crons`` paths) and the scheduler that fires them.

A cron is stored in ``moa_crons`` (:mod:`langgraph_moa.persistence.crons`). Every server
process runs :meth:`CronService.schedule_crons` (unless ``ServerOptions.crons`` is off):
it sleeps until the earliest next tick (at most ``cron_poll`` seconds), claims each due
tick in the database (one process wins a tick, whatever the number of replicas) and
creates the tick's run like ``POST /threads/{id}/runs`` (a thread cron) or ``POST /runs``
(a new thread per tick, deleted after the run unless ``on_run_completed: keep``). With
``moa serve --workers`` the run is queued to the workers like any other run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from langgraph_moa.persistence.crons import CronRecord, InvalidScheduleError, next_tick
from langgraph_moa.server.assistants import AssistantService
from langgraph_moa.server.core import ApiError, iso
from langgraph_moa.server.resource_schemas import (
    CronCount,
    CronCreate,
    CronPatch,
    CronSearch,
    ThreadCronCreate,
)
from langgraph_moa.server.runs import RunService
from langgraph_moa.server.schemas import RunCreate, StatelessRunCreate
from langgraph_moa.spec import GraphSpec

__all__ = ["CronService"]

log = logging.getLogger("langgraph_moa.server")

_RUN_FIELDS = (
    "input",
    "config",
    "interrupt_before",
    "interrupt_after",
    "stream_mode",
    "stream_subgraphs",
    "stream_resumable",
    "durability",
    "checkpoint_during",
    "multitask_strategy",
)
"""The fields of a cron's payload that go into each of its runs."""


def _utc(value: datetime | None) -> datetime | None:
    """A naive UTC datetime (the database's) from an aware or naive one."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


class CronService(AssistantService, RunService):
    """Crons of a tenant, and the scheduler of every tenant's crons."""

    _cron_wake: asyncio.Event | None = None

    async def cron(self, tenant: str | None, cron_id: str) -> CronRecord:
        found = await self.cron_store.get(tenant, cron_id)
        if found is None:
            raise ApiError(404, f"Cron '{cron_id}' not found")
        return found

    async def create_cron(
        self, tenant: str | None, thread_id: str | None, body: CronCreate | ThreadCronCreate
    ) -> dict[str, Any]:
        """Record a cron of the tenant's assistant (on the tenant's thread, if given)."""
        served, stored = await self.resolve_assistant(tenant, body.assistant_id)
        assistant_id = stored.assistant_id if stored is not None else served.assistant_id
        if thread_id is not None:
            await self.thread(tenant, thread_id)
        payload = body.model_dump(
            mode="json", exclude_none=True, include={*_RUN_FIELDS, "metadata"}
        )
        payload["assistant_id"] = assistant_id
        cron_id = str(uuid.uuid4())
        config = payload.setdefault("config", {})
        config.setdefault("configurable", {})["cron_id"] = cron_id
        try:
            record = await self.cron_store.create(
                tenant,
                cron_id=cron_id,
                assistant_id=assistant_id,
                thread_id=thread_id,
                schedule=body.schedule,
                timezone=body.timezone,
                end_time=_utc(body.end_time),
                enabled=True if body.enabled is None else body.enabled,
                on_run_completed=(body.on_run_completed if isinstance(body, CronCreate) else None),
                payload=payload,
                metadata=body.metadata,
                spec=served.spec.model_dump(mode="json"),
            )
        except InvalidScheduleError as exc:
            raise ApiError(422, str(exc)) from None
        if self._cron_wake is not None:
            self._cron_wake.set()
        return record.to_json()

    async def update_cron(
        self, tenant: str | None, cron_id: str, body: CronPatch
    ) -> dict[str, Any]:
        """Change a cron as ``PATCH /runs/crons/{cron_id}`` says (the payload's fields are
        replaced one by one, its metadata merged)."""
        given = body.model_fields_set
        if not given:
            raise ApiError(422, "Request body cannot be empty: give a field to change")
        cron = await self.cron(tenant, cron_id)
        values: dict[str, Any] = {}
        for name in ("schedule", "timezone", "enabled", "on_run_completed"):
            if getattr(body, name) is not None:
                values[name] = getattr(body, name)
        if "end_time" in given:
            values["end_time"] = _utc(body.end_time)
        run_fields = body.model_dump(mode="json", exclude_none=True, include=set(_RUN_FIELDS))
        if run_fields or body.metadata is not None:
            payload = {**cron.payload, **run_fields}
            config = payload.setdefault("config", {})
            config.setdefault("configurable", {})["cron_id"] = cron_id
            if body.metadata is not None:
                payload["metadata"] = {**(cron.payload.get("metadata") or {}), **body.metadata}
                values["metadata"] = {**cron.metadata, **body.metadata}
            values["payload"] = payload
        try:
            if "schedule" in values or "timezone" in values:
                next_tick(
                    values.get("schedule", cron.schedule),
                    datetime.now(UTC).replace(tzinfo=None),
                    values.get("timezone", cron.timezone),
                )
            record = await self.cron_store.update(tenant, cron_id, values)
        except InvalidScheduleError as exc:
            raise ApiError(422, str(exc)) from None
        if record is None:
            raise ApiError(404, f"Cron '{cron_id}' not found")
        if self._cron_wake is not None:
            self._cron_wake.set()
        return record.to_json()

    async def delete_cron(self, tenant: str | None, cron_id: str) -> None:
        """Delete a cron; once this returns, no run of it starts."""
        if not await self.cron_store.delete(tenant, cron_id):
            raise ApiError(404, f"Cron '{cron_id}' not found")

    async def search_crons(self, tenant: str | None, body: CronSearch) -> list[dict[str, Any]]:
        found = await self.cron_store.search(
            tenant,
            assistant_id=body.assistant_id,
            thread_id=body.thread_id,
            enabled=body.enabled,
            metadata=body.metadata,
            limit=body.limit,
            offset=body.offset,
            sort_by=body.sort_by or "created_at",
            sort_order=body.sort_order or "desc",
        )
        out = [c.to_json() for c in found]
        if body.select:
            out = [{k: v for k, v in c.items() if k in body.select} for c in out]
        return out

    async def count_crons(self, tenant: str | None, body: CronCount) -> int:
        return await self.cron_store.count(
            tenant, assistant_id=body.assistant_id, thread_id=body.thread_id, metadata=body.metadata
        )

    # --------------------------------------------------------------- scheduler ---

    async def schedule_crons(self) -> None:
        """Fire due crons until cancelled (see the module docstring)."""
        self._cron_wake = asyncio.Event()
        while True:
            self._cron_wake.clear()
            delay = self.options.cron_poll
            try:
                await self.fire_due_crons()
                upcoming = await self.cron_store.next_due()
                if upcoming is not None:
                    now = datetime.now(UTC).replace(tzinfo=None)
                    delay = min(delay, max(0.0, (upcoming - now).total_seconds()))
            except Exception:  # the database may be back at the next round
                log.warning("the cron scheduler failed a round", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cron_wake.wait(), timeout=max(delay, 0.01))

    async def fire_due_crons(self, now: datetime | None = None) -> int:
        """Claim and fire every due tick this process wins, as of ``now`` (naive UTC;
        default this process's clock); how many it fired."""
        fired = 0
        now = now or datetime.now(UTC).replace(tzinfo=None)
        for cron in await self.cron_store.due(now):
            run_id = str(uuid.uuid4())
            if not await self.cron_store.claim(cron, run_id, now):
                continue  # another process fired this tick
            state = "skipped"
            try:
                await self._fire(cron, run_id)
                state = "done"
                fired += 1
            except ApiError as exc:
                log.warning(
                    "cron %s: tick %s not run: %s",
                    cron.cron_id,
                    iso(cron.next_run_date),
                    exc.detail,
                )
            except Exception:
                log.exception("cron %s: tick %s not run", cron.cron_id, iso(cron.next_run_date))
            finally:
                await self.cron_store.fired(cron.cron_id, cron.next_run_date, state)
        return fired

    async def _serve_recorded_spec(self, cron: CronRecord) -> None:
        """In a worker (no spec files), serve the graph recorded with the cron."""
        if self.role != "worker" or cron.spec is None:
            return
        spec = GraphSpec.model_validate(cron.spec)
        served = self.assistants.get(spec.name)
        if served is not None and served.spec.spec_hash() == spec.spec_hash():
            return
        self.assistants[spec.name] = await self.graph_of_spec(spec)  # compiled once per spec

    async def _fire(self, cron: CronRecord, run_id: str) -> None:
        """Create the run of one claimed tick (unless the cron was deleted meanwhile)."""
        tenant = cron.tenant or None
        if await self.cron_store.get(tenant, cron.cron_id) is None:
            raise ApiError(404, "the cron was deleted before its tick ran")
        await self._serve_recorded_spec(cron)
        payload = dict(cron.payload)
        run: dict[str, Any] = {k: payload[k] for k in _RUN_FIELDS if k in payload}
        run["assistant_id"] = cron.assistant_id
        run["metadata"] = {
            **cron.metadata,
            **(payload.get("metadata") or {}),
            "cron_id": cron.cron_id,
            "cron_tick": iso(cron.next_run_date),
        }
        if cron.thread_id is not None:
            body: RunCreate | StatelessRunCreate = RunCreate.model_validate(run)
        else:
            run.pop("multitask_strategy", None)
            run["on_completion"] = cron.on_run_completed or "delete"
            body = StatelessRunCreate.model_validate(run)
        await self.create_run(tenant, cron.thread_id, body, subscribe=False, run_id=run_id)
