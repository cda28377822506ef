"""Chat-model resolution: spec entries to LangChain chat models."""

from langgraph_moa.models.resolve import (
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_TIMEOUT,
    ModelConfigError,
    ModelResolver,
    describe_default,
    resolve_model,
)

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_TIMEOUT",
    "ModelConfigError",
    "ModelResolver",
    "describe_default",
    "resolve_model",
]
