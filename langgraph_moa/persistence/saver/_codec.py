"""Codec of the savers: checkpoints, channel values and writes to rows and back.

A checkpoint row holds the checkpoint document with the small channel values inline;
larger values go to the blobs table once per (thread, namespace, channel, version).
Everything a ``put`` writes is serialized before its transaction starts (:class:`PutPlan`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from langgraph_moa.persistence.saver._setup import Setup
from langgraph_moa.persistence.schema import CHANNEL_MAX, THREAD_ID_MAX

LEASE_CONFIG_KEY = "__moa_lease__"
"""``configurable`` key of the run executor's lease token: writes carrying it are fenced
(refused unless the token holds the thread's lease in ``moa_threads``). A dunder key, so
LangGraph passes it to every put/put_writes but never copies it into metadata."""

INLINE_MAX_BYTES = 256
"""Channel values up to this size (serialized) are stored inside the checkpoint row."""

_BLOBS_KEY = "__moa_blobs__"  # document key: the channels whose values are in the blobs table
_CACHE_MAX = 20_000


def lease_token(conf: Any) -> str | None:
    """The lease token in a ``configurable`` dict, if any."""
    token = conf.get(LEASE_CONFIG_KEY)
    return None if token is None else str(token)


class PutPlan(NamedTuple):
    """Everything ``put`` writes, serialized before the transaction starts."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None
    lease: str | None  # the writer's lease token, checked in the write transaction
    blob_rows: list[dict[str, Any]]
    checkpoint_row: dict[str, Any]
    cache: list[tuple[tuple[str, str, str, str], bool]]
    now: float


def _small(value: Any) -> bool:
    """Whether ``value`` is inlined without serializing it first to measure it."""
    kind = type(value)
    if value is None or kind is int or kind is float or kind is bool:
        return True
    return (kind is str or kind is bytes) and len(value) <= INLINE_MAX_BYTES // 4


_json_decode = json.JSONDecoder().decode


def _load_json(value: Any) -> dict[str, Any]:
    if type(value) is str:
        return cast(dict[str, Any], _json_decode(value))
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode()
    return cast(dict[str, Any], json.loads(value))


class Codec(Setup):
    """Serialization of checkpoints and writes, and the cache of where values live."""

    def _cache_get(self, key: tuple[str, str, str, str]) -> bool | None:
        return self._cache.get(key)

    def _cache_put(self, entries: list[tuple[tuple[str, str, str, str], bool]]) -> None:
        if not entries:
            return
        with self._cache_lock:
            cache = self._cache
            for key, inline in entries:
                cache[key] = inline
            while len(cache) > _CACHE_MAX:
                cache.popitem(last=False)

    @staticmethod
    def _check_keys(thread_id: str, checkpoint_ns: str) -> None:
        if len(thread_id) > THREAD_ID_MAX:
            raise ValueError(
                f"thread_id is {len(thread_id)} characters long; the limit is {THREAD_ID_MAX}: "
                "use a shorter id (e.g. a uuid or a hash of the long one)"
            )
        if len(checkpoint_ns) > THREAD_ID_MAX:
            raise ValueError(
                f"checkpoint_ns {checkpoint_ns[:60]!r}... is longer than {THREAD_ID_MAX} "
                "characters (the subgraphs are nested too deeply to store)"
            )

    def _plan_put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> PutPlan:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns") or ""
        parent_id = conf.get("checkpoint_id") or None
        self._check_keys(thread_id, ns)
        values = checkpoint["channel_values"]
        inline: dict[str, Any] = {}
        blob_channels: list[str] = []
        blob_rows: list[dict[str, Any]] = []
        cache: list[tuple[tuple[str, str, str, str], bool]] = []
        for channel, version in checkpoint["channel_versions"].items():
            if channel not in values:
                continue  # empty channel: nothing to store
            value = values[channel]
            if _small(value):
                inline[channel] = value
                continue
            if len(channel) > CHANNEL_MAX:
                raise ValueError(f"channel name {channel[:60]!r}... exceeds {CHANNEL_MAX} chars")
            key = (thread_id, ns, channel, str(version))
            known = None if channel in new_versions else self._cache_get(key)
            if known is True:
                inline[channel] = value
            elif known is False:
                blob_channels.append(channel)
            else:
                type_, data = self.serde.dumps_typed(value)
                if len(data) <= INLINE_MAX_BYTES and not isinstance(value, _DeltaSnapshot):
                    inline[channel] = value
                    cache.append((key, True))
                else:
                    blob_channels.append(channel)
                    cache.append((key, False))
                    blob_rows.append(
                        {
                            "thread_id": thread_id,
                            "checkpoint_ns": ns,
                            "channel": channel,
                            "version": key[3],
                            "type": type_,
                            "blob": data,
                        }
                    )
        doc: dict[str, Any] = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        doc["channel_values"] = inline
        if blob_channels:
            doc[_BLOBS_KEY] = blob_channels
        type_, data = self.serde.dumps_typed(doc)
        md = get_serializable_checkpoint_metadata(config, metadata)
        return PutPlan(
            thread_id=thread_id,
            checkpoint_ns=ns,
            checkpoint_id=checkpoint["id"],
            parent_id=parent_id,
            lease=lease_token(conf),
            blob_rows=blob_rows,
            checkpoint_row={
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
                "parent_checkpoint_id": parent_id,
                "type": type_,
                "checkpoint": data,
                "metadata": json.dumps(md, ensure_ascii=False, default=str),
            },
            cache=cache,
            now=time.time(),
        )

    def _decode(self, type_: str, data: bytes) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """A stored checkpoint document and the (channel, version) of its blob values."""
        doc = self.serde.loads_typed((type_, data))
        blob_channels = doc.pop(_BLOBS_KEY, None)
        if not blob_channels:
            return doc, []
        versions = doc["channel_versions"]
        return doc, [(ch, str(versions[ch])) for ch in blob_channels if ch in versions]

    def _load_writes(self, rows: Sequence[Sequence[Any]]) -> list[PendingWrite]:
        """Pending writes from (task_id, task_path, idx, channel, type, blob) rows."""
        if not rows:
            return []
        ordered = sorted(rows, key=lambda r: writes_sort_key(r[1] or "", r[0], r[2]))
        return [(r[0], r[3], self.serde.loads_typed((r[4], r[5]))) for r in ordered]

    def _tuple(
        self,
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        parent_id: str | None,
        doc: dict[str, Any],
        metadata: Any,
        blob_values: dict[tuple[str, str], tuple[str, bytes | None]],
        blob_pairs: list[tuple[str, str]],
        write_rows: list[Sequence[Any]],
    ) -> CheckpointTuple:
        if blob_pairs:
            values = doc["channel_values"]
            for pair in blob_pairs:
                found = blob_values.get(pair)
                if found is not None and found[0] != "empty":
                    values[pair[0]] = self.serde.loads_typed((found[0], found[1] or b""))
        parent = (
            {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": parent_id,
                }
            }
            if parent_id
            else None
        )
        return CheckpointTuple(
            {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                }
            },
            doc,  # type: ignore[arg-type]
            _load_json(metadata),  # type: ignore[arg-type]
            parent,  # type: ignore[arg-type]
            self._load_writes(write_rows),
        )
