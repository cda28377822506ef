"""The API's one validation layer: what every request must satisfy before anything runs.

* **Ids in paths.** ``thread_id`` matches :data:`ID_PATTERN` (ASCII letters, digits and
  ``._:-``, at most 255 characters; UUIDs do); a thread is *created* only with a UUID, as
  in LangGraph Server. ``run_id`` is a UUID. ``checkpoint_id`` matches :data:`ID_PATTERN`
  and must exist (else 404). Anything else is a 422 before the request reaches a handler.
* **JSON bodies.** Nested at most :data:`MAX_JSON_DEPTH` levels; integers within 64 bits;
  no ``NaN``/``Infinity``; strings and keys without NUL characters or lone surrogates.
  Metadata keys also without ``"`` or ``\\`` (they become JSON paths in searches).
* **Sizes.** Metadata at most :data:`MAX_METADATA_BYTES` of JSON per thread and per run,
  counting what was stored before (a PATCH merges). Offsets and limits below 2**63.
* **The database.** A full connection pool or an unreachable database answers 503 with
  ``Retry-After``, never 500.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy import exc as sa_exc

from langgraph_moa.server.core import ApiError

__all__ = [
    "DATABASE_UNAVAILABLE",
    "ID_PATTERN",
    "MAX_INT",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_BYTES",
    "RETRY_AFTER",
    "check_body",
    "check_metadata",
    "check_path_ids",
    "check_uuid",
    "metadata_problem",
    "metadata_size",
    "require_checkpoint",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$"
"""Thread and checkpoint ids in paths (UUIDs match)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays in a request body."""
MAX_INT = 2**63 - 1
"""Largest integer (and offset or limit) a request may carry."""
MAX_METADATA_BYTES = 64 * 1024
"""Most JSON bytes of metadata a thread or a run holds (cumulative)."""
RETRY_AFTER = 1
"""Seconds a client is asked to wait when the database is busy or unreachable."""
DATABASE_UNAVAILABLE = (
    sa_exc.TimeoutError,  # the connection pool is exhausted
    sa_exc.OperationalError,  # unreachable, restarting, locked
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
)
"""Database errors that mean "try again later" (503), not a bad request or a bug."""

_ID = re.compile(ID_PATTERN)
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_BAD_KEY_CHARS = re.compile('["\\\\\x00-\x1f\ud800-\udfff]')


def check_uuid(value: str, what: str) -> str:
    """``value`` if it is a UUID, else a 422 naming ``what``."""
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise ApiError(422, f"{what} must be a UUID, got {_shown(value)}") from None
    return value


def check_path_ids(params: Mapping[str, Any]) -> None:
    """422 for a malformed id among a request's path parameters."""
    for name in ("thread_id", "checkpoint_id"):
        value = params.get(name)
        if value is not None and not _ID.fullmatch(value):
            raise ApiError(
                422,
                f"{name} {_shown(value)} is not a valid id: use a UUID, or 1-255 ASCII "
                "letters, digits and . _ : -",
            )
    for name in ("run_id", "cron_id"):
        value = params.get(name)
        if value is not None:
            check_uuid(value, name)


def check_body(raw: bytes) -> Any:
    """The parsed JSON body if it is within the limits above, else a 422 naming the place.
    Returns ``None`` for a body that is not JSON (FastAPI reports that itself)."""
    if not raw.strip():
        return None
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(422, f"body: JSON nested more than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise ApiError(422, "body: not UTF-8 text; send JSON encoded as UTF-8") from None
    except ValueError as exc:
        if isinstance(exc, _ConstantError):
            raise ApiError(422, f"body: {exc}") from None
        return None
    _check_value(data)
    return data


class _ConstantError(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _ConstantError(f"{name} is not a JSON number; send a finite number or null")


def _check_value(data: Any) -> None:
    stack: list[tuple[Any, str, int]] = [(data, "body", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ApiError(422, f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_string(key, f"{where}: key {_shown(key)}")
                    stack.append((item, f"{where}.{key[:40]}", depth + 1))
            else:
                stack.extend((item, f"{where}.{i}", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_string(value, where)
        elif isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT:
            raise ApiError(422, f"{where}: integer outside the 64-bit range")


def _check_string(value: str, where: str) -> None:
    found = _BAD_CHARS.search(value)
    if found:
        what = "a NUL character" if found.group() == "\x00" else "a lone surrogate"
        raise ApiError(422, f"{where}: contains {what}; send valid UTF-8 text")


async def require_checkpoint(
    checkpointer: BaseCheckpointSaver[Any] | None, thread_id: str, checkpoint_id: str | None
) -> None:
    """404 unless ``checkpoint_id`` (if given) is a checkpoint of ``thread_id``."""
    if not checkpoint_id or checkpointer is None:
        return
    found = None
    if _ID.fullmatch(checkpoint_id):
        config: RunnableConfig = {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": "",
                "checkpoint_id": checkpoint_id,
            }
        }
        found = await checkpointer.aget_tuple(config)
    if found is None:
        raise ApiError(404, f"Checkpoint {_shown(checkpoint_id)} not found in thread {thread_id}")


def metadata_size(metadata: Mapping[str, Any] | None) -> int:
    """Bytes of ``metadata`` as compact JSON."""
    if not metadata:
        return 0
    return len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())


def metadata_problem(metadata: Mapping[str, Any] | None, what: str) -> str | None:
    """What is wrong with ``metadata`` (a key, or its size over
    :data:`MAX_METADATA_BYTES`), or None."""
    for key in metadata or {}:
        if not isinstance(key, str) or not key or _BAD_KEY_CHARS.search(key):
            return (
                f"{what} key {_shown(key)}: keys are non-empty and without quotes, "
                "backslashes or control characters"
            )
    size = metadata_size(metadata)
    if size > MAX_METADATA_BYTES:
        return (
            f"{what} would be {size} bytes of JSON; at most {MAX_METADATA_BYTES} (what is "
            "stored and what is added count together)"
        )
    return None


def check_metadata(metadata: Mapping[str, Any] | None, what: str) -> None:
    """422 if :func:`metadata_problem` finds something."""
    problem = metadata_problem(metadata, what)
    if problem is not None:
        raise ApiError(422, problem)


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
