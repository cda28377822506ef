"""The ``/assistants`` paths: one read-only assistant per served spec, and each tenant's
own assistants with versions."""

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from langgraph_moa.server import serde
from langgraph_moa.server.resource_schemas import (
    AssistantCreate,
    AssistantPatch,
    AssistantVersionChange,
    AssistantVersionsSearch,
)
from langgraph_moa.server.routes.responses import TenantOf
from langgraph_moa.server.schemas import AssistantSearch
from langgraph_moa.server.service import ApiError, MoAServer

__all__ = ["add_assistant_routes"]

log = logging.getLogger("langgraph_moa.server")


def add_assistant_routes(router: APIRouter, server: MoAServer, tenant_of: TenantOf) -> None:
    """Create, read, change (a new version each time), delete, search and count
    assistants; their versions; their graph and schemas."""
    Tenant = Annotated[str | None, Depends(tenant_of)]

    @router.post("/assistants", tags=["assistants"])
    async def create_assistant(body: AssistantCreate, tenant: Tenant) -> dict[str, Any]:
        """An assistant of a served graph with its own config, metadata and name
        (version 1); 409 if the id exists, unless ``if_exists`` is ``do_nothing``."""
        return await server.create_assistant(tenant, body)

    @router.post("/assistants/search", tags=["assistants"])
    async def search_assistants(body: AssistantSearch, tenant: Tenant) -> list[dict[str, Any]]:
        """The served specs' assistants and the tenant's own."""
        found = (await server.assistants_matching(tenant, body))[
            body.offset : body.offset + body.limit
        ]
        if body.select:
            found = [{k: v for k, v in a.items() if k in body.select} for a in found]
        return found

    @router.post("/assistants/count", tags=["assistants"])
    async def count_assistants(body: AssistantSearch, tenant: Tenant) -> int:
        return len(await server.assistants_matching(tenant, body))

    @router.get("/assistants/{assistant_id}", tags=["assistants"])
    async def get_assistant(assistant_id: str, tenant: Tenant) -> dict[str, Any]:
        return await server.assistant_json(tenant, assistant_id)

    @router.patch("/assistants/{assistant_id}", tags=["assistants"])
    async def patch_assistant(
        assistant_id: str, body: AssistantPatch, tenant: Tenant
    ) -> dict[str, Any]:
        """Write a new version (fields left out are kept, metadata merged) and make it
        the current one."""
        return await server.update_assistant(tenant, assistant_id, body)

    @router.delete("/assistants/{assistant_id}", tags=["assistants"], status_code=204)
    async def delete_assistant(
        assistant_id: str, tenant: Tenant, delete_threads: str = "false"
    ) -> Response:
        """Delete the assistant, its versions and its crons (204); with
        ``delete_threads=true`` also the tenant's threads whose metadata names it."""
        await server.delete_assistant(tenant, assistant_id)
        if delete_threads.lower() == "true":
            named = await server.registry.search_threads(
                metadata={"assistant_id": assistant_id}, owner=tenant, limit=100_000
            )
            for thread in named:
                await server.delete_thread(tenant, thread.thread_id)
        return Response(status_code=204)

    @router.post("/assistants/{assistant_id}/versions", tags=["assistants"])
    async def assistant_versions(
        assistant_id: str, body: AssistantVersionsSearch, tenant: Tenant
    ) -> list[dict[str, Any]]:
        """The assistant's versions, newest first."""
        return await server.assistant_versions(
            tenant, assistant_id, metadata=body.metadata, limit=body.limit, offset=body.offset
        )

    @router.post("/assistants/{assistant_id}/latest", tags=["assistants"])
    async def set_latest_version(
        assistant_id: str, body: AssistantVersionChange, tenant: Tenant
    ) -> dict[str, Any]:
        """Make an earlier (or later) version the assistant's current one."""
        return await server.set_latest_assistant(tenant, assistant_id, body.version)

    @router.get("/assistants/{assistant_id}/graph", tags=["assistants"])
    async def get_assistant_graph(
        assistant_id: str, tenant: Tenant, xray: str = "false"
    ) -> dict[str, Any]:
        """The graph's nodes and edges (``xray`` is accepted; MoA graphs have no subgraphs)."""
        if xray.lower() not in ("true", "false") and not xray.isdigit():
            raise ApiError(422, "Invalid xray value")
        graph = (await server.resolve_assistant(tenant, assistant_id))[0].graph
        return serde.jsonable(graph.get_graph().to_json())

    @router.get("/assistants/{assistant_id}/subgraphs", tags=["assistants"])
    async def get_assistant_subgraphs(assistant_id: str, tenant: Tenant) -> dict[str, Any]:
        await server.resolve_assistant(tenant, assistant_id)
        return {}

    @router.get("/assistants/{assistant_id}/schemas", tags=["assistants"])
    async def get_assistant_schemas(assistant_id: str, tenant: Tenant) -> dict[str, Any]:
        """JSON schemas of the graph's input, output, state and config."""
        assistant = (await server.resolve_assistant(tenant, assistant_id))[0]
        graph = assistant.graph

        def attempt(make: Callable[[], Any]) -> Any:
            try:
                return serde.jsonable(make())
            except Exception as exc:  # a type pydantic cannot describe: leave it out
                log.debug("schema of %s: %s", assistant.graph_id, exc)
                return None

        return {
            "graph_id": assistant.graph_id,
            "input_schema": attempt(graph.get_input_jsonschema),
            "output_schema": attempt(graph.get_output_jsonschema),
            "state_schema": attempt(lambda: _state_schema(graph)),
            "config_schema": attempt(lambda: graph.config_schema().model_json_schema()),
            "context_schema": None,
        }


def _state_schema(graph: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(graph.builder.state_schema).json_schema()
