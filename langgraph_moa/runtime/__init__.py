"""Run, resume and stream specs; progress views; workers.

The exports are imported on first use: ``langgraph_moa.runtime.store`` (say) does not load
LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langgraph_moa.runtime.api import MoA, RunResult, arun, run
    from langgraph_moa.runtime.store import default_db_url, open_checkpointer, resolve_db_url

_EXPORTS = {
    "MoA": "langgraph_moa.runtime.api",
    "RunResult": "langgraph_moa.runtime.api",
    "arun": "langgraph_moa.runtime.api",
    "run": "langgraph_moa.runtime.api",
    "default_db_url": "langgraph_moa.runtime.store",
    "open_checkpointer": "langgraph_moa.runtime.store",
    "resolve_db_url": "langgraph_moa.runtime.store",
}

__all__ = [
    "MoA",
    "RunResult",
    "arun",
    "default_db_url",
    "open_checkpointer",
    "resolve_db_url",
    "run",
]


def __getattr__(name: str) -> Any:
    """Import an export on first use, so that importing a submodule stays light."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
