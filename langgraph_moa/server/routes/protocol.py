"""The thread-centric stream protocol of the current JS SDK (see ``server/protocol.py``):
``POST /threads/{thread_id}/commands`` and ``POST /threads/{thread_id}/stream/events``."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from langgraph_moa.server import serde
from langgraph_moa.server.protocol import (
    CommandAnswer,
    EventFilter,
    EventStreamRequest,
    ProtocolCommand,
)
from langgraph_moa.server.routes.responses import TenantOf
from langgraph_moa.server.schemas import ErrorBody
from langgraph_moa.server.service import MoAServer

__all__ = ["add_protocol_routes"]


def add_protocol_routes(router: APIRouter, server: MoAServer, tenant_of: TenantOf) -> None:
    """Commands and event streams of the caller's threads."""
    Tenant = Annotated[str | None, Depends(tenant_of)]

    @router.post(
        "/threads/{thread_id}/commands",
        tags=["threads"],
        response_model=CommandAnswer,
        responses={400: {"model": CommandAnswer, "description": "Not a command."}},
        openapi_extra=_body(ProtocolCommand),
    )
    async def thread_command(thread_id: str, request: Request, tenant: Tenant) -> JSONResponse:
        """One protocol command ``{id, method, params}`` (``run.start``,
        ``input.respond``...): ``{type: "success", id, result, meta}`` or
        ``{type: "error", id, error, message}``."""
        status, answer = await server.protocol_command(tenant, thread_id, await _json(request))
        return JSONResponse(answer, status_code=status)

    @router.post(
        "/threads/{thread_id}/stream/events",
        tags=["threads"],
        response_class=EventSourceResponse,
        responses={
            200: {"content": {"text/event-stream": {}}},
            400: {"model": ErrorBody, "description": "No channels, or an unknown one."},
        },
        openapi_extra=_body(EventStreamRequest),
    )
    async def thread_events(
        thread_id: str, request: Request, tenant: Tenant
    ) -> EventSourceResponse:
        """The thread's protocol events (SSE) for ``{channels, namespaces?, depth?,
        since?}``: those of its runs so far, then live, until the client disconnects."""
        wanted = EventFilter.parse(await _json(request))
        events = await server.protocol_events(tenant, thread_id, wanted)

        async def body() -> AsyncIterator[ServerSentEvent]:
            async for event in events:
                yield ServerSentEvent(
                    data=serde.dumps(event).decode(), event=event["method"], id=str(event["seq"])
                )

        return EventSourceResponse(
            body(),
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            ping=server.options.heartbeat,
            ping_message_factory=lambda: ServerSentEvent(comment="heartbeat"),
        )


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself."""
    schema = {"schema": model.model_json_schema()}
    return {"requestBody": {"required": True, "content": {"application/json": schema}}}


async def _json(request: Request) -> Any:
    """The body as JSON (already checked by the route class), or ``None``."""
    try:
        return await request.json()
    except ValueError:
        return None
