"""The cron paths: ``/runs/crons`` (a new thread per tick) and
``/threads/{thread_id}/runs/crons`` (each tick runs on the thread)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from langgraph_moa.server.resource_schemas import (
    CronCount,
    CronCreate,
    CronPatch,
    CronSearch,
    ThreadCronCreate,
)
from langgraph_moa.server.routes.responses import TenantOf
from langgraph_moa.server.service import MoAServer

__all__ = ["add_cron_routes"]


def add_cron_routes(router: APIRouter, server: MoAServer, tenant_of: TenantOf) -> None:
    """Create, read, change, delete, search and count crons."""
    Tenant = Annotated[str | None, Depends(tenant_of)]

    @router.post("/runs/crons", tags=["crons"])
    async def create_cron(body: CronCreate, tenant: Tenant) -> dict[str, Any]:
        """A cron whose every tick runs the assistant on a new thread (deleted after the
        run unless ``on_run_completed`` is ``keep``)."""
        return await server.create_cron(tenant, None, body)

    @router.post("/threads/{thread_id}/runs/crons", tags=["crons"])
    async def create_thread_cron(
        thread_id: str, body: ThreadCronCreate, tenant: Tenant
    ) -> dict[str, Any]:
        """A cron whose every tick runs the assistant on the thread."""
        return await server.create_cron(tenant, thread_id, body)

    @router.post("/runs/crons/search", tags=["crons"])
    async def search_crons(body: CronSearch, tenant: Tenant) -> list[dict[str, Any]]:
        return await server.search_crons(tenant, body)

    @router.post("/runs/crons/count", tags=["crons"])
    async def count_crons(body: CronCount, tenant: Tenant) -> int:
        return await server.count_crons(tenant, body)

    @router.get("/runs/crons/{cron_id}", tags=["crons"])
    async def get_cron(cron_id: str, tenant: Tenant) -> dict[str, Any]:
        return (await server.cron(tenant, cron_id)).to_json()

    @router.patch("/runs/crons/{cron_id}", tags=["crons"])
    async def patch_cron(cron_id: str, body: CronPatch, tenant: Tenant) -> dict[str, Any]:
        """Change the schedule (ticks restart from now), end time, enabled flag or the
        runs' fields."""
        return await server.update_cron(tenant, cron_id, body)

    @router.delete("/runs/crons/{cron_id}", tags=["crons"], status_code=204)
    async def delete_cron(cron_id: str, tenant: Tenant) -> Response:
        """Delete the cron (204); no run of it starts after this answers."""
        await server.delete_cron(tenant, cron_id)
        return Response(status_code=204)
