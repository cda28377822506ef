"""From LangGraph's ``astream`` chunks to the SSE events of the LangGraph Server API.

The event name is the stream mode (``values``, ``updates``, ``custom``, ``debug``,
``tasks``, ``checkpoints``, ``messages`` for ``messages-tuple``); ``messages`` (v1) becomes
``messages/metadata``, ``messages/partial`` and ``messages/complete``. With
``stream_subgraphs`` the name gets a ``|<namespace>`` suffix. ``events`` are LangChain's
``astream_events`` (v2) dicts, one ``events`` event each (see ``execution.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import (
    BaseMessage,
    BaseMessageChunk,
    convert_to_messages,
    message_chunk_to_message,
)

from langgraph_moa.server.serde import checkpoint_of

__all__ = ["StreamMapper", "graph_stream_modes"]


def graph_stream_modes(requested: list[str]) -> list[str]:
    """The LangGraph stream modes to ask for: the requested ones, ``messages`` for
    ``messages-tuple``, plus ``updates`` to see interrupts (``events`` is not one: it is
    ``astream_events``)."""
    modes = {"messages" if m == "messages-tuple" else m for m in requested if m != "events"}
    modes.add("updates")
    return sorted(modes)


class StreamMapper:
    """Turns ``(namespace, mode, chunk)`` items into ``(event, payload)`` pairs."""

    def __init__(self, requested: list[str], *, subgraphs: bool = False) -> None:
        self.requested = set(requested)
        self.subgraphs = subgraphs
        self._messages: dict[str, BaseMessage] = {}

    def _name(self, mode: str, namespace: tuple[str, ...]) -> str:
        if self.subgraphs and namespace:
            return f"{mode}|{'|'.join(namespace)}"
        return mode

    def map(self, namespace: tuple[str, ...], mode: str, chunk: Any) -> Iterator[tuple[str, Any]]:
        """The events for one chunk of ``graph.astream(..., subgraphs=True)``."""
        if mode == "messages":
            if "messages-tuple" in self.requested:
                yield self._name("messages", namespace), chunk
            if "messages" in self.requested:
                yield from self._messages_v1(namespace, chunk)
            return
        if mode == "updates" and isinstance(chunk, dict):
            _name_messages(chunk)
        if mode == "debug" and isinstance(chunk, dict) and chunk.get("type") == "checkpoint":
            chunk = {**chunk, "payload": _debug_checkpoint(chunk.get("payload"))}
        if mode in self.requested:
            yield self._name(mode, namespace), chunk
        elif (
            mode == "updates"
            and "values" not in self.requested
            and isinstance(chunk, dict)
            and chunk.get("__interrupt__")
        ):
            yield self._name("values", namespace), chunk

    def _messages_v1(self, namespace: tuple[str, ...], chunk: Any) -> Iterator[tuple[str, Any]]:
        message, meta = chunk
        if isinstance(message, dict):
            message = convert_to_messages([message])[0]
        key = message.id or ""
        if key in self._messages:
            self._messages[key] = self._messages[key] + message
        else:
            self._messages[key] = message
            yield self._name("messages/metadata", namespace), {key: {"metadata": meta}}
        merged = self._messages[key]
        if isinstance(message, BaseMessageChunk):
            yield self._name("messages/partial", namespace), [merged]
        else:
            complete = (
                message_chunk_to_message(merged) if isinstance(merged, BaseMessageChunk) else merged
            )
            yield self._name("messages/complete", namespace), [complete]


def _name_messages(update: dict[str, Any]) -> None:
    """Give messages a node returned without an id the id ``add_messages`` would give them
    (it keeps an id that is set), so ``updates`` events and the state agree."""
    for writes in update.values():
        if not isinstance(writes, dict):
            continue
        for value in writes.values():
            for message in value if isinstance(value, list) else [value]:
                if isinstance(message, BaseMessage) and message.id is None:
                    message.id = str(uuid.uuid4())


def _debug_checkpoint(payload: Any) -> Any:
    if not isinstance(payload, dict):
        return payload
    tasks = []
    for task in payload.get("tasks") or []:
        state = task.get("state") if isinstance(task, dict) else None
        if isinstance(state, dict) and state.get("configurable"):
            task = {k: v for k, v in task.items() if k != "state"}
            task["checkpoint"] = state["configurable"]
        tasks.append(task)
    return {
        **payload,
        "checkpoint": checkpoint_of(payload.get("config")),
        "parent_checkpoint": checkpoint_of(payload.get("parent_config")),
        "tasks": tasks,
    }
