"""The FastAPI application: :func:`create_app` for ``moa serve`` and for embedding.

>>> app = create_app(["team.yaml"], db_url="postgresql+psycopg://localhost/moa",
...                  api_keys=["a-long-random-key-1", "a-long-random-key-2"])
>>> # uvicorn.run(app, host="0.0.0.0", port=8123)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from langgraph.checkpoint.base import BaseCheckpointSaver

from langgraph_moa.runtime.store import resolve_db_url
from langgraph_moa.server.auth import Authenticator, KeyAuth, NoAuth, load_api_keys
from langgraph_moa.server.browser import add_browser_support, cors_origins
from langgraph_moa.server.executor import RunExecutor
from langgraph_moa.server.routes.router import DEFAULT_MAX_BODY, _version, create_router
from langgraph_moa.server.service import MoAServer, ServerOptions
from langgraph_moa.spec import GraphSpec, load_spec

__all__ = ["create_app", "create_server"]

SpecSource = GraphSpec | str | Path | Mapping[str, Any]


def create_server(
    specs: Sequence[SpecSource],
    *,
    db_url: str | None = None,
    checkpointer: BaseCheckpointSaver[Any] | None = None,
    executor: RunExecutor | None = None,
    options: ServerOptions | None = None,
) -> MoAServer:
    """A :class:`MoAServer` of ``specs`` (files, dicts or :class:`GraphSpec`) on the store
    ``db_url`` (else ``MOA_DB_URL``, else the default SQLite file)."""
    return MoAServer(
        [load_spec(s) for s in specs],
        db_url=resolve_db_url(db_url),
        checkpointer=checkpointer,
        executor=executor,
        options=options,
    )


def _authenticator(
    auth: bool, api_keys: Sequence[str] | None, authenticate: Authenticator | None
) -> Authenticator:
    if authenticate is not None:
        return authenticate
    if not auth:
        return NoAuth()
    return KeyAuth(api_keys if api_keys is not None else load_api_keys())


def create_app(
    specs: Sequence[SpecSource] | MoAServer,
    *,
    db_url: str | None = None,
    api_keys: Sequence[str] | None = None,
    auth: bool = True,
    authenticate: Authenticator | None = None,
    checkpointer: BaseCheckpointSaver[Any] | None = None,
    executor: RunExecutor | None = None,
    options: ServerOptions | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    title: str = "langgraph-moa",
    cors: Sequence[str] | None = None,
    ui: bool = True,
    public_docs: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``specs`` with the LangGraph Server API.

    Authentication: ``api_keys`` (else ``MOA_API_KEYS``/``MOA_API_KEYS_FILE``); each key
    is a tenant. ``authenticate`` replaces key checking with your own (an async callable
    from the request to a tenant id). ``auth=False`` serves everyone as one tenant; only
    do that on 127.0.0.1. ``specs`` may also be a ready :class:`MoAServer`.

    ``cors``: origins whose pages may call the API (``["*"]`` for any; default
    ``MOA_CORS_ORIGINS``, else none). Request bodies are parsed as JSON whatever their
    content-type, as the reference server does. ``ui``: serve the run dashboard at
    ``/ui`` (same keys, as a login form and a cookie).

    The API description (``/openapi.json``, ``/docs``, ``/redoc``) needs a key like every
    other path unless ``public_docs``.
    """
    server = (
        specs
        if isinstance(specs, MoAServer)
        else create_server(
            specs, db_url=db_url, checkpointer=checkpointer, executor=executor, options=options
        )
    )
    authenticator = _authenticator(auth, api_keys, authenticate)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server:
            yield

    app = FastAPI(
        title=title,
        version=_version(),
        description="Mixture-of-Agents graphs served with the LangGraph Server API "
        "(langgraph-sdk, Agent Chat UI, LangGraph Studio).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.moa = server
    app.include_router(create_router(server, authenticate=authenticator, max_body=max_body))
    if ui:
        from langgraph_moa.server.ui import mount_ui

        mount_ui(app, server, authenticate=authenticator)
    add_browser_support(app, cors_origins(cors))
    _add_docs(app, None if public_docs else authenticator)
    return app


def _add_docs(app: FastAPI, authenticate: Authenticator | None) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc``, behind ``authenticate`` if given."""
    guard = [Depends(authenticate)] if authenticate is not None else []

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=guard)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="openapi.json", title=f"{app.title} - ReDoc")
