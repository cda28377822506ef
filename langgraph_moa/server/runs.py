"""Runs as records: create (validate, record, submit to the executor), read, list,
cancel, wait for the end and shape the result (the ``/runs`` paths)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

from langgraph_moa.persistence.assistants import AssistantRecord
from langgraph_moa.persistence.registry import RunRecord
from langgraph_moa.runtime.api import MoA
from langgraph_moa.runtime.executor import RunRejectedError, admit_run
from langgraph_moa.server import serde
from langgraph_moa.server.assistants import merge_config
from langgraph_moa.server.core import (
    ACTIVE,
    ApiError,
    Assistant,
    LiveRun,
    ServerCore,
    iso,
    not_found,
)
from langgraph_moa.server.events import StreamEvent
from langgraph_moa.server.schemas import RunCreate, StatelessRunCreate
from langgraph_moa.server.validation import check_metadata, check_uuid, require_checkpoint

__all__ = ["PREGEL_PASSED", "RESERVED_CONFIGURABLE", "RunService", "client_configurable"]

RESERVED_CONFIGURABLE = ("thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map")
PREGEL_PASSED: dict[str, type] = {"__pregel_resuming": bool, "__pregel_resume_map": dict}
"""LangGraph's own configurable keys a ``RemoteGraph`` node sends when its parent resumes
(``Command(resume={interrupt_id: value})``), passed on to the graph with their type checked.
Other ``__pregel_*`` keys it sends (e.g. ``__pregel_durability``) are dropped: the server
decides them."""


def client_configurable(configurable: dict[str, Any]) -> dict[str, Any]:
    """``config.configurable`` of a run request as the graph gets it: 422 for a key only the
    server may set (the thread, the checkpoint, other ``__`` keys) or a passed LangGraph key
    of the wrong type; other ``__pregel_*`` keys left out."""
    bad = [
        k
        for k in configurable
        if k in RESERVED_CONFIGURABLE or (k.startswith("__") and not k.startswith("__pregel_"))
    ]
    if bad:
        raise ApiError(
            422,
            f"config.configurable: {bad} cannot be set by a client; the thread comes "
            "from the URL and the checkpoint from `checkpoint`/`checkpoint_id`",
        )
    out = {}
    for key, value in configurable.items():
        kind = PREGEL_PASSED.get(key)
        if key.startswith("__pregel_") and kind is None:
            continue
        if kind is not None and not isinstance(value, kind):
            raise ApiError(
                422, f"config.configurable.{key}: must be a {kind.__name__}, got {value!r:.80}"
            )
        out[key] = value
    return out


class RunService(ServerCore):
    """Runs of a tenant's threads, as the API sees them."""

    def run_json(self, run: RunRecord) -> dict[str, Any]:
        """A run as the API shapes it (``cancelled`` shows as ``interrupted``)."""
        options = run.options
        status = "interrupted" if run.status == "cancelled" else run.status
        return {
            "run_id": run.run_id,
            "thread_id": run.thread_id,
            "assistant_id": options.get("assistant_id"),
            "created_at": iso(run.created_at),
            "updated_at": iso(run.updated_at),
            "status": status,
            "metadata": run.metadata,
            "multitask_strategy": options.get("multitask_strategy", "enqueue"),
            "kwargs": {
                "input": run.input if options.get("command") is None else None,
                "command": options.get("command"),
                "config": options.get("config") or {},
                "context": {},
                "stream_mode": options.get("stream_mode", ["values"]),
                "interrupt_before": options.get("interrupt_before"),
                "interrupt_after": options.get("interrupt_after"),
                "webhook": None,
                "feedback_keys": None,
                "temporary": bool(options.get("temporary")),
                "subgraphs": bool(options.get("stream_subgraphs")),
                "resumable": bool(options.get("stream_resumable")),
                "durability": options.get("durability", "async"),
                "checkpoint_during": options.get("durability", "async") != "exit",
            },
        }

    async def run(self, tenant: str | None, thread_id: str, run_id: str) -> RunRecord:
        """The tenant's run of a thread (404 otherwise)."""
        await self.thread(tenant, thread_id)
        run = await self.registry.get_run(run_id)
        if run is None or run.thread_id != thread_id:
            raise ApiError(404, f"Run with ID {run_id} not found")
        return run

    async def list_runs(
        self,
        tenant: str | None,
        thread_id: str,
        *,
        limit: int,
        offset: int,
        status: str | None,
    ) -> list[RunRecord]:
        await self.thread(tenant, thread_id)
        statuses: list[Any] | None = None
        if status is not None:
            statuses = ["interrupted", "cancelled"] if status == "interrupted" else [status]
        return await self.registry.list_runs(
            thread_id=thread_id, status=statuses, limit=limit, offset=offset
        )

    async def check_run(
        self, tenant: str | None, body: RunCreate | StatelessRunCreate
    ) -> tuple[Assistant, AssistantRecord | None, dict[str, Any]]:
        """The served assistant, the tenant's stored one (if ``assistant_id`` names one) and
        the config of a run request (a stored assistant's config merged under it), or a 422
        for what the graph does not have (nodes to interrupt at) or a client may not set."""
        assistant, stored = await self.resolve_assistant(tenant, body.assistant_id, for_run=True)
        graph = assistant.graph
        for field_name in ("interrupt_before", "interrupt_after"):
            nodes = getattr(body, field_name)
            if isinstance(nodes, list):
                unknown = [n for n in nodes if n not in graph.nodes]
                if unknown:
                    raise ApiError(
                        422,
                        f"{field_name}: unknown node(s) {unknown}; the graph's nodes are "
                        f"{', '.join(n for n in graph.nodes if n != '__start__')}",
                    )
        config = body.config.model_dump(exclude_none=True) if body.config else {}
        if stored is not None:
            config = merge_config(stored.config, config)
        if config.get("configurable"):
            config["configurable"] = client_configurable(config["configurable"])
        return assistant, stored, config

    async def create_run(
        self,
        tenant: str | None,
        thread_id: str | None,
        body: RunCreate | StatelessRunCreate,
        *,
        stream_modes: list[str] | None = None,
        subscribe: bool = True,
        protocol: bool = False,
        run_id: str | None = None,
    ) -> tuple[RunRecord, AsyncIterator[StreamEvent] | None]:
        """Validate, record and submit a run; returns it with a subscription to its events
        (taken before the run starts, so nothing is missed) when ``subscribe``. A
        ``protocol`` run is one the thread's ``/stream/events`` streams (see
        ``protocol.py``). A stored assistant's config is merged under the run's."""
        assistant, stored, config = await self.check_run(tenant, body)
        modes = stream_modes or body.stream_modes
        stateless = isinstance(body, StatelessRunCreate)
        options: dict[str, Any] = {
            "server": True,
            "assistant_id": stored.assistant_id if stored is not None else assistant.assistant_id,
            "graph_id": assistant.graph_id,
            "multitask_strategy": getattr(body, "multitask_strategy", "enqueue"),
            "stream_mode": modes,
            "stream_subgraphs": body.stream_subgraphs,
            "stream_resumable": body.stream_resumable,
            "durability": body.effective_durability,
            "interrupt_before": body.interrupt_before,
            "interrupt_after": body.interrupt_after,
            "config": config,
            "command": body.command.model_dump(exclude_none=True) if body.command else None,
            "strict_resume": getattr(body, "strict_resume", False),
            "temporary": stateless and cast(StatelessRunCreate, body).on_completion == "delete",
            "tenant": tenant,
        }
        if protocol:
            options["protocol"] = True
        checkpoint_id = None
        if isinstance(body, RunCreate):
            checkpoint_id = body.checkpoint_id or (
                body.checkpoint.checkpoint_id if body.checkpoint else None
            )
        run_id = run_id or str(uuid.uuid4())
        if thread_id is None:
            thread_id = str(uuid.uuid4())
            await self.registry.create_thread(thread_id, owner=tenant, spec_name=assistant.graph_id)
        async with self._locked(thread_id):
            existing = await self.registry.get_thread(thread_id)
            if existing is None:
                if body.if_not_exists != "create":
                    raise not_found(thread_id)
                check_uuid(thread_id, "thread_id")  # a new thread's id, as for POST /threads
                # a new thread has no checkpoints: refuse before creating anything
                await require_checkpoint(self.checkpointer, thread_id, checkpoint_id)
                # the insert decides who owns the id; whoever lost the race reads the winner
                existing = await self.registry.create_thread(
                    thread_id, owner=tenant, spec_name=assistant.graph_id, if_exists="do_nothing"
                )
            if tenant is not None and existing.owner != tenant:
                raise not_found(thread_id)
            await require_checkpoint(self.checkpointer, thread_id, checkpoint_id)
            ids = {"graph_id": assistant.graph_id, "assistant_id": options["assistant_id"]}
            if any(k not in existing.metadata for k in ids):  # how clients find their threads
                await self.registry.update_thread(
                    thread_id,
                    metadata={**ids, **existing.metadata},
                    check_metadata=lambda merged: check_metadata(merged, "the thread's metadata"),
                )
            run_metadata = {
                "created_by": "system",
                **existing.metadata,
                **ids,
                **(body.metadata or {}),
            }
            check_metadata({**(config.get("metadata") or {}), **run_metadata}, "the run's metadata")
            active = await self.registry.list_runs(
                thread_id=thread_id, status=list(ACTIVE), limit=1000
            )
            strategy = options["multitask_strategy"]
            if active and strategy == "reject":
                raise ApiError(
                    409,
                    "Thread is already running a task. Wait for it to finish or choose a "
                    "different multitask strategy.",
                )
            run = await self.registry.create_run(
                thread_id,
                run_id=run_id,
                spec=assistant.spec.model_dump(mode="json"),
                spec_name=assistant.graph_id,
                spec_hash=assistant.spec.spec_hash(),
                input=body.input,
                metadata=run_metadata,
                options=options,
                checkpoint_id=checkpoint_id,
                tenant=tenant,
                queued_by=self.owner if self.in_process else None,
            )
            try:  # across replicas: the thread's older active runs as the strategy says
                await admit_run(self.registry, run, strategy, self._cancel_id)
            except RunRejectedError as exc:
                raise ApiError(409, str(exc)) from None
            if self.in_process:
                self.streams.open(run_id, persist=self._persist(run))
                self._live[run_id] = LiveRun()
            subscription = (
                self.streams.subscribe(
                    run_id, last_event_id=0, is_active=lambda: self.is_active(run_id)
                )
                if subscribe
                else None
            )
            await self.executor.submit(run_id, thread_id)
        return run, subscription

    async def cancel_run(
        self, tenant: str | None, thread_id: str, run_id: str, action: str
    ) -> RunRecord:
        if action != "interrupt":
            raise ApiError(
                422,
                f"cancel action {action!r} is not supported; use 'interrupt' (checkpoints "
                "are never rolled back)",
            )
        run = await self.run(tenant, thread_id, run_id)
        if run.status in ACTIVE:
            await self._cancel(run, action)
        return run

    async def cancel_if_active(self, run_id: str) -> None:
        """Cancel ``run_id`` if it is still pending or running (a client went away)."""
        run = await self.registry.get_run(run_id)
        if run is not None and run.status in ACTIVE:
            await self._cancel(run, "interrupt")

    async def wait_run(self, run_id: str) -> None:
        """Return once ``run_id`` has ended (a run of another process: poll the registry)."""
        live = self._live.get(run_id)
        if live is not None:
            await live.done.wait()
            return
        while True:
            run = await self.registry.get_run(run_id)
            if run is None or run.status not in ACTIVE:
                return
            await asyncio.sleep(0.25)

    async def is_active(self, run_id: str) -> bool:
        run = await self.registry.get_run(run_id)
        return run is not None and run.status in ACTIVE

    async def result(self, run: RunRecord, values: Any = None) -> dict[str, Any]:
        """What ``/wait`` and ``/join`` return for an ended run: the values, or
        ``{"__error__": ...}``, or the values with ``__interrupt__``."""
        run = await self.registry.get_run(run.run_id) or run
        if run.status == "error":
            name, _, message = (run.error or "Error: ").partition(": ")
            return {"__error__": {"error": name, "message": message}}
        if values is None:
            record = await self.registry.get_thread(run.thread_id)
            if record is None:
                return {}
            graph = self._graph_of(record)
            snapshot = await graph.aget_state(MoA.config(run.thread_id))
            output = set(graph.output_channels)
            values = serde.jsonable(
                {k: v for k, v in (snapshot.values or {}).items() if k in output}
            )
            if snapshot.interrupts:
                values["__interrupt__"] = [serde.interrupt_json(i) for i in snapshot.interrupts]
        return cast(dict[str, Any], values)
