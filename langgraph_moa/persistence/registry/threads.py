"""Threads: create, read, update, search, count and delete ``moa_threads`` rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import sqlalchemy as sa

from langgraph_moa.persistence.calls import calls
from langgraph_moa.persistence.events import events, thread_event_key
from langgraph_moa.persistence.registry._base import _RegistryBase
from langgraph_moa.persistence.registry._tables import (
    runs_table,
    threads_table,
)
from langgraph_moa.persistence.run_records import (
    _KEY,
    _MISSING,
    THREAD_STATUSES,
    ThreadExistsError,
    ThreadNotFoundError,
    ThreadRecord,
    ThreadStatus,
    _check_status,
    _jsonable,
    _now,
)


class ThreadsMixin(_RegistryBase):
    """The thread operations of :class:`RunRegistry`."""

    async def create_thread(
        self,
        thread_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
        spec_name: str | None = None,
        status: ThreadStatus = "idle",
        if_exists: Literal["raise", "do_nothing"] = "raise",
    ) -> ThreadRecord:
        """Create a thread; with ``if_exists="do_nothing"`` return the existing one."""
        _check_status(status, THREAD_STATUSES, "thread")
        thread_id = thread_id or str(uuid.uuid4())
        if len(thread_id) > _KEY:
            raise ValueError(f"thread id is {len(thread_id)} characters; at most {_KEY}")
        now = _now()
        row = {
            "thread_id": thread_id,
            "created_at": now,
            "updated_at": now,
            "metadata": _jsonable(dict(metadata or {})),
            "status": status,
            "owner": owner,
            "spec_name": spec_name,
        }
        existing = await self.get_thread(thread_id)
        if existing is None:
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(threads_table.insert().values(**row))
                return ThreadRecord(**row)
            except sa.exc.IntegrityError:
                existing = await self.get_thread(thread_id)  # created at the same time
        if existing is None:  # pragma: no cover - deleted in between
            raise ThreadNotFoundError(f"thread {thread_id!r} vanished while being created")
        if if_exists == "raise":
            raise ThreadExistsError(
                f"thread {thread_id!r} already exists; pick another id or use it as it is"
            )
        return existing

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        """The thread, or None."""
        async with self._reading() as conn:
            return await self._thread(conn, thread_id)

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        replace_metadata: bool = False,
        status: ThreadStatus | None = None,
        owner: str | None = None,
        spec_name: str | None = None,
        check_metadata: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> ThreadRecord:
        """Change a thread; ``metadata`` is merged into the stored one unless
        ``replace_metadata``. ``check_metadata`` sees the resulting metadata in the same
        transaction, with the row locked, and may raise to refuse the change."""
        if status is not None:
            _check_status(status, THREAD_STATUSES, "thread")
        async with self.engine.begin() as conn:
            thread = await self._thread(conn, thread_id, lock=True)
            if thread is None:
                raise ThreadNotFoundError(f"no thread {thread_id!r}")
            values: dict[str, Any] = {"updated_at": _now()}
            if metadata is not None:
                merged = dict(metadata) if replace_metadata else {**thread.metadata, **metadata}
                if check_metadata is not None:
                    check_metadata(merged)
                values["metadata"] = _jsonable(merged)
            if status is not None:
                values["status"] = status
            if owner is not None:
                values["owner"] = owner
            if spec_name is not None:
                values["spec_name"] = spec_name
            await conn.execute(
                threads_table.update()
                .where(threads_table.c.thread_id == thread_id)
                .values(**values)
            )
            for key, value in values.items():
                setattr(thread, key, value)
            return thread

    def _thread_filter(
        self,
        metadata: Mapping[str, Any] | None,
        status: str | None,
        owner: str | None,
        thread_ids: Sequence[str] | None,
    ) -> tuple[list[Any], dict[str, Any]]:
        """SQL conditions, and the metadata items only Python can compare."""
        where: list[Any] = []
        rest: dict[str, Any] = {}
        if status is not None:
            _check_status(status, THREAD_STATUSES, "thread")
            where.append(threads_table.c.status == status)
        if owner is not None:
            where.append(threads_table.c.owner == owner)
        if thread_ids is not None:
            where.append(threads_table.c.thread_id.in_(list(thread_ids)))
        col = threads_table.c.metadata
        for key, value in (metadata or {}).items():
            item = col[key]
            if isinstance(value, bool):
                where.append(item.as_boolean() == value)
            elif isinstance(value, int):
                where.append(item.as_integer() == value)
            elif isinstance(value, float):
                where.append(item.as_float() == value)
            elif isinstance(value, str):
                where.append(item.as_string() == value)
            else:  # None, lists and objects: compared after loading
                rest[key] = value
        return where, rest

    async def search_threads(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        status: ThreadStatus | None = None,
        owner: str | None = None,
        thread_ids: Sequence[str] | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: Literal["thread_id", "created_at", "updated_at", "status"] = "created_at",
        sort_order: Literal["asc", "desc"] = "desc",
    ) -> list[ThreadRecord]:
        """Threads whose metadata contains every item of ``metadata`` (top-level equality),
        with the given status and owner, sorted and paged."""
        if sort_by not in ("thread_id", "created_at", "updated_at", "status"):
            raise ValueError(f"cannot sort threads by {sort_by!r}")
        where, rest = self._thread_filter(metadata, status, owner, thread_ids)
        column = threads_table.c[sort_by]
        order = [column.desc() if sort_order == "desc" else column.asc()]
        order.append(
            threads_table.c.thread_id.desc()
            if sort_order == "desc"
            else threads_table.c.thread_id.asc()
        )
        query = sa.select(threads_table).where(*where).order_by(*order)
        if not rest:
            query = query.limit(limit).offset(offset)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        found = [self._thread_record(r) for r in rows]
        if rest:
            found = [
                t for t in found if all(t.metadata.get(k, _MISSING) == v for k, v in rest.items())
            ][offset : offset + limit]
        return found

    async def count_threads(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        status: ThreadStatus | None = None,
        owner: str | None = None,
    ) -> int:
        """How many threads :meth:`search_threads` would find without paging."""
        where, rest = self._thread_filter(metadata, status, owner, None)
        if rest:
            return len(
                await self.search_threads(
                    metadata=metadata, status=status, owner=owner, limit=2**62, offset=0
                )
            )
        async with self._reading() as conn:
            query = sa.select(sa.func.count()).select_from(threads_table).where(*where)
            return int(await conn.scalar(query) or 0)

    async def delete_thread(self, thread_id: str) -> bool:
        """Delete a thread, its runs, their events and model calls in one transaction;
        False if there was none. (Checkpoints are the checkpointer's: call its
        ``adelete_thread`` too.)"""
        async with self.engine.begin() as conn:
            if await self._has_call_ledger(conn):
                await conn.execute(calls.delete().where(calls.c.thread_id == thread_id))
            if await self._has_event_log(conn):
                runs = sa.select(runs_table.c.run_id).where(runs_table.c.thread_id == thread_id)
                await conn.execute(events.delete().where(events.c.run_id.in_(runs)))
                created = await conn.scalar(
                    sa.select(threads_table.c.created_at).where(
                        threads_table.c.thread_id == thread_id
                    )
                )
                if created is not None:
                    key = thread_event_key(thread_id, created)
                    await conn.execute(events.delete().where(events.c.run_id == key))
            await conn.execute(runs_table.delete().where(runs_table.c.thread_id == thread_id))
            result = await conn.execute(
                threads_table.delete().where(threads_table.c.thread_id == thread_id)
            )
            return bool(result.rowcount)
