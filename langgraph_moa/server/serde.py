"""JSON on the wire: orjson with LangChain/LangGraph objects, and state snapshots as the
LangGraph Server API shapes them (``ThreadState``, ``Checkpoint``, ``Interrupt``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
from langchain_core.runnables import RunnableConfig
from langgraph.types import Interrupt, Send, StateSnapshot

__all__ = [
    "checkpoint_of",
    "dumps",
    "interrupt_json",
    "jsonable",
    "loads",
    "select_state",
    "snapshot_json",
]


def _default(obj: Any) -> Any:
    if isinstance(obj, Send):
        return {"node": obj.node, "arg": obj.arg}
    if hasattr(obj, "model_dump") and not isinstance(obj, type):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, set | frozenset):
        return list(obj)
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__, "message": str(obj)}
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    return repr(obj)


_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(obj: Any) -> bytes:
    """``obj`` as JSON bytes; objects JSON cannot hold become their dict or ``repr``."""
    return orjson.dumps(obj, default=_default, option=_OPTS)


def loads(data: bytes | str) -> Any:
    """Parse JSON (never anything else: untrusted data is never unpickled)."""
    return orjson.loads(data)


def jsonable(obj: Any) -> Any:
    """``obj`` reduced to plain JSON types (dicts, lists, strings, numbers)."""
    return loads(dumps(obj))


def interrupt_json(interrupt: Interrupt) -> dict[str, Any]:
    """An interrupt as the SDK's ``Interrupt`` TypedDict: ``{value, id[, response_schema]}``."""
    out = {"value": interrupt.value, "id": interrupt.id}
    schema = getattr(interrupt, "response_schema", None)
    if schema is not None:
        out["response_schema"] = schema
    return out


def checkpoint_of(config: RunnableConfig | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``Checkpoint`` object of a checkpoint config (``None`` without a checkpoint id)."""
    configurable = (config or {}).get("configurable") or {}
    if not configurable.get("thread_id") or not configurable.get("checkpoint_id"):
        return None
    checkpoint = {
        "thread_id": str(configurable["thread_id"]),
        "checkpoint_ns": configurable.get("checkpoint_ns") or "",
        "checkpoint_id": configurable["checkpoint_id"],
    }
    if configurable.get("checkpoint_map") is not None:
        checkpoint["checkpoint_map"] = configurable["checkpoint_map"]
    return checkpoint


def snapshot_json(snapshot: StateSnapshot) -> dict[str, Any]:
    """A ``StateSnapshot`` as the API's ``ThreadState`` (plain JSON types)."""
    tasks = []
    for task in snapshot.tasks:
        state = task.state
        tasks.append(
            {
                "id": task.id,
                "name": task.name,
                "path": list(task.path),
                "error": None if task.error is None else _error_text(task.error),
                "interrupts": [interrupt_json(i) for i in task.interrupts],
                "checkpoint": (
                    checkpoint_of(state) if state is not None and isinstance(state, dict) else None
                ),
                "state": snapshot_json(state) if isinstance(state, StateSnapshot) else None,
                "result": task.result,
            }
        )
    parent = snapshot.parent_config
    return jsonable(
        {
            "values": snapshot.values,
            "next": list(snapshot.next),
            "tasks": tasks,
            "metadata": snapshot.metadata,
            "created_at": snapshot.created_at,
            "checkpoint": checkpoint_of(snapshot.config),
            "parent_checkpoint": checkpoint_of(parent),
            "interrupts": [interrupt_json(i) for i in snapshot.interrupts],
            "checkpoint_id": (snapshot.config or {}).get("configurable", {}).get("checkpoint_id"),
            "parent_checkpoint_id": (parent or {}).get("configurable", {}).get("checkpoint_id"),
        }
    )


def _error_text(error: Any) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


def select_state(state: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    """The fields of a ``ThreadState`` named in ``select`` (``values.<key>`` keeps one key
    of ``values``); all of it without ``select``."""
    if not select:
        return state
    out = {k: v for k, v in state.items() if k in select}
    keys = [name[len("values.") :] for name in select if name.startswith("values.")]
    if keys and "values" not in select:
        values = state.get("values")
        if isinstance(values, dict):
            out["values"] = {k: values[k] for k in keys if k in values}
    return out
