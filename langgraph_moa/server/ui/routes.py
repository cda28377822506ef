"""The dashboard's pages and actions; every action goes through :class:`MoAServer`'s
service methods, as the API's routes do."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from langchain_core.messages import BaseMessage, convert_to_messages
from langgraph.graph.state import CompiledStateGraph
from sse_starlette.sse import EventSourceResponse

from langgraph_moa.runtime import MoA
from langgraph_moa.server.auth import Authenticator
from langgraph_moa.server.schemas import RunCreate, ThreadCreate
from langgraph_moa.server.service import ApiError, MoAServer
from langgraph_moa.server.ui.views import ACTIVE, RunRow, RunView, run_row, run_view
from langgraph_moa.server.validation import check_path_ids
from langgraph_moa.spec import GraphSpec

__all__ = ["COOKIE", "create_ui_router"]

COOKIE = "moa_key"
HERE = Path(__file__).parent
STATUSES = ("pending", "running", "success", "error", "interrupted", "cancelled")
LIST_ROWS, LIST_PAGE = 100, 500
LIVE_POLL = 1.0
"""Seconds between refreshes of a live view when no event of the run arrived."""


async def _form(request: Request, limit: int = 1024 * 1024) -> dict[str, str]:
    """The fields of a posted form (an :class:`ApiError` 413 past ``limit`` bytes)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the form is larger than {limit} bytes")
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _with_key(request: Request, key: str) -> Request:
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"x-api-key"]
    headers.append((b"x-api-key", key.encode("latin-1", "replace")))
    return Request({**request.scope, "headers": headers})


class _Login(Exception):
    """The request has no valid key: show the login form."""


