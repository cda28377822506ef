"""LangGraph's checkpointer conformance suite against our savers, on the three databases.

The suite (langgraph-checkpoint-conformance) only awaits the async methods, so it runs
twice per database: natively on ``AsyncSQLAlchemySaver`` (async drivers), and through
:func:`sync_path`, which routes each async method to the *sync* method of
``SQLAlchemySaver`` in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from sqlalchemy import delete

from langgraph_moa.persistence import AsyncSQLAlchemySaver, SQLAlchemySaver
from langgraph_moa.persistence.schema import blobs, checkpoints, heads, writes

CAPABILITIES = {
    "put",
    "put_writes",
    "get_tuple",
    "list",
    "delete_thread",
    "delete_for_runs",
    "copy_thread",
    "prune",
}


def sync_path(saver_cls: type[BaseCheckpointSaver[Any]]) -> type[BaseCheckpointSaver[Any]]:
    """A subclass of ``saver_cls`` whose async API calls its sync methods in a thread."""

    class SyncPath(saver_cls):  # type: ignore[valid-type,misc]
        async def aget_tuple(self, config: Any) -> Any:
            return await asyncio.to_thread(self.get_tuple, config)

        async def alist(
            self, config: Any, *, filter: Any = None, before: Any = None, limit: Any = None
        ) -> AsyncIterator[Any]:
            items = await asyncio.to_thread(
                lambda: list(self.list(config, filter=filter, before=before, limit=limit))
            )
            for item in items:
                yield item

        async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

        async def aput_writes(
            self, config: Any, writes: Any, task_id: str, task_path: str = ""
        ) -> None:
            await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

        async def adelete_thread(self, thread_id: str) -> None:
            await asyncio.to_thread(self.delete_thread, thread_id)

        async def adelete_for_runs(self, run_ids: Any) -> None:
            await asyncio.to_thread(self.delete_for_runs, run_ids)

        async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
            await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

        async def aprune(self, thread_ids: Any, *, strategy: str = "keep_latest") -> None:
            await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    SyncPath.__name__ = f"SyncPath[{saver_cls.__name__}]"
    return SyncPath


def _empty_tables(conn: Any) -> None:
    for table in (writes, blobs, checkpoints, heads):
        conn.execute(delete(table))


def _registered(url: str, path: str) -> Any:
    """A conformance factory giving an empty store on ``url`` for each capability."""

    if path == "async":

        async def factory() -> AsyncIterator[BaseCheckpointSaver[Any]]:
            async with AsyncSQLAlchemySaver.from_url(url) as saver:
                await saver.setup()
                async with saver.engine.begin() as conn:
                    await conn.run_sync(_empty_tables)
                yield saver

    else:

        async def factory() -> AsyncIterator[BaseCheckpointSaver[Any]]:
            cls = sync_path(SQLAlchemySaver)
            with cls.from_url(url) as saver:  # type: ignore[attr-defined]
                await asyncio.to_thread(saver.setup)
                with saver.engine.begin() as conn:
                    _empty_tables(conn)
                yield saver

    return checkpointer_test(name=f"{url.split(':', 1)[0]}[{path}]")(factory)


async def _run(url: str, path: str) -> None:
    report = await validate(_registered(url, path), progress=ProgressCallbacks.quiet())
    results = report.to_dict()["results"]
    missing = sorted(c for c in CAPABILITIES if not results[c]["detected"])
    assert not missing, f"capabilities not detected: {missing}"
    failures = {c: r["failures"] for c, r in results.items() if r["failures"]}
    assert report.passed_all(), failures
    counts = {c: results[c]["tests_passed"] for c in CAPABILITIES}
    assert all(n > 0 for n in counts.values()), counts


PATHS = ["async", "sync"]
Fixture = Callable[[str], str]


@pytest.mark.parametrize("path", PATHS)
async def test_conformance_sqlite(sqlite_url: str, path: str) -> None:
    await _run(sqlite_url, path)


@pytest.mark.postgres
@pytest.mark.parametrize("path", PATHS)
async def test_conformance_postgres(pg_url: str, path: str) -> None:
    await _run(pg_url, path)


@pytest.mark.mysql
@pytest.mark.parametrize("path", PATHS)
async def test_conformance_mariadb(mysql_url: str, path: str) -> None:
    await _run(mysql_url, path)
