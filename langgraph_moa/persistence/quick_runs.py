"""`moa runs` on a SQLite store without SQLAlchemy: the same rows, read with ``sqlite3``.

Importing SQLAlchemy (with its asyncio extension, the ORM it pulls in and the dialects
the registry's tables name) is most of a ``moa runs`` process; listing runs needs one
``SELECT``. :func:`list_runs` reads ``moa_runs`` of an existing SQLite file whose schema
this code already knows (the registry and call-ledger components at exactly the versions
of :mod:`.migrations`, so :meth:`RunRegistry.setup` would change nothing) with the
statement :meth:`RunRegistry.list_runs` sends, and decodes the columns as the
registry's engine does (JSON through :func:`._plain.json_loads`, times with
``datetime.fromisoformat`` as SQLAlchemy's SQLite ``DATETIME``). The columns are the
fields of :class:`.RunRecord`, the JSON and time columns :data:`.RUN_JSON_COLUMNS` and
:data:`.RUN_TIME_COLUMNS`, the same names the registry's table is checked against
(tests/test_cli_startup.py also checks both paths return the same records).

Anything else returns None and the caller takes the registry: another database, a URL
with options, a missing file (the registry creates it), a schema to create, migrate or
newer than this code, any SQLite error (the registry reports it its way).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from langgraph_moa.persistence._plain import SQLITE_BUSY_TIMEOUT_MS, json_loads
from langgraph_moa.persistence.run_records import (
    RUN_JSON_COLUMNS,
    RUN_STATUSES,
    RUN_TIME_COLUMNS,
    RunRecord,
    run_columns,
)

__all__ = ["SCHEMA", "list_runs", "sqlite_path"]

SCHEMA = {"registry": 2, "calls": 3}
"""The component versions :meth:`RunRegistry.setup` brings a store to (checked against
``migrations.schema_version`` by the tests)."""

_SCHEMES = ("sqlite", "sqlite+pysqlite", "sqlite+aiosqlite")


def sqlite_path(url: str) -> str | None:
    """The file of a plain SQLite URL (``sqlite:///moa.sqlite``), or None for any other
    URL, and for an in-memory database, a URI filename or a URL with options or escapes
    (SQLAlchemy parses those)."""
    url = url.strip()
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme not in _SCHEMES or not rest:
        return None
    if rest == ":memory:" or rest.startswith(("file:", "//")) or any(c in rest for c in "?#%"):
        return None
    return rest


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def list_runs(
    url: str,
    *,
    thread_id: str | None = None,
    status: str | Sequence[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[RunRecord] | None:
    """Runs, newest first, as :meth:`RunRegistry.list_runs`; None when this store is not
    one to read here (see the module docstring)."""
    path = sqlite_path(url)
    if path is None or not os.path.isfile(path):
        return None
    statuses = None if status is None else [status] if isinstance(status, str) else list(status)
    if statuses is not None and any(s not in RUN_STATUSES for s in statuses):
        return None  # the registry says which
    columns = run_columns()
    query = f"SELECT {', '.join(columns)} FROM moa_runs"
    where: list[str] = []
    args: list[Any] = []
    if thread_id is not None:
        where.append("thread_id = ?")
        args.append(thread_id)
    if statuses is not None:
        where.append(f"status IN ({', '.join('?' * len(statuses))})")
        args.extend(statuses)
    if where:
        query += " WHERE " + " AND ".join(where)
    query += " ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?"
    args += [limit, offset]
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=rw", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error:
        return None
    try:
        conn.isolation_level = None
        conn.execute("BEGIN")  # one snapshot for the schema check and the rows
        versions = dict(
            conn.execute(
                "SELECT component, MAX(version) FROM moa_schema_migrations "
                "WHERE component IN ('registry', 'calls') GROUP BY component"
            ).fetchall()
        )
        if versions != SCHEMA:
            return None
        rows = conn.execute(query, args).fetchall()
        conn.execute("COMMIT")
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    json_at = [i for i, c in enumerate(columns) if c in RUN_JSON_COLUMNS]
    time_at = [i for i, c in enumerate(columns) if c in RUN_TIME_COLUMNS]
    records = []
    try:
        for row in rows:
            values = list(row)
            for i in json_at:
                if values[i] is not None:
                    values[i] = json_loads(values[i])
            for i in time_at:
                values[i] = _time(values[i])
            data = dict(zip(columns, values, strict=True))
            data["usage"] = data["usage"] or {}
            data["metadata"] = data["metadata"] or {}
            data["options"] = data["options"] or {}
            records.append(RunRecord(**data))
    except (ValueError, TypeError):
        return None  # a value the registry's engine would decode (or reject) its way
    return records
