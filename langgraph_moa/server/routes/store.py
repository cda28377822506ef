"""The ``/store`` paths: the caller's long-term memory items (see ``server/store.py``)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from langgraph_moa.server.routes.responses import TenantOf, flag
from langgraph_moa.server.service import MoAServer
from langgraph_moa.server.store import (
    MAX_KEY,
    NamespaceList,
    StoreDelete,
    StorePut,
    StoreSearch,
    TenantStore,
)

__all__ = ["add_store_routes"]


def add_store_routes(router: APIRouter, server: MoAServer, tenant_of: TenantOf) -> None:
    """Put, get, delete and search items; list namespaces. Each tenant sees its own."""
    Tenant = Annotated[str | None, Depends(tenant_of)]

    def view(tenant: str | None) -> TenantStore:
        return TenantStore(server.store, tenant)

    @router.put("/store/items", status_code=204, tags=["store"])
    async def put_item(body: StorePut, tenant: Tenant) -> Response:
        """Create or replace an item (``ttl`` in minutes; ``index`` as LangGraph's)."""
        await view(tenant).put(body)
        return Response(status_code=204)

    @router.get("/store/items", tags=["store"])
    async def get_item(
        tenant: Tenant,
        key: Annotated[str, Query(min_length=1, max_length=MAX_KEY)],
        namespace: Annotated[str, Query(max_length=400)] = "",
        refresh_ttl: str | None = None,
    ) -> Any:
        """The item, or ``null`` when there is none (as the reference server answers)."""
        labels = namespace.split(".") if namespace else []
        refresh = None if refresh_ttl is None else flag(refresh_ttl)
        return await view(tenant).get(labels, key, refresh)

    @router.delete("/store/items", status_code=204, tags=["store"])
    async def delete_item(body: StoreDelete, tenant: Tenant) -> Response:
        """Delete an item (204 also when there was none)."""
        await view(tenant).delete(body)
        return Response(status_code=204)

    @router.post("/store/items/search", tags=["store"])
    async def search_items(body: StoreSearch, tenant: Tenant) -> dict[str, Any]:
        """Items under a namespace prefix, filtered, most recently updated first."""
        return await view(tenant).search(body)

    @router.post("/store/namespaces", tags=["store"])
    async def list_namespaces(body: NamespaceList, tenant: Tenant) -> dict[str, Any]:
        """The caller's namespaces, by prefix/suffix, cut at ``max_depth``."""
        return await view(tenant).namespaces(body)
