"""The FastAPI router: the LangGraph Server API paths over a :class:`MoAServer`.

Paths, bodies, status codes and headers follow what ``langgraph-sdk`` sends and expects
(see ``docs``/``/openapi.json``). ``Location``/``Content-Location`` headers are relative
to the API root, which is how the SDK resolves them against its base URL, also when the
router is mounted under a prefix.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from langgraph.version import __version__ as langgraph_version
from sse_starlette import EventSourceResponse, ServerSentEvent

from langgraph_moa.server import serde
from langgraph_moa.server.auth import Authenticator
from langgraph_moa.server.events import StreamEvent
from langgraph_moa.server.schemas import (
    AssistantSearch,
    HistoryRequest,
    RunCreate,
    StateAtCheckpoint,
    StatelessRunCreate,
    StateUpdate,
    ThreadCreate,
    ThreadPatch,
    ThreadSearch,
)
from langgraph_moa.server.service import ACTIVE, ApiError, MoAServer

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
        """Enforces the body limit; turns :class:`ApiError` into ``{"detail": ...}`` and
        any other exception into a 500 without internals."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    if request.method in ("POST", "PUT", "PATCH"):
                        await _read_limited(request, max_body)
                    return await handler(request)
                except ApiError as exc:
                    return JSONResponse({"detail": exc.detail}, status_code=exc.status)
                except (HTTPException, RequestValidationError):
                    raise
                except Exception:
                    log.exception("request %s %s failed", request.method, request.url.path)
                    return JSONResponse({"detail": "Internal server error"}, status_code=500)

            return route

    return MoARoute


