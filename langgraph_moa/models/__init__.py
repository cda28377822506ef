"""Chat-model resolution: spec entries to LangChain chat models.

The exports are imported on first use: ``langgraph_moa.models.settings`` (what ``moa models``
shows) does not load LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langgraph_moa.models.resolve import (
        DEFAULT_CONTEXT_WINDOW,
        DEFAULT_TIMEOUT,
        ModelConfigError,
        ModelResolver,
        resolve_model,
    )
    from langgraph_moa.models.settings import describe_default

_EXPORTS = {
    "DEFAULT_CONTEXT_WINDOW": "langgraph_moa.models.resolve",
    "DEFAULT_TIMEOUT": "langgraph_moa.models.resolve",
    "ModelConfigError": "langgraph_moa.models.resolve",
    "ModelResolver": "langgraph_moa.models.resolve",
    "describe_default": "langgraph_moa.models.settings",
    "resolve_model": "langgraph_moa.models.resolve",
}

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_TIMEOUT",
    "ModelConfigError",
    "ModelResolver",
    "describe_default",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    """Import an export on first use, so that importing a submodule stays light."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
