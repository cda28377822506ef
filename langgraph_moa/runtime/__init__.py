"""Run, resume and stream specs; progress views; workers."""

from langgraph_moa.runtime.api import MoA, RunResult, arun, run
from langgraph_moa.runtime.store import default_db_url, open_checkpointer, resolve_db_url

__all__ = [
    "MoA",
    "RunResult",
    "arun",
    "default_db_url",
    "open_checkpointer",
    "resolve_db_url",
    "run",
]
