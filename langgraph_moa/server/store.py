"""The ``/store`` API's side of long-term memory: request bodies and a per-tenant view.

Every tenant's items live under one extra first namespace label, ``~`` plus the tenant
id (``~`` alone on an open server), added on the way in and stripped on the way out by
:class:`~langgraph_moa.persistence.store.TenantView`, so a client never sees or names it
and cannot reach another tenant's items. The tenant's runs get the same view as their
graph's store, so what a run's agents remember is what ``/store`` shows that tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from langgraph.store.base import Item, PutOp, SearchItem
from pydantic import BaseModel, ConfigDict, Field, field_validator

from langgraph_moa.persistence.store import AsyncSQLAlchemyStore, TenantView
from langgraph_moa.server.core import ApiError

__all__ = [
    "NamespaceList",
    "StoreDelete",
    "StorePut",
    "StoreSearch",
    "TenantStore",
    "check_namespace",
]

MAX_LABEL = 128
MAX_NAMESPACE = 320  # joined with dots; plus the tenant label it fits the store's 384
MAX_KEY = 256
MAX_LIMIT = 1000

Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL)]


def check_namespace(namespace: Sequence[str], where: str, *, empty: bool = False) -> None:
    """422 unless ``namespace`` is a list of non-empty labels without ``.``."""
    if not namespace and not empty:
        raise ApiError(422, f"`{where}` must not be empty")
    for i, label in enumerate(namespace):
        if not isinstance(label, str) or not label or "." in label:
            raise ApiError(
                422, f"`{where}[{i}]` = {label!r}: a label must be a non-empty string without '.'"
            )
    if len(".".join(namespace)) > MAX_NAMESPACE:
        raise ApiError(422, f"`{where}` is longer than {MAX_NAMESPACE} characters joined")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorePut(_Body):
    """``PUT /store/items``."""

    namespace: list[Label]
    key: Annotated[str, Field(min_length=1, max_length=MAX_KEY)]
    value: dict[str, Any]
    index: Literal[False] | list[Label] | None = None
    ttl: Annotated[float, Field(ge=0)] | None = None


class StoreDelete(_Body):
    """``DELETE /store/items``."""

    namespace: list[Label]
    key: Annotated[str, Field(min_length=1, max_length=MAX_KEY)]


class StoreSearch(_Body):
    """``POST /store/items/search``."""

    namespace_prefix: list[Label] = []
    filter: dict[str, Any] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 10
    offset: Annotated[int, Field(ge=0)] = 0
    query: Annotated[str, Field(max_length=10_000)] | None = None
    refresh_ttl: bool | None = None

    @field_validator("filter")
    @classmethod
    def _filter_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from langgraph_moa.persistence._store_sql import check_filter

        if value:
            check_filter(value)
        return value


class NamespaceList(_Body):
    """``POST /store/namespaces``."""

    prefix: list[Label] | None = None
    suffix: list[Label] | None = None
    max_depth: Annotated[int, Field(ge=1, le=64)] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 100
    offset: Annotated[int, Field(ge=0)] = 0


def _json(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {
        "namespace": list(item.namespace),
        "key": item.key,
        "value": item.value,
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }
    if isinstance(item, SearchItem):
        out["score"] = item.score
    return out


class TenantStore:
    """The items of one tenant in the server's store, as the API returns them."""

    def __init__(self, store: AsyncSQLAlchemyStore, tenant: str | None) -> None:
        self.store = TenantView(store, tenant)

    @staticmethod
    def _ns(namespace: Sequence[str]) -> tuple[str, ...]:
        return tuple(namespace)

    async def put(self, body: StorePut) -> None:
        check_namespace(body.namespace, "namespace")
        # an op, not ``aput``: a first label ``langgraph`` is the client's, not LangGraph's root
        put = PutOp(self._ns(body.namespace), body.key, body.value, body.index, body.ttl)
        await self.store.abatch([put])

    async def get(self, namespace: Sequence[str], key: str, refresh: bool | None) -> Any:
        check_namespace(namespace, "namespace")
        item = await self.store.aget(self._ns(namespace), key, refresh_ttl=refresh)
        return None if item is None else _json(item)

    async def delete(self, body: StoreDelete) -> None:
        check_namespace(body.namespace, "namespace")
        await self.store.adelete(self._ns(body.namespace), body.key)

    async def search(self, body: StoreSearch) -> dict[str, Any]:
        check_namespace(body.namespace_prefix, "namespace_prefix", empty=True)
        items = await self.store.asearch(
            self._ns(body.namespace_prefix),
            query=body.query,
            filter=body.filter,
            limit=body.limit,
            offset=body.offset,
            refresh_ttl=body.refresh_ttl,
        )
        return {"items": [_json(i) for i in items]}

    async def namespaces(self, body: NamespaceList) -> dict[str, Any]:
        check_namespace(body.prefix or [], "prefix", empty=True)
        for i, label in enumerate(body.suffix or []):
            if "." in label:
                raise ApiError(422, f"`suffix[{i}]` = {label!r}: a label must not contain '.'")
        found = await self.store.alist_namespaces(
            prefix=self._ns(body.prefix) if body.prefix else None,
            suffix=tuple(body.suffix) if body.suffix else None,
            max_depth=body.max_depth,
            limit=body.limit,
            offset=body.offset,
        )
        return {"namespaces": [list(ns) for ns in found]}
