"""The FastAPI router of the LangGraph Server API, by resource (see ``router.py``)."""

from langgraph_moa.server.routes.router import DEFAULT_MAX_BODY, create_router

__all__ = ["DEFAULT_MAX_BODY", "create_router"]