def create_ui_router(server: MoAServer, *, authenticate: Authenticator) -> APIRouter:
    """The dashboard under ``/ui``: runs, run pages (live), start, chat, login."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["secs"] = lambda s: "" if s is None else f"{s:.1f}s"
    router = APIRouter(prefix="/ui", include_in_schema=False)

    async def tenant_of(request: Request) -> str | None:
        key = request.cookies.get(COOKIE)
        try:
            return await authenticate(_with_key(request, key) if key else request)
        except HTTPException as exc:
            raise _Login() from exc

    def page(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=code)

    def guarded(
        handler: Callable[..., Awaitable[Response]],
    ) -> Callable[..., Awaitable[Response]]:
        """Resolve the tenant (else the login page); check a POST's origin; turn a
        service error into a page."""

        async def wrapper(request: Request, **kwargs: Any) -> Response:
            if request.method == "POST" and not _same_origin(request):
                return page(request, "error.html", 403, message="cross-origin form refused")
            try:
                tenant = await tenant_of(request)
            except _Login:
                return RedirectResponse("/ui/login", status_code=303)
            try:
                check_path_ids(request.path_params)  # the API's id rules, as a page
                return await handler(request, tenant, **kwargs)
            except ApiError as exc:
                return page(request, "error.html", exc.status, message=exc.detail)

        return wrapper

    # ------------------------------------------------------------- login ---

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        return page(request, "login.html", error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return page(request, "error.html", 403, message="cross-origin form refused")
        try:
            key = (await _form(request, 4096)).get("key", "").strip()
        except ApiError as exc:
            return page(request, "login.html", exc.status, error=exc.detail)
        try:
            await authenticate(_with_key(request, key))
        except HTTPException:
            return page(request, "login.html", 401, error="That key is not valid.")
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(
            COOKIE,
            key,
            httponly=True,
            samesite="strict",
            path="/ui",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # -------------------------------------------------------------- runs ---

    @router.get("")
    async def runs_page(request: Request) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            status = request.query_params.get("status") or None
            spec = request.query_params.get("spec") or None
            rows: list[RunRow] = []
            for offset in range(0, 20 * LIST_PAGE, LIST_PAGE):  # the tenant's newest 100
                found = await server.registry.list_runs(
                    status=status if status in STATUSES else None,  # type: ignore[arg-type]
                    limit=LIST_PAGE,
                    offset=offset,
                )
                rows += [
                    run_row(r)
                    for r in found
                    if (tenant is None or r.options.get("tenant") == tenant)
                    and (spec is None or r.spec_name == spec)
                ]
                if len(found) < LIST_PAGE or len(rows) >= LIST_ROWS:
                    break
            return page(
                request,
                "runs.html",
                rows=rows[:LIST_ROWS],
                statuses=STATUSES,
                specs=sorted(server.assistants),
                status=status,
                spec=spec,
            )

        return await guarded(handler)(request)

    async def load(tenant: str | None, thread_id: str, run_id: str) -> RunView:
        run = await server.run(tenant, thread_id, run_id)
        graph, spec = _graph_and_spec(server, run.options.get("graph_id") or run.spec_name)
        if run.spec:
            spec = GraphSpec.model_validate(run.spec)
        config = MoA.config(thread_id)
        snapshot = await graph.aget_state(config)
        if (snapshot.metadata or {}).get("run_id") != run_id:
            own = [s async for s in graph.aget_state_history(config, filter={"run_id": run_id})]
            if own:
                snapshot = own[0]
            else:
                return run_view(run, spec, {})
        interrupts = [i.value for i in snapshot.interrupts]
        return run_view(run, spec, snapshot.values or {}, snapshot.tasks, interrupts)

    @router.get("/runs/{thread_id}/{run_id}")
    async def run_page(request: Request, thread_id: str, run_id: str) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            view = await load(tenant, thread_id, run_id)
            return page(request, "run.html", view=view)

        return await guarded(handler)(request)

    @router.get("/runs/{thread_id}/{run_id}/live")
    async def run_live(request: Request, thread_id: str, run_id: str) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            await server.run(tenant, thread_id, run_id)  # 404 for someone else's run
            body = templates.get_template("run_body.html")

            async def events() -> AsyncIterator[dict[str, str]]:
                changed = asyncio.Event()
                watcher = asyncio.create_task(_watch(server, run_id, changed))
                last = ""
                try:
                    while True:
                        view = await load(tenant, thread_id, run_id)
                        html = body.render(view=view)
                        if html != last:
                            last = html
                            data = {"status": view.status, "html": html}
                            yield {"event": "view", "data": json.dumps(data)}
                        if not view.active:
                            yield {"event": "end", "data": view.status}
                            return
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), LIVE_POLL)
                        changed.clear()
                finally:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)

            return EventSourceResponse(events(), ping=15)

        return await guarded(handler)(request)

    @router.post("/runs/{thread_id}/{run_id}/{action}")
    async def run_action(request: Request, thread_id: str, run_id: str, action: str) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            form = await _form(request)
            run = await server.run(tenant, thread_id, run_id)
            assistant = str(run.options.get("graph_id") or run.spec_name or "")
            target = thread_id
            if action == "cancel":
                await server.cancel_run(tenant, thread_id, run_id, "interrupt")
                return RedirectResponse(f"/ui/runs/{thread_id}/{run_id}", status_code=303)
            if action == "approve":
                edits = {
                    k.removeprefix("proposal:"): v
                    for k, v in form.items()
                    if k.startswith("proposal:")
                }
                view = await load(tenant, thread_id, run_id)
                changed = {a: t for a, t in edits.items() if view.editable.get(a) != t}
                value: Any = {"proposals": changed} if changed else True
                body = RunCreate(assistant_id=assistant, command={"resume": value})  # type: ignore[arg-type]
            elif action == "resume":
                body = RunCreate(assistant_id=assistant, input=None)
            elif action == "fork":
                start = await _start_checkpoint(server, assistant, thread_id, run_id)
                body = RunCreate(assistant_id=assistant, input=run.input, checkpoint_id=start)
                if start is None:  # the thread's first turn: fork into a new thread
                    target = (await server.create_thread(tenant, ThreadCreate())).thread_id
            else:
                raise ApiError(404, f"unknown action {action!r}")
            new, _ = await server.create_run(tenant, target, body, subscribe=False)
            return RedirectResponse(f"/ui/runs/{target}/{new.run_id}", status_code=303)

        return await guarded(handler)(request)

    # ------------------------------------------------------- start, chat ---

    @router.get("/new")
    async def new_form(request: Request) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            return page(request, "new.html", assistants=sorted(server.assistants))

        return await guarded(handler)(request)

    @router.post("/new")
    async def new_run(request: Request) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            form = await _form(request)
            task = form.get("task", "").strip()
            if not task:
                raise ApiError(422, "give a task")
            assistant = server.assistant(form.get("assistant", ""), for_run=True)
            thread = await server.create_thread(tenant, ThreadCreate())
            run, _ = await server.create_run(
                tenant,
                thread.thread_id,
                RunCreate(assistant_id=assistant.graph_id, input={"task": task}),
                subscribe=False,
            )
            return RedirectResponse(f"/ui/runs/{run.thread_id}/{run.run_id}", status_code=303)

        return await guarded(handler)(request)

    @router.get("/chat")
    async def chat_new(request: Request) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            return page(
                request,
                "chat.html",
                thread_id=None,
                messages=[],
                live=None,
                assistants=sorted(server.assistants),
                assistant=None,
            )

        return await guarded(handler)(request)

    @router.get("/threads/{thread_id}")
    async def chat_page(request: Request, thread_id: str) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            record = await server.thread(tenant, thread_id)
            graph, _ = _graph_and_spec(server, record.spec_name)
            snapshot = await graph.aget_state(MoA.config(thread_id))
            messages = _chat_lines((snapshot.values or {}).get("messages") or [])
            runs = await server.list_runs(tenant, thread_id, limit=1, offset=0, status=None)
            latest = runs[0] if runs else None
            live = (
                f"/ui/runs/{thread_id}/{latest.run_id}/live"
                if latest is not None and latest.status in ACTIVE
                else None
            )
            return page(
                request,
                "chat.html",
                thread_id=thread_id,
                messages=messages,
                live=live,
                latest=latest,
                assistants=sorted(server.assistants),
                assistant=record.spec_name,
            )

        return await guarded(handler)(request)

    @router.post("/chat")
    async def chat_send(request: Request) -> Response:
        async def handler(request: Request, tenant: str | None) -> Response:
            form = await _form(request)
            text = form.get("message", "").strip()
            if not text:
                raise ApiError(422, "write a message")
            thread_id = form.get("thread_id") or None
            assistant = server.assistant(form.get("assistant", ""), for_run=True)
            if thread_id is None:
                thread_id = (await server.create_thread(tenant, ThreadCreate())).thread_id
            message = {"type": "human", "content": text}
            body = RunCreate(assistant_id=assistant.graph_id, input={"messages": [message]})
            await server.create_run(tenant, thread_id, body, subscribe=False)
            return RedirectResponse(f"/ui/threads/{thread_id}", status_code=303)

        return await guarded(handler)(request)

    @router.get("/", include_in_schema=False)
    async def slash() -> Response:
        return RedirectResponse("/ui", status_code=307)

    return router


def _same_origin(request: Request) -> bool:
    """A form post from this server's own pages (the cookie is SameSite too)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _graph_and_spec(server: MoAServer, name: Any) -> tuple[CompiledStateGraph, GraphSpec]:
    assistant = server.assistants.get(str(name or "")) or next(iter(server.assistants.values()))
    return assistant.graph, assistant.spec


