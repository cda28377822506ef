"""The ``/threads`` paths: threads, their state and history."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from sse_starlette import EventSourceResponse

from langgraph_moa.server import serde
from langgraph_moa.server.routes.responses import RunResponses, TenantOf, flag
from langgraph_moa.server.schemas import (
    HistoryRequest,
    StateAtCheckpoint,
    StateUpdate,
    ThreadCreate,
    ThreadPatch,
    ThreadSearch,
)
from langgraph_moa.server.service import ApiError, MoAServer

__all__ = ["add_thread_routes"]

ThreadStreamMode = Literal["run_modes", "lifecycle", "state_update"]


def add_thread_routes(router: APIRouter, server: MoAServer, tenant_of: TenantOf) -> None:
    """Threads of the caller and their checkpointed state."""
    Tenant = Annotated[str | None, Depends(tenant_of)]
    responses = RunResponses(server)

    @router.post("/threads", tags=["threads"])
    async def create_thread(body: ThreadCreate, tenant: Tenant) -> dict[str, Any]:
        """Create a thread owned by the caller."""
        record = await server.create_thread(tenant, body)
        return await server.thread_json(record)

    @router.post("/threads/search", tags=["threads"])
    async def search_threads(body: ThreadSearch, tenant: Tenant) -> list[dict[str, Any]]:
        """The caller's threads, filtered by metadata, status and ids."""
        return await server.search_threads(tenant, body)

    @router.post("/threads/count", tags=["threads"])
    async def count_threads(body: ThreadSearch, tenant: Tenant) -> int:
        return await server.registry.count_threads(
            metadata=body.metadata, status=body.status, owner=tenant
        )

    @router.get("/threads/{thread_id}", tags=["threads"])
    async def get_thread(thread_id: str, tenant: Tenant) -> dict[str, Any]:
        return await server.thread_json(await server.thread(tenant, thread_id))

    @router.patch("/threads/{thread_id}", tags=["threads"], response_model=None)
    async def patch_thread(
        thread_id: str, body: ThreadPatch, tenant: Tenant, request: Request
    ) -> dict[str, Any] | Response:
        """Merge ``metadata`` into the thread's."""
        record = await server.patch_thread(tenant, thread_id, body.metadata)
        if request.headers.get("prefer") == "return=minimal":
            return Response(status_code=204)
        return await server.thread_json(record)

    @router.delete("/threads/{thread_id}", tags=["threads"], status_code=204)
    async def delete_thread(thread_id: str, tenant: Tenant) -> Response:
        """Delete a thread, its runs and its checkpoints."""
        await server.delete_thread(tenant, thread_id)
        return Response(status_code=204)

    @router.post("/threads/{thread_id}/copy", tags=["threads"])
    async def copy_thread(thread_id: str, tenant: Tenant) -> dict[str, Any]:
        """A new thread with the same metadata and a copy of every checkpoint (not the
        runs)."""
        return await server.thread_json(await server.copy_thread(tenant, thread_id))

    @router.get(
        "/threads/{thread_id}/stream",
        tags=["threads"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def join_thread_stream(
        thread_id: str,
        request: Request,
        tenant: Tenant,
        stream_mode: Annotated[list[ThreadStreamMode] | None, Query()] = None,
        stream_modes: Annotated[list[ThreadStreamMode] | None, Query()] = None,
    ) -> EventSourceResponse:
        """The events of every run of the thread (SSE, each with its id), from now on or,
        with ``Last-Event-ID``, from after that event; until the thread is deleted.
        ``run_modes`` (default): all run events, a run's end as ``metadata``
        ``{"status": "run_done"}``; ``lifecycle``: only the ``metadata`` events;
        ``state_update``: an event for each update of the thread's state."""
        last = request.headers.get("last-event-id")
        last_id = None
        if last is not None and last.strip():
            last = last.strip()
            if not (last.isascii() and last.isdigit() and len(last) < 19):
                raise ApiError(422, f"Last-Event-ID {last[:40]!r}: not an event id of this server")
            last_id = int(last)
        modes = set(stream_mode or []) | set(stream_modes or []) or {"run_modes"}
        events = await server.follow_thread(tenant, thread_id, last_id, modes)
        return responses.sse(thread_id, events, True, "continue", {})

    @router.get("/threads/{thread_id}/state", tags=["threads"])
    async def get_state(thread_id: str, tenant: Tenant, subgraphs: str = "false") -> Any:
        """The thread's current state (``ThreadState``)."""
        return await server.get_state(tenant, thread_id, subgraphs=flag(subgraphs))

    @router.get("/threads/{thread_id}/state/{checkpoint_id}", tags=["threads"])
    async def get_state_at(
        thread_id: str, checkpoint_id: str, tenant: Tenant, subgraphs: str = "false"
    ) -> Any:
        return await server.get_state(
            tenant, thread_id, {"checkpoint_id": checkpoint_id}, subgraphs=flag(subgraphs)
        )

    @router.post("/threads/{thread_id}/state/checkpoint", tags=["threads"])
    async def get_state_at_post(thread_id: str, body: StateAtCheckpoint, tenant: Tenant) -> Any:
        state = await server.get_state(
            tenant, thread_id, body.checkpoint.model_dump(), subgraphs=body.subgraphs
        )
        return serde.select_state(state, body.select)

    @router.post("/threads/{thread_id}/state", tags=["threads"])
    async def update_state(thread_id: str, body: StateUpdate, tenant: Tenant) -> Any:
        """Write values as if ``as_node`` had returned them (e.g. to approve or edit
        proposals before a synthesizer); returns the new checkpoint."""
        return await server.update_state(tenant, thread_id, body)

    @router.post("/threads/{thread_id}/history", tags=["threads"])
    async def history(thread_id: str, body: HistoryRequest, tenant: Tenant) -> Any:
        """Past states of the thread, newest first."""
        return await server.history(tenant, thread_id, body)

    @router.get("/threads/{thread_id}/history", tags=["threads"])
    async def history_get(
        thread_id: str,
        tenant: Tenant,
        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
        before: str | None = None,
    ) -> Any:
        return await server.history(tenant, thread_id, HistoryRequest(limit=limit, before=before))
