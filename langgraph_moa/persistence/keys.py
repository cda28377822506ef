"""Config keys that the graph's nodes and the stores share, importable without SQLAlchemy
(a graph is built and drawn without a store)."""

from __future__ import annotations

__all__ = ["CALLS_KEY"]

CALLS_KEY = "__moa_calls__"
"""``config["configurable"]`` key of the run's call ledger (a
:class:`~langgraph_moa.persistence.calls.RunCalls`, or a replay's source of answers), read by
every model call of the graph."""
