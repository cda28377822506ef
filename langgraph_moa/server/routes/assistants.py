"""The ``/assistants`` paths: one assistant per served spec."""

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from langgraph_moa.server import serde
from langgraph_moa.server.routes.responses import TenantOf
from langgraph_moa.server.schemas import AssistantSearch
from langgraph_moa.server.service import ApiError, MoAServer

__all__ = ["add_assistant_routes"]

log = logging.getLogger("langgraph_moa.server")


def add_assistant_routes(router: APIRouter, server: MoAServer, tenant_of: TenantOf) -> None:
    """Search, count and describe the served assistants."""
    Tenant = Annotated[str | None, Depends(tenant_of)]

    def assistants_matching(body: AssistantSearch) -> list[dict[str, Any]]:
        found = [a.to_json() for a in server.assistants.values()]
        if body.graph_id:
            found = [a for a in found if a["graph_id"] == body.graph_id]
        if body.name:
            found = [a for a in found if body.name.lower() in a["name"].lower()]
        if body.metadata:
            found = [
                a for a in found if all(a["metadata"].get(k) == v for k, v in body.metadata.items())
            ]
        key = body.sort_by or "created_at"
        found.sort(key=lambda a: str(a[key]), reverse=(body.sort_order or "desc") == "desc")
        return found

    @router.post("/assistants/search", tags=["assistants"])
    async def search_assistants(body: AssistantSearch, tenant: Tenant) -> list[dict[str, Any]]:
        """Assistants: one per served spec."""
        found = assistants_matching(body)[body.offset : body.offset + body.limit]
        if body.select:
            found = [{k: v for k, v in a.items() if k in body.select} for a in found]
        return found

    @router.post("/assistants/count", tags=["assistants"])
    async def count_assistants(body: AssistantSearch, tenant: Tenant) -> int:
        return len(assistants_matching(body))

    @router.get("/assistants/{assistant_id}", tags=["assistants"])
    async def get_assistant(assistant_id: str, tenant: Tenant) -> dict[str, Any]:
        return server.assistant(assistant_id).to_json()

    @router.get("/assistants/{assistant_id}/graph", tags=["assistants"])
    async def get_assistant_graph(
        assistant_id: str, tenant: Tenant, xray: str = "false"
    ) -> dict[str, Any]:
        """The graph's nodes and edges (``xray`` is accepted; MoA graphs have no subgraphs)."""
        if xray.lower() not in ("true", "false") and not xray.isdigit():
            raise ApiError(422, "Invalid xray value")
        graph = server.assistant(assistant_id).graph
        return serde.jsonable(graph.get_graph().to_json())

    @router.get("/assistants/{assistant_id}/subgraphs", tags=["assistants"])
    async def get_assistant_subgraphs(assistant_id: str, tenant: Tenant) -> dict[str, Any]:
        server.assistant(assistant_id)
        return {}

    @router.get("/assistants/{assistant_id}/schemas", tags=["assistants"])
    async def get_assistant_schemas(assistant_id: str, tenant: Tenant) -> dict[str, Any]:
        """JSON schemas of the graph's input, output, state and config."""
        assistant = server.assistant(assistant_id)
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
