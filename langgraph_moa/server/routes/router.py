"""The FastAPI router: the LangGraph Server API paths over a :class:`MoAServer`.

Paths, bodies, status codes and headers follow what ``langgraph-sdk`` sends and expects
(see ``docs``/``/openapi.json``). ``Location``/``Content-Location`` headers are relative
to the API root, which is how the SDK resolves them against its base URL, also when the
router is mounted under a prefix.

The paths live by resource: ``assistants.py``, ``threads.py``, ``runs.py`` (with the
streaming and waiting responses in ``responses.py``), ``store.py`` and ``protocol.py``
(the JS SDK's commands + events protocol); this module assembles them.
"""

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from langgraph.version import __version__ as langgraph_version
from starlette.exceptions import HTTPException as StarletteHTTPException

from langgraph_moa.server.auth import Authenticator
from langgraph_moa.server.routes.assistants import add_assistant_routes
from langgraph_moa.server.routes.crons import add_cron_routes
from langgraph_moa.server.routes.protocol import add_protocol_routes
from langgraph_moa.server.routes.runs import add_run_routes
from langgraph_moa.server.routes.store import add_store_routes
from langgraph_moa.server.routes.threads import add_thread_routes
from langgraph_moa.server.schemas import ERROR_RESPONSES
from langgraph_moa.server.service import ApiError, MoAServer
from langgraph_moa.server.validation import (
    DATABASE_UNAVAILABLE,
    RETRY_AFTER,
    check_body,
    check_path_ids,
)

__all__ = ["DEFAULT_MAX_BODY", "create_router"]

log = logging.getLogger("langgraph_moa.server")

DEFAULT_MAX_BODY = 1024 * 1024
"""Largest request body accepted, in bytes (413 above)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langgraph-moa")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def _route_class(max_body: int) -> type[APIRoute]:
    class MoARoute(APIRoute):
        """Enforces the body limit and the checks of :mod:`~langgraph_moa.server.validation`
        before the handler; turns :class:`ApiError` into ``{"detail": ...}``, an exhausted
        pool or unreachable database into a 503 with ``Retry-After``, and any other
        exception into a 500 without internals."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    check_path_ids(request.path_params)
                    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
                        await _read_limited(request, max_body)
                        parsed = check_body(request._body)
                        if parsed is not None:
                            request._json = parsed  # FastAPI reuses it
                    return await handler(request)
                except ApiError as exc:
                    return JSONResponse({"detail": exc.detail}, status_code=exc.status)
                except (StarletteHTTPException, RequestValidationError):
                    raise
                except DATABASE_UNAVAILABLE as exc:
                    log.warning(
                        "request %s %s: database unavailable: %s",
                        request.method,
                        request.url.path,
                        type(exc).__name__,
                    )
                    return JSONResponse(
                        {"detail": "the database is busy or unreachable; retry shortly"},
                        status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER)},
                    )
                except Exception:
                    log.exception("request %s %s failed", request.method, request.url.path)
                    return JSONResponse({"detail": "Internal server error"}, status_code=500)

            return route

    return MoARoute


async def _read_limited(request: Request, limit: int) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")
    request._body = bytes(body)


def create_router(
    server: MoAServer,
    *,
    authenticate: Authenticator,
    max_body: int = DEFAULT_MAX_BODY,
) -> APIRouter:
    """The API over ``server``; ``authenticate`` resolves each request to its tenant.

    Mount it with ``app.include_router(router, prefix="/moa")`` and run ``server``
    (``async with server:``) in the application's lifespan.
    """
    api_key = APIKeyHeader(name="x-api-key", auto_error=False, description="An API key.")
    bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")

    async def tenant_of(
        request: Request,
        _key: Annotated[str | None, Security(api_key)],
        _bearer: Annotated[Any, Security(bearer)],
    ) -> str | None:
        return await authenticate(request)

    route_class = _route_class(max_body)
    router = APIRouter(route_class=route_class, responses=ERROR_RESPONSES)

    add_meta_routes(router)
    add_assistant_routes(router, server, tenant_of)
    add_thread_routes(router, server, tenant_of)
    add_run_routes(router, server, tenant_of)
    add_cron_routes(router, server, tenant_of)
    add_store_routes(router, server, tenant_of)
    add_protocol_routes(router, server, tenant_of)
    return router


def add_meta_routes(router: APIRouter) -> None:
    """``/ok`` and ``/info``."""

    @router.get("/ok", tags=["meta"])
    async def ok() -> dict[str, bool]:
        """Liveness: 200 while the server runs."""
        return {"ok": True}

    @router.get("/info", tags=["meta"])
    async def info() -> dict[str, Any]:
        """Versions and what this server offers."""
        return {
            "version": _version(),
            "langgraph_py_version": langgraph_version,
            "flags": {
                "assistants": True,
                "crons": True,
                "langsmith": False,
                "langsmith_tracing_replicas": False,
                "strict_resume": True,
            },
            "host": {"kind": "langgraph-moa"},
            "compat": {"langgraph_sdk": "0.4", "langgraph_api": "0.16"},
        }
