"""What the store's engines and the SQLAlchemy-free readers (:mod:`.quick_runs`) share:
nothing here imports SQLAlchemy."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "json_dumps", "json_loads"]

SQLITE_BUSY_TIMEOUT_MS = 60_000
"""How long a SQLite connection waits for another writer before giving up."""


def json_loads(value: Any) -> Any:
    """A JSON column's value, decoded (the engines' ``json_deserializer``)."""
    # SQLite gives a JSON column NUMERIC affinity: a bare number comes back as a number
    return value if isinstance(value, int | float) else orjson.loads(value)


def json_dumps(obj: Any) -> str:
    """A JSON column's value, encoded (the engines' ``json_serializer``)."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()
