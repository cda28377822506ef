"""What browsers need from the API: CORS for pages on other origins, and JSON bodies
whatever their content-type.

CORS is off unless origins are named (``moa serve --cors-origin URL``, repeatable, or
``MOA_CORS_ORIGINS``, comma-separated; ``*`` allows any origin, as ``langgraph dev`` does).
A preflight is answered with the API's methods and the headers asked for (the JS SDK
sends ``x-api-key``, ``content-type`` and ``last-event-id``), and the responses expose the
headers the SDK reads (``Content-Location``, ``Location``, ``X-Pagination-*``).

Agent Chat UI's API passthrough forwards JSON as ``text/plain``: like the reference
server, the API parses every request body as JSON (the dashboard under ``/ui`` keeps its
form posts).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "CORS_METHODS",
    "EXPOSED_HEADERS",
    "JSONBodies",
    "add_browser_support",
    "cors_origins",
]

CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
EXPOSED_HEADERS = ("Content-Location", "Location", "X-Pagination-Next", "X-Pagination-Total")
FORM_PREFIXES = ("/ui",)
"""Paths whose form posts keep their content-type (the dashboard)."""


def cors_origins(origins: Iterable[str] | None = None) -> list[str]:
    """The allowed origins: ``origins`` if given, else ``MOA_CORS_ORIGINS``; trailing
    slashes dropped. Raises ``ValueError`` for an origin that is not ``*`` or a URL."""
    if origins is None:
        origins = (os.environ.get("MOA_CORS_ORIGINS") or "").split(",")
    found: list[str] = []
    for origin in (o.strip().rstrip("/") for o in origins):
        if not origin:
            continue
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(
                f"CORS origin {origin!r} must be '*' or a URL such as http://localhost:3000"
            )
        found.append(origin)
    return found


class JSONBodies:
    """ASGI middleware: API request bodies are JSON whatever their content-type."""

    def __init__(self, app: ASGIApp, form_prefixes: Iterable[str] = FORM_PREFIXES) -> None:
        self.app = app
        self.form_prefixes = tuple(form_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("POST", "PUT", "PATCH")
            and not scope["path"].startswith(self.form_prefixes)
        ):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def add_browser_support(app: FastAPI, origins: Iterable[str] = ()) -> None:
    """Parse API bodies as JSON and, when ``origins`` are given, answer CORS."""
    app.add_middleware(JSONBodies)
    allowed = list(origins)
    if allowed:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=allowed,
            allow_methods=list(CORS_METHODS),
            allow_headers=["*"],
            expose_headers=list(EXPOSED_HEADERS),
            max_age=600,
        )
