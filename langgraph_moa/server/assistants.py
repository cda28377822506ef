"""Assistants (the ``/assistants`` paths): the served specs, one *system* assistant each
(read-only, id ``uuid5(NAMESPACE_GRAPH, graph_id)``), and each tenant's own assistants
stored with versions (:class:`~langgraph_moa.persistence.assistants.AssistantStore`): a
graph of a served spec with its own config, metadata, name and description. A stored
assistant's config is merged under the config of each of its runs."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from langgraph_moa.persistence.assistants import (
    AssistantExistsError,
    AssistantNotFoundError,
    AssistantRecord,
)
from langgraph_moa.server.core import ApiError, Assistant, ServerCore
from langgraph_moa.server.resource_schemas import AssistantCreate, AssistantPatch
from langgraph_moa.server.schemas import AssistantSearch, RunConfig

__all__ = ["AssistantService", "merge_config"]

RESERVED = ("thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map")


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` (a run's config) over ``base`` (its assistant's): ``configurable`` and
    ``metadata`` merged key by key, ``tags`` joined, other keys replaced."""
    merged = {**base, **override}
    for key in ("configurable", "metadata"):
        if key in base or key in override:
            merged[key] = {**(base.get(key) or {}), **(override.get(key) or {})}
    if base.get("tags") or override.get("tags"):
        merged["tags"] = list(
            dict.fromkeys([*(base.get("tags") or []), *(override.get("tags") or [])])
        )
    return merged


class AssistantService(ServerCore):
    """The system assistants and the tenants' stored ones."""

    def _served(self, graph_id: str) -> Assistant:
        served = self.assistants.get(graph_id)
        if served is None:
            raise ApiError(
                404,
                f"Graph '{graph_id}' not found. Expected one of: {sorted(self.assistants)}",
            )
        return served

    async def _own(self, tenant: str | None, assistant_id: str) -> AssistantRecord:
        """The tenant's stored assistant; a system one cannot change (409)."""
        system = self._system(assistant_id)
        if system is not None:
            raise ApiError(
                409,
                f"assistant {assistant_id} is the spec '{system.graph_id}' served by this "
                "server and cannot be changed; create an assistant of graph_id "
                f"'{system.graph_id}' (POST /assistants) and change that one",
            )
        record = await self._stored(tenant, assistant_id)
        if record is None:
            raise ApiError(404, f"Assistant {assistant_id} not found")
        return record

    @staticmethod
    def _check_config(config: dict[str, Any]) -> None:
        try:
            RunConfig.model_validate(config)
        except ValidationError as exc:
            raise ApiError(422, f"config: {exc.errors()[0]['msg']}") from None
        bad = [k for k in config.get("configurable") or {} if k in RESERVED or k.startswith("__")]
        if bad:
            raise ApiError(422, f"config.configurable: {bad} cannot be set on an assistant")

    async def assistant_json(self, tenant: str | None, ref: str) -> dict[str, Any]:
        system, record = await self.resolve_assistant(tenant, ref)
        return record.to_json() if record is not None else system.to_json()

    async def create_assistant(self, tenant: str | None, body: AssistantCreate) -> dict[str, Any]:
        self._served(body.graph_id)
        if body.assistant_id is not None and self._system(body.assistant_id) is not None:
            if body.if_exists == "do_nothing":
                return self._served(body.graph_id).to_json()
            raise ApiError(409, f"Assistant {body.assistant_id} already exists")
        config = body.config.model_dump(exclude_unset=True) if body.config else {}
        self._check_config(
            {**config, "configurable": body.context or config.get("configurable") or {}}
        )
        try:
            record = await self.assistant_store.create(
                tenant,
                graph_id=body.graph_id,
                assistant_id=body.assistant_id,
                config=config,
                context=body.context,
                metadata=body.metadata,
                name=body.name,
                description=body.description,
                if_exists=body.if_exists,
            )
        except AssistantExistsError as exc:
            raise ApiError(409, str(exc)) from None
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return record.to_json()

    async def update_assistant(
        self, tenant: str | None, assistant_id: str, body: AssistantPatch
    ) -> dict[str, Any]:
        await self._own(tenant, assistant_id)
        if body.graph_id is not None:
            self._served(body.graph_id)
        config = body.config.model_dump(exclude_unset=True) if body.config else None
        if config is not None or body.context is not None:
            self._check_config(
                {
                    **(config or {}),
                    "configurable": body.context or (config or {}).get("configurable") or {},
                }
            )
        try:
            record = await self.assistant_store.update(
                tenant,
                assistant_id,
                graph_id=body.graph_id,
                config=config,
                context=body.context,
                metadata=body.metadata,
                name=body.name,
                description=body.description,
            )
        except AssistantNotFoundError as exc:
            raise ApiError(404, str(exc)) from None
        except AssistantExistsError as exc:
            raise ApiError(409, str(exc)) from None
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return record.to_json()

    async def delete_assistant(self, tenant: str | None, assistant_id: str) -> None:
        """Delete the assistant, its versions and its crons."""
        await self._own(tenant, assistant_id)
        await self.cron_store.delete_for_assistant(tenant, assistant_id)
        if not await self.assistant_store.delete(tenant, assistant_id):
            raise ApiError(404, f"Assistant with ID {assistant_id} not found")

    async def assistant_versions(
        self,
        tenant: str | None,
        assistant_id: str,
        *,
        metadata: dict[str, Any] | None,
        limit: int,
        offset: int,
    ) -> list[dict[str, Any]]:
        system = self._system(assistant_id)
        if system is not None:
            found = [system.to_json()]
            if metadata and not all(found[0]["metadata"].get(k) == v for k, v in metadata.items()):
                found = []
            return [{k: v for k, v in a.items() if k != "updated_at"} for a in found][
                offset : offset + limit
            ]
        record = await self._stored(tenant, assistant_id)
        if record is None:
            raise ApiError(404, f"Assistant {assistant_id} not found")
        versions = await self.assistant_store.versions(
            tenant, assistant_id, metadata=metadata, limit=limit, offset=offset
        )
        return [v.version_json() for v in versions]

    async def set_latest_assistant(
        self, tenant: str | None, assistant_id: str, version: int
    ) -> dict[str, Any]:
        await self._own(tenant, assistant_id)
        try:
            record = await self.assistant_store.set_latest(tenant, assistant_id, version)
        except AssistantNotFoundError as exc:
            raise ApiError(404, str(exc)) from None
        return record.to_json()

    async def assistants_matching(
        self, tenant: str | None, body: AssistantSearch
    ) -> list[dict[str, Any]]:
        """The system assistants and the tenant's, filtered and sorted as asked."""
        if body.graph_id is not None:
            self._served(body.graph_id)
        found = [a.to_json() for a in self.assistants.values()]
        found += [
            r.to_json()
            for r in await self.assistant_store.list(tenant, graph_id=body.graph_id)
            if r.graph_id in self.assistants
        ]
        if body.graph_id:
            found = [a for a in found if a["graph_id"] == body.graph_id]
        if body.name:
            found = [a for a in found if body.name.lower() in a["name"].lower()]
        if body.metadata:
            found = [
                a for a in found if all(a["metadata"].get(k) == v for k, v in body.metadata.items())
            ]
        key = body.sort_by or "created_at"
        found.sort(
            key=lambda a: str(a[key]).lower() if key in ("name", "graph_id") else str(a[key]),
            reverse=(body.sort_order or "desc") == "desc",
        )
        return found