async def _watch(server: MoAServer, run_id: str, changed: asyncio.Event) -> None:
    """Set ``changed`` at every event the run publishes (the live view then refreshes)."""
    streams = getattr(server, "streams", None)
    if streams is None:
        return
    with contextlib.suppress(Exception):
        async for _ in streams.subscribe(run_id, is_active=lambda: server.is_active(run_id)):
            changed.set()


async def _start_checkpoint(
    server: MoAServer, assistant: str, thread_id: str, run_id: str
) -> str | None:
    """The checkpoint a run started from (the parent of its first checkpoint); None for
    the first run of a thread."""
    graph, _ = _graph_and_spec(server, assistant)
    own = [
        s async for s in graph.aget_state_history(MoA.config(thread_id), filter={"run_id": run_id})
    ]
    if not own:
        raise ApiError(409, "this run wrote no checkpoint to fork from")
    parent = own[-1].parent_config
    return None if parent is None else str(parent["configurable"]["checkpoint_id"])


def _chat_lines(messages: list[Any]) -> list[tuple[str, str]]:
    """``(role, text)`` of a thread's human and AI messages."""
    out: list[tuple[str, str]] = []
    converted: list[BaseMessage] = convert_to_messages(messages)
    for message in converted:
        if message.type in ("human", "ai") and message.text:
            out.append((message.type, message.text))
    return out
