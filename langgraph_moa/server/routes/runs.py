"""The run paths: ``/threads/{thread_id}/runs`` and the stateless ``/runs``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette import EventSourceResponse

from langgraph_moa.server.routes.responses import (
    RunResponses,
    TenantOf,
    flag,
    locations,
    stream_modes,
)
from langgraph_moa.server.schemas import RunBatch, RunCreate, StatelessRunCreate
from langgraph_moa.server.service import ACTIVE, ApiError, MoAServer
from langgraph_moa.server.validation import MAX_INT

__all__ = ["add_run_routes"]


def add_run_routes(router: APIRouter, server: MoAServer, tenant_of: TenantOf) -> None:
    """Create, follow, wait for, list, cancel and delete runs."""
    Tenant = Annotated[str | None, Depends(tenant_of)]
    responses = RunResponses(server)
    sse, wait_body = responses.sse, responses.wait_body

    @router.post("/threads/{thread_id}/runs", tags=["thread-runs"])
    async def create_run(thread_id: str, body: RunCreate, tenant: Tenant) -> JSONResponse:
        """Start a run in the background (queued behind the thread's active run with
        ``multitask_strategy="enqueue"``, the default)."""
        run, _ = await server.create_run(tenant, thread_id, body, subscribe=False)
        headers = {"Content-Location": f"/threads/{thread_id}/runs/{run.run_id}"}
        return JSONResponse(server.run_json(run), headers=headers)

    @router.post(
        "/threads/{thread_id}/runs/stream",
        tags=["thread-runs"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream_run(thread_id: str, body: RunCreate, tenant: Tenant) -> EventSourceResponse:
        """Start a run and stream its events (SSE): ``metadata`` first, then one event
        per chunk of each requested stream mode, ``error`` on failure."""
        run, events = await server.create_run(tenant, thread_id, body)
        return sse(
            run.run_id,
            events,
            body.stream_resumable,
            body.on_disconnect,
            locations(thread_id, run.run_id, "/stream"),
        )

    @router.post("/threads/{thread_id}/runs/wait", tags=["thread-runs"])
    async def wait_run(thread_id: str, body: RunCreate, tenant: Tenant) -> StreamingResponse:
        """Start a run and answer with its final values (newlines keep the connection
        alive meanwhile)."""
        run, events = await server.create_run(tenant, thread_id, body, stream_modes=["values"])
        return wait_body(
            run.run_id, events, body.on_disconnect, locations(thread_id, run.run_id, "/join")
        )

    @router.get("/threads/{thread_id}/runs", tags=["thread-runs"])
    async def list_runs(
        thread_id: str,
        tenant: Tenant,
        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        statuses = ("pending", "running", "error", "success", "timeout", "interrupted")
        if status is not None and status not in statuses:
            raise ApiError(422, f"Invalid status {status!r}; use one of {', '.join(statuses)}")
        runs = await server.list_runs(tenant, thread_id, limit=limit, offset=offset, status=status)
        return [server.run_json(r) for r in runs]

    @router.get("/threads/{thread_id}/runs/{run_id}", tags=["thread-runs"])
    async def get_run(thread_id: str, run_id: str, tenant: Tenant) -> dict[str, Any]:
        return server.run_json(await server.run(tenant, thread_id, run_id))

    @router.delete("/threads/{thread_id}/runs/{run_id}", tags=["thread-runs"], status_code=204)
    async def delete_run(thread_id: str, run_id: str, tenant: Tenant) -> Response:
        run = await server.run(tenant, thread_id, run_id)
        if run.status in ACTIVE:
            raise ApiError(409, "the run is still active; cancel it first")
        await server.registry.delete_run(run_id)
        await server.streams.delete([run_id])
        return Response(status_code=204)

    @router.get("/threads/{thread_id}/runs/{run_id}/join", tags=["thread-runs"])
    async def join_run(
        thread_id: str, run_id: str, tenant: Tenant, cancel_on_disconnect: str = "false"
    ) -> StreamingResponse:
        """Wait for a run to end; its final values."""
        run = await server.run(tenant, thread_id, run_id)
        on_disconnect = "cancel" if flag(cancel_on_disconnect) else "continue"
        return wait_body(run.run_id, None, on_disconnect, locations(thread_id, run_id, "/join"))

    @router.get(
        "/threads/{thread_id}/runs/{run_id}/stream",
        tags=["thread-runs"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def join_stream(
        thread_id: str,
        run_id: str,
        request: Request,
        tenant: Tenant,
        cancel_on_disconnect: str = "false",
    ) -> EventSourceResponse:
        """Follow a run's events from now on; with ``Last-Event-ID`` (runs created with
        ``stream_resumable``) first replay the events after that id."""
        run = await server.run(tenant, thread_id, run_id)
        last = request.headers.get("last-event-id", "").strip()
        last_id = int(last) if last.isascii() and last.isdigit() and len(last) < 19 else None
        modes = stream_modes(request.query_params.getlist("stream_mode"))
        events = server.streams.subscribe(
            run_id,
            last_event_id=last_id,
            is_active=lambda: server.is_active(run_id),
        )
        on_disconnect = "cancel" if flag(cancel_on_disconnect) else "continue"
        resumable = bool(run.options.get("stream_resumable"))
        return sse(
            run_id,
            events,
            resumable,
            on_disconnect,
            locations(thread_id, run_id, "/stream"),
            modes=modes,
        )

    @router.post("/threads/{thread_id}/runs/{run_id}/cancel", tags=["thread-runs"])
    async def cancel_run(
        thread_id: str,
        run_id: str,
        tenant: Tenant,
        wait: str = "false",
        action: str = "interrupt",
    ) -> Response:
        """Stop a run (202). ``wait=1`` answers once it has stopped, with the thread's
        values."""
        run = await server.cancel_run(tenant, thread_id, run_id, action)
        if not flag(wait):
            return Response(status_code=202)
        return wait_body(run.run_id, None, "continue", locations(thread_id, run_id, "/join"))

    @router.post("/runs", tags=["stateless-runs"])
    async def create_stateless(body: StatelessRunCreate, tenant: Tenant) -> JSONResponse:
        """Start a run on a thread of its own in the background (the thread is deleted
        once the run ends unless ``on_completion`` is ``keep``)."""
        run, _ = await server.create_run(tenant, None, body, subscribe=False)
        headers = {"Content-Location": f"/threads/{run.thread_id}/runs/{run.run_id}"}
        return JSONResponse(server.run_json(run), headers=headers)

    @router.post("/runs/batch", tags=["stateless-runs"])
    async def create_batch(body: RunBatch, tenant: Tenant) -> list[dict[str, Any]]:
        """Start several stateless runs (each on a thread of its own) in the background;
        the runs in the order given. Every run is checked before any starts."""
        for item in body.root:
            await server.check_run(tenant, item)
        runs = [
            (await server.create_run(tenant, None, item, subscribe=False))[0] for item in body.root
        ]
        return [server.run_json(run) for run in runs]

    @router.post(
        "/runs/stream",
        tags=["stateless-runs"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream_stateless(body: StatelessRunCreate, tenant: Tenant) -> EventSourceResponse:
        """A run on a thread of its own (deleted afterwards unless ``on_completion`` is
        ``keep``), streamed."""
        run, events = await server.create_run(tenant, None, body)
        return sse(
            run.run_id,
            events,
            body.stream_resumable,
            body.on_disconnect,
            locations(run.thread_id, run.run_id, "/stream"),
        )

    @router.post("/runs/wait", tags=["stateless-runs"])
    async def wait_stateless(body: StatelessRunCreate, tenant: Tenant) -> StreamingResponse:
        """A run on a thread of its own, answered with its final values."""
        run, events = await server.create_run(tenant, None, body, stream_modes=["values"])
        return wait_body(
            run.run_id, events, body.on_disconnect, locations(run.thread_id, run.run_id, "/join")
        )
