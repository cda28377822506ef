"""The HTTP service: the LangGraph Server API over MoA specs, the run registry and the
SQL checkpointer.

* :func:`create_app` returns the FastAPI application (what ``moa serve`` runs);
* :func:`create_router` returns the router alone, for a host application to mount
  (run the :class:`MoAServer` in the host's lifespan);
* :class:`RunExecutor` is where runs execute: :class:`InProcessExecutor` (asyncio tasks
  of the server, the default) or workers in other processes.

Needs the ``server`` extra: ``pip install 'langgraph-moa[server]'``.
"""

from langgraph_moa.server.app import create_app, create_server
from langgraph_moa.server.auth import KeyAuth, NoAuth, load_api_keys, tenant_of
from langgraph_moa.server.executor import InProcessExecutor, RunExecutor, RunHandler
from langgraph_moa.server.routes import create_router
from langgraph_moa.server.service import ApiError, MoAServer, ServerOptions

__all__ = [
    "ApiError",
    "InProcessExecutor",
    "KeyAuth",
    "MoAServer",
    "NoAuth",
    "RunExecutor",
    "RunHandler",
    "ServerOptions",
    "create_app",
    "create_router",
    "create_server",
    "load_api_keys",
    "tenant_of",
]
