"""Mount MoA in an application of your own, under ``/moa``, behind your own identity.

The host app keeps its routes; ``create_router`` adds the LangGraph Server API under a
prefix, and ``authenticate`` maps each request to a tenant (here: a bearer token looked up
in a table; use your session or JWT check instead). Every thread belongs to the tenant
that created it; other tenants get 404 for it.

    python examples/mount_router.py           # http://127.0.0.1:8000/moa
    client = get_client(url="http://127.0.0.1:8000/moa", api_key=None,
                        headers={"Authorization": "Bearer token-ann"})
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request

from langgraph_moa.server import create_router, create_server

SPECS = os.environ.get("MOA_SPECS") or str(Path(__file__).with_name("specs") / "team.yaml")
USERS = {"token-ann": "ann", "token-bob": "bob"}
"""Bearer token -> user. A stand-in for your identity provider."""

moa = create_server(SPECS.split(","), db_url=os.environ.get("MOA_DB_URL", "sqlite:///host.sqlite"))


async def authenticate(request: Request) -> str:
    """The tenant of a request: its user, from the bearer token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    user = USERS.get(token) if scheme.lower() == "bearer" else None
    if user is None:
        raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
    return f"user:{user}"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with moa:  # opens the store, resumes runs left by a previous process
        yield


app = FastAPI(title="My product", lifespan=lifespan)
app.include_router(create_router(moa, authenticate=authenticate), prefix="/moa", tags=["moa"])


@app.get("/")
async def home() -> dict[str, str]:
    """A route of the host application."""
    return {"service": "my product", "api docs": "/docs"}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("MOA_PORT", "8000")))
