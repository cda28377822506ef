"""What the route modules share: how run endpoints answer (an SSE stream of a run's events,
or its final values with keep-alive newlines while it runs), the tenant dependency's type, and
small parsers of query values."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from langgraph_moa.server import serde
from langgraph_moa.server.events import StreamEvent
from langgraph_moa.server.service import ApiError, MoAServer

__all__ = ["RunResponses", "TenantOf", "flag", "locations", "stream_modes"]

# Route modules have no ``from __future__ import annotations``: FastAPI reads each handler's
# annotations, and ``Tenant`` is an alias local to the ``add_*_routes`` function.
TenantOf = Callable[..., Awaitable[str | None]]


def locations(thread_id: str | None, run_id: str, tail: str) -> dict[str, str]:
    """``Location``/``Content-Location`` headers of a run's ``tail`` path."""
    base = f"/threads/{thread_id}/runs/{run_id}" if thread_id else f"/runs/{run_id}"
    return {"Location": f"{base}{tail}", "Content-Location": base}


class RunResponses:
    """Streaming and waiting responses for the runs of ``server``."""

    def __init__(self, server: MoAServer) -> None:
        self.server = server
        self.heartbeat = server.options.heartbeat

    def on_disconnect_cancel(self, run_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.server.cancel_if_active(run_id))
        _background.add(task)
        task.add_done_callback(_background.discard)

    def sse(
        self,
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
                    self.on_disconnect_cancel(run_id)
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    task = asyncio.get_running_loop().create_task(aclose())
                    _background.add(task)
                    task.add_done_callback(_background.discard)

        return EventSourceResponse(
            body(),
            headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            ping=self.heartbeat,
            ping_message_factory=lambda: ServerSentEvent(comment="heartbeat"),
        )

    def wait_body(
        self,
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
                await self.server.wait_run(run_id)
            run = await self.server.registry.get_run(run_id)
            if run is None:  # a stateless run's thread is gone: its last values are all
                return serde.loads(last_values) if last_values is not None else {}
            if run.status == "success" and last_values is not None:
                return serde.loads(last_values)
            values = serde.loads(last_values) if last_values is not None else None
            return await self.server.result(run, values if run.status != "error" else None)

        async def body() -> AsyncIterator[bytes]:
            task = asyncio.get_running_loop().create_task(consume())
            finished = False
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=self.heartbeat)
                    if done:
                        break
                    yield b"\n"
                yield serde.dumps(task.result())
                finished = True
            finally:
                if not task.done():
                    task.cancel()
                if not finished and on_disconnect == "cancel":
                    self.on_disconnect_cancel(run_id)

        return StreamingResponse(body(), media_type="application/json", headers=headers)


_background: set[asyncio.Task[Any]] = set()


def flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def stream_modes(values: list[str]) -> set[str] | None:
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
