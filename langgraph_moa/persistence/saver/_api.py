"""The public methods of both savers, each sync/async pair written once.

A saver says how its storage logic runs with two adapters: :meth:`SaverAPI._run_sync`
and :meth:`SaverAPI._run_async`, both called with the name of a storage method
(``_put_sync``, ``_list_sync``, ...) and its arguments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)

from langgraph_moa.persistence._sql import Prepared
from langgraph_moa.persistence.saver._admin import Admin
from langgraph_moa.persistence.saver._hot import LIST_CHUNK


class SaverAPI(Admin):
    """``BaseCheckpointSaver``'s methods (and retention) over the two adapters."""

    def _run_sync(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run storage method ``name`` from sync code."""
        raise NotImplementedError

    async def _run_async(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run storage method ``name`` from async code."""
        raise NotImplementedError

    def _list_args_ready(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> tuple[Prepared, dict[str, Any]] | None:
        self._ensure_ready()
        return self._list_args(config, filter, before, limit)

    # sync

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint of ``config`` (its ``checkpoint_id``, else the latest)."""
        result: CheckpointTuple | None = self._run_sync("_get_tuple_sync", config)
        return result

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints matching the arguments, newest first."""
        items: Iterator[CheckpointTuple] = self._run_sync(
            "_list_sync", config, filter=filter, before=before, limit=limit
        )
        return items

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint; see the package docs for fencing."""
        out: RunnableConfig = self._run_sync(
            "_put_sync", config, checkpoint, metadata, new_versions
        )
        return out

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store the pending writes of a task."""
        self._run_sync("_put_writes_sync", config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, blob and write of a thread."""
        self._run_sync("_delete_thread_sync", thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints whose metadata ``run_id`` is in ``run_ids``."""
        self._run_sync("_delete_for_runs_sync", run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread (every namespace, checkpoint, blob and write) to a new id."""
        self._run_sync("_copy_thread_sync", source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep the latest checkpoint of each namespace; ``delete``: all."""
        self._run_sync("_prune_sync", thread_ids, strategy=strategy)

    def prune_to_last(self, thread_ids: Sequence[str] | None = None, *, keep: int) -> int:
        """Keep the newest ``keep`` checkpoints per namespace of the threads (of every
        thread if ``None``, skipping threads that use a ``DeltaChannel``); returns how many
        checkpoints were deleted."""
        return int(self._run_sync("_prune_to_last_sync", thread_ids, keep))

    def delete_older_than(self, age: timedelta) -> int:
        """Delete the threads with no checkpoint written in ``age``; returns their number."""
        return int(self._run_sync("_delete_older_than_sync", age))

    # async

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        result: CheckpointTuple | None = await self._run_async("_get_tuple_sync", config)
        return result

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        args = await self._run_async("_list_args_ready", config, filter, before, limit)
        if args is None:
            return
        rows, first = await self._run_async("_read", self._list_first_tx, *args)
        for item in first:
            yield item
        for start in range(LIST_CHUNK, len(rows), LIST_CHUNK):
            chunk = await self._run_async(
                "_read", self._load_chunk_tx, rows[start : start + LIST_CHUNK]
            )
            for item in chunk:
                yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        out: RunnableConfig = await self._run_async(
            "_put_sync", config, checkpoint, metadata, new_versions
        )
        return out

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._run_async("_put_writes_sync", config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run_async("_delete_thread_sync", thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._run_async("_delete_for_runs_sync", run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._run_async("_copy_thread_sync", source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._run_async("_prune_sync", thread_ids, strategy=strategy)

    async def aprune_to_last(self, thread_ids: Sequence[str] | None = None, *, keep: int) -> int:
        """Async :meth:`prune_to_last`."""
        return int(await self._run_async("_prune_to_last_sync", thread_ids, keep))

    async def adelete_older_than(self, age: timedelta) -> int:
        """Async :meth:`delete_older_than`."""
        return int(await self._run_async("_delete_older_than_sync", age))