async def _read_limited(request: Request, limit: int) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
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

    Tenant = Annotated[str | None, Depends(tenant_of)]
    route_class = _route_class(max_body)
    router = APIRouter(route_class=route_class)
    heartbeat = server.options.heartbeat

    # ----------------------------------------------------------------- meta ---

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
                "crons": False,
                "langsmith": False,
                "langsmith_tracing_replicas": False,
                "strict_resume": True,
            },
            "host": {"kind": "langgraph-moa"},
            "compat": {"langgraph_sdk": "0.4", "langgraph_api": "0.16"},
        }

    # ----------------------------------------------------------- assistants ---

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

    # -------------------------------------------------------------- threads ---

    @router.post("/threads", tags=["threads"])
    async def create_thread(body: ThreadCreate, tenant: Tenant) -> dict[str, Any]:
        """Create a thread owned by the caller."""
        record = await server.create_thread(tenant, body)
        return await server.thread_json(record)

    @router.post("/threads/search", tags=["threads"])
    async def search_threads(body: ThreadSearch, tenant: Tenant) -> list[dict[str, Any]]:
        """The caller's threads, filtered by metadata, status and ids."""
        return await server.search_threads(tenant, body)

    @router.post("/threads/count", tags=["threads"])
    async def count_threads(body: ThreadSearch, tenant: Tenant) -> int:
        return await server.registry.count_threads(
            metadata=body.metadata, status=body.status, owner=tenant
        )

    @router.get("/threads/{thread_id}", tags=["threads"])
    async def get_thread(thread_id: str, tenant: Tenant) -> dict[str, Any]:
        return await server.thread_json(await server.thread(tenant, thread_id))

    @router.patch("/threads/{thread_id}", tags=["threads"], response_model=None)
    async def patch_thread(
        thread_id: str, body: ThreadPatch, tenant: Tenant, request: Request
    ) -> dict[str, Any] | Response:
        """Merge ``metadata`` into the thread's."""
        record = await server.patch_thread(tenant, thread_id, body.metadata)
        if request.headers.get("prefer") == "return=minimal":
            return Response(status_code=204)
        return await server.thread_json(record)

    @router.delete("/threads/{thread_id}", tags=["threads"], status_code=204)
    async def delete_thread(thread_id: str, tenant: Tenant) -> Response:
        """Delete a thread, its runs and its checkpoints."""
        await server.delete_thread(tenant, thread_id)
        return Response(status_code=204)

    @router.get("/threads/{thread_id}/state", tags=["threads"])
    async def get_state(thread_id: str, tenant: Tenant, subgraphs: str = "false") -> Any:
        """The thread's current state (``ThreadState``)."""
        return await server.get_state(tenant, thread_id, subgraphs=_flag(subgraphs))

    @router.get("/threads/{thread_id}/state/{checkpoint_id}", tags=["threads"])
    async def get_state_at(
        thread_id: str, checkpoint_id: str, tenant: Tenant, subgraphs: str = "false"
    ) -> Any:
        return await server.get_state(
            tenant, thread_id, {"checkpoint_id": checkpoint_id}, subgraphs=_flag(subgraphs)
        )

    @router.post("/threads/{thread_id}/state/checkpoint", tags=["threads"])
    async def get_state_at_post(thread_id: str, body: StateAtCheckpoint, tenant: Tenant) -> Any:
        state = await server.get_state(
            tenant, thread_id, body.checkpoint.model_dump(), subgraphs=body.subgraphs
        )
        if body.select:
            state = {k: v for k, v in state.items() if k in body.select}
        return state

    @router.post("/threads/{thread_id}/state", tags=["threads"])
    async def update_state(thread_id: str, body: StateUpdate, tenant: Tenant) -> Any:
        """Write values as if ``as_node`` had returned them (e.g. to approve or edit
        proposals before a synthesizer); returns the new checkpoint."""
        return await server.update_state(tenant, thread_id, body)

    @router.post("/threads/{thread_id}/history", tags=["threads"])
    async def history(thread_id: str, body: HistoryRequest, tenant: Tenant) -> Any:
        """Past states of the thread, newest first."""
        return await server.history(tenant, thread_id, body)

    @router.get("/threads/{thread_id}/history", tags=["threads"])
    async def history_get(
        thread_id: str,
        tenant: Tenant,
        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
        before: str | None = None,
    ) -> Any:
        return await server.history(tenant, thread_id, HistoryRequest(limit=limit, before=before))

    # ----------------------------------------------------------------- runs ---

    def locations(thread_id: str | None, run_id: str, tail: str) -> dict[str, str]:
        base = f"/threads/{thread_id}/runs/{run_id}" if thread_id else f"/runs/{run_id}"
        return {"Location": f"{base}{tail}", "Content-Location": base}

    @router.post("/threads/{thread_id}/runs", tags=["thread-runs"])
    async def create_run(thread_id: str, body: RunCreate, tenant: Tenant) -> JSONResponse:
        """Start a run in the background (queued behind the thread's active run with
        ``multitask_strategy="enqueue"``, the default)."""
        run, _ = await server.create_run(tenant, thread_id, body, subscribe=False)
        headers = {"Content-Location": f"/threads/{thread_id}/runs/{run.run_id}"}
        return JSONResponse(server.run_json(run), headers=headers)

    @router.post(
        "/threads/{thread_id}/runs/stream",
        tags=["thread-runs"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream_run(thread_id: str, body: RunCreate, tenant: Tenant) -> EventSourceResponse:
        """Start a run and stream its events (SSE): ``metadata`` first, then one event
        per chunk of each requested stream mode, ``error`` on failure."""
        run, events = await server.create_run(tenant, thread_id, body)
        return sse(
            run.run_id,
            events,
            body.stream_resumable,
            body.on_disconnect,
            locations(thread_id, run.run_id, "/stream"),
        )

    @router.post("/threads/{thread_id}/runs/wait", tags=["thread-runs"])
    async def wait_run(thread_id: str, body: RunCreate, tenant: Tenant) -> StreamingResponse:
        """Start a run and answer with its final values (newlines keep the connection
        alive meanwhile)."""
        run, events = await server.create_run(tenant, thread_id, body, stream_modes=["values"])
        return wait_body(
            run.run_id, events, body.on_disconnect, locations(thread_id, run.run_id, "/join")
        )

    @router.get("/threads/{thread_id}/runs", tags=["thread-runs"])
    async def list_runs(
        thread_id: str,
        tenant: Tenant,
        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
        offset: Annotated[int, Query(ge=0)] = 0,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        statuses = ("pending", "running", "error", "success", "timeout", "interrupted")
        if status is not None and status not in statuses:
            raise ApiError(422, f"Invalid status {status!r}; use one of {', '.join(statuses)}")
        runs = await server.list_runs(tenant, thread_id, limit=limit, offset=offset, status=status)
        return [server.run_json(r) for r in runs]

    @router.get("/threads/{thread_id}/runs/{run_id}", tags=["thread-runs"])
    async def get_run(thread_id: str, run_id: str, tenant: Tenant) -> dict[str, Any]:
        return server.run_json(await server.run(tenant, thread_id, run_id))

    @router.delete("/threads/{thread_id}/runs/{run_id}", tags=["thread-runs"], status_code=204)
    async def delete_run(thread_id: str, run_id: str, tenant: Tenant) -> Response:
        run = await server.run(tenant, thread_id, run_id)
        if run.status in ACTIVE:
            raise ApiError(409, "the run is still active; cancel it first")
        await server.registry.delete_run(run_id)
        await server.streams.delete([run_id])
        return Response(status_code=204)

    @router.get("/threads/{thread_id}/runs/{run_id}/join", tags=["thread-runs"])
    async def join_run(
        thread_id: str, run_id: str, tenant: Tenant, cancel_on_disconnect: str = "false"
    ) -> StreamingResponse:
        """Wait for a run to end; its final values."""
        run = await server.run(tenant, thread_id, run_id)
        on_disconnect = "cancel" if _flag(cancel_on_disconnect) else "continue"
        return wait_body(run.run_id, None, on_disconnect, locations(thread_id, run_id, "/join"))

    @router.get(
        "/threads/{thread_id}/runs/{run_id}/stream",
        tags=["thread-runs"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def join_stream(
        thread_id: str,
        run_id: str,
        request: Request,
        tenant: Tenant,
        cancel_on_disconnect: str = "false",
    ) -> EventSourceResponse:
        """Follow a run's events from now on; with ``Last-Event-ID`` (runs created with
        ``stream_resumable``) first replay the events after that id."""
        run = await server.run(tenant, thread_id, run_id)
        last = request.headers.get("last-event-id", "").strip()
        last_id = int(last) if last.isdigit() else None
        modes = _stream_modes(request.query_params.getlist("stream_mode"))
        events = server.streams.subscribe(
            run_id,
            last_event_id=last_id,
            is_active=lambda: server.is_active(run_id),
        )
        on_disconnect = "cancel" if _flag(cancel_on_disconnect) else "continue"
        resumable = bool(run.options.get("stream_resumable"))
        return sse(
            run_id,
            events,
            resumable,
            on_disconnect,
            locations(thread_id, run_id, "/stream"),
            modes=modes,
        )

    @router.post("/threads/{thread_id}/runs/{run_id}/cancel", tags=["thread-runs"])
    async def cancel_run(
        thread_id: str,
        run_id: str,
        tenant: Tenant,
        wait: str = "false",
        action: str = "interrupt",
    ) -> Response:
        """Stop a run (202). ``wait=1`` answers once it has stopped, with the thread's
        values."""
        run = await server.cancel_run(tenant, thread_id, run_id, action)
        if not _flag(wait):
            return Response(status_code=202)
        return wait_body(run.run_id, None, "continue", locations(thread_id, run_id, "/join"))

    @router.post(
        "/runs/stream",
        tags=["stateless-runs"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream_stateless(body: StatelessRunCreate, tenant: Tenant) -> EventSourceResponse:
        """A run on a thread of its own (deleted afterwards unless ``on_completion`` is
        ``keep``), streamed."""
        run, events = await server.create_run(tenant, None, body)
        return sse(
            run.run_id,
            events,
            body.stream_resumable,
            body.on_disconnect,
            locations(None, run.run_id, "/stream"),
        )

    @router.post("/runs/wait", tags=["stateless-runs"])
    async def wait_stateless(body: StatelessRunCreate, tenant: Tenant) -> StreamingResponse:
        """A run on a thread of its own, answered with its final values."""
        run, events = await server.create_run(tenant, None, body, stream_modes=["values"])
        return wait_body(
            run.run_id, events, body.on_disconnect, locations(run.thread_id, run.run_id, "/join")
        )

    # -------------------------------------------------------------- helpers ---

    def on_disconnect_cancel(run_id: str) -> None:
        task = asyncio.get_running_loop().create_task(server.cancel_if_active(run_id))
        _background.add(task)
        task.add_done_callback(_background.discard)

    def sse(
        run_id: str,
        events: AsyncIterator[StreamEvent] | None,
        resumable: bool,
        on_disconnect: str,
        headers: dict[str, str],
        modes: set[str] | None = None,
    ) -> EventSourceResponse:
        assert events is not None

        async def body() -> AsyncIterator[ServerSentEvent]:
            finished = False
            try:
                async for item in events:
                    if modes and not _wanted(item.event, modes):
                        continue
                    yield ServerSentEvent(
                        data=item.data.decode(),
                        event=item.event,
                        id=str(item.seq) if resumable else None,
                    )
                finished = True
            finally:
                if not finished and on_disconnect == "cancel":
                    on_disconnect_cancel(run_id)
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    task = asyncio.get_running_loop().create_task(aclose())
                    _background.add(task)
                    task.add_done_callback(_background.discard)

        return EventSourceResponse(
            body(),
            headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            ping=heartbeat,
            ping_message_factory=lambda: ServerSentEvent(comment="heartbeat"),
        )

    def wait_body(
        run_id: str,
        events: AsyncIterator[StreamEvent] | None,
        on_disconnect: str,
        headers: dict[str, str],
    ) -> StreamingResponse:
        async def consume() -> Any:
            last_values: Any = None
            if events is not None:
                async for item in events:
                    if item.event == "values":
                        last_values = item.data
            else:
                await server.wait_run(run_id)
            run = await server.registry.get_run(run_id)
            if run is None:  # a stateless run's thread is gone: its last values are all
                return serde.loads(last_values) if last_values is not None else {}
            if run.status == "success" and last_values is not None:
                return serde.loads(last_values)
            values = serde.loads(last_values) if last_values is not None else None
            return await server.result(run, values if run.status != "error" else None)

        async def body() -> AsyncIterator[bytes]:
            task = asyncio.get_running_loop().create_task(consume())
            finished = False
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=heartbeat)
                    if done:
                        break
                    yield b"\n"
                yield serde.dumps(task.result())
                finished = True
            finally:
                if not task.done():
                    task.cancel()
                if not finished and on_disconnect == "cancel":
                    on_disconnect_cancel(run_id)

        return StreamingResponse(body(), media_type="application/json", headers=headers)

    return router


_background: set[asyncio.Task[Any]] = set()


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _stream_modes(values: list[str]) -> set[str] | None:
    modes: set[str] = set()
    for value in values:
        value = value.strip()
        if not value or value == "None":
            continue
        if value.startswith("["):
            try:
                parsed = serde.loads(value)
            except ValueError:
                raise ApiError(422, f"Invalid stream_mode {value!r}") from None
            modes.update(str(m) for m in parsed)
        else:
            modes.add(value)
    if "messages-tuple" in modes:
        modes.add("messages")
    return modes or None


def _wanted(event: str, modes: set[str]) -> bool:
    base = event.split("|", 1)[0].split("/", 1)[0]
    return base in modes or base in ("metadata", "error")


def _state_schema(graph: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(graph.builder.state_schema).json_schema()
