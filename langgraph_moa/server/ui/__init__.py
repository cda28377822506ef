"""The run dashboard served by ``moa serve`` at ``/ui``: runs, a live run page (layers x
agents), approve/edit, cancel, resume, fork, start a run, chat on a thread.

Server-rendered with Jinja2; a few lines of plain JavaScript (``static/ui.js``) follow a
run over server-sent events. Logging in stores the API key in an HttpOnly, SameSite=Strict
cookie; each key sees its own tenant's runs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from langgraph_moa.server.auth import Authenticator
from langgraph_moa.server.service import MoAServer
from langgraph_moa.server.ui.routes import COOKIE, create_ui_router

__all__ = ["COOKIE", "create_ui_router", "mount_ui"]


def mount_ui(app: FastAPI, server: MoAServer, *, authenticate: Authenticator) -> None:
    """Serve the dashboard of ``server`` under ``/ui`` of ``app``."""
    app.mount(
        "/ui/static",
        StaticFiles(directory=str(Path(__file__).parent / "static")),
        name="moa-ui-static",
    )
    app.include_router(create_ui_router(server, authenticate=authenticate))
