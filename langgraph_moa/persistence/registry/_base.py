"""The registry's core: its engine, setup and the row helpers every part uses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from langgraph_moa.persistence import migrations
from langgraph_moa.persistence.calls import calls
from langgraph_moa.persistence.engines import (
    READ_ONLY,
    release_async_engine,
)
from langgraph_moa.persistence.events import events
from langgraph_moa.persistence.registry._tables import (
    runs_table,
    threads_table,
)
from langgraph_moa.persistence.run_records import (
    RunRecord,
    ThreadRecord,
    _now,
    thread_status_for,
)


class _RegistryBase:
    """The engine, connections, setup and row helpers the mixins share."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self._event_log = False
        self._call_ledger = False

    async def aclose(self) -> None:
        """Give back the engine if :meth:`from_url` took it."""
        if self._owns_engine:
            self._owns_engine = False
            await release_async_engine(self.engine)

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only (on SQLite a snapshot that never takes, or waits
        for, the write lock: the polls of many processes do not queue behind writers)."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            yield conn

    @property
    def dialect(self) -> str:
        """``sqlite``, ``postgresql``, ``mysql`` or ``mariadb``."""
        return self.engine.dialect.name

    # ------------------------------------------------------------------ setup ---

    async def setup(self) -> int:
        """Apply missing migrations (idempotent, safe to race); return the schema version.
        The call ledger's table (``moa_calls``) is set up with the registry."""
        version = await migrations.aupgrade(self.engine, "registry")
        await migrations.aupgrade(self.engine, "calls")
        return version

    async def schema_version(self) -> int:
        """The applied schema version (0 before :meth:`setup`)."""
        async with self.engine.connect() as conn:
            found = await conn.run_sync(migrations.current_version, "registry")
        return found or 0

    async def _has_event_log(self, conn: AsyncConnection) -> bool:
        if not self._event_log:  # once there, it stays (checked again while missing)
            self._event_log = await conn.run_sync(lambda c: sa.inspect(c).has_table(events.name))
        return self._event_log

    async def _has_call_ledger(self, conn: AsyncConnection) -> bool:
        if not self._call_ledger:  # set up with the registry; an old store may lack it
            self._call_ledger = await conn.run_sync(lambda c: sa.inspect(c).has_table(calls.name))
        return self._call_ledger

    # ---------------------------------------------------------------- helpers ---

    async def _touch_thread(
        self, conn: AsyncConnection, thread_id: str, run_status: str, spec_name: str | None
    ) -> None:
        values: dict[str, Any] = {"updated_at": _now(), "status": thread_status_for(run_status)}
        if spec_name is not None:
            values["spec_name"] = spec_name
        await conn.execute(
            threads_table.update().where(threads_table.c.thread_id == thread_id).values(**values)
        )

    async def _thread(
        self, conn: AsyncConnection, thread_id: str, lock: bool = False
    ) -> ThreadRecord | None:
        query = sa.select(threads_table).where(threads_table.c.thread_id == thread_id)
        if lock and self.dialect != "sqlite":
            query = query.with_for_update()
        row = (await conn.execute(query)).mappings().first()
        return self._thread_record(row) if row is not None else None

    async def _run(self, conn: AsyncConnection, run_id: str) -> RunRecord | None:
        query = sa.select(runs_table).where(runs_table.c.run_id == run_id)
        row = (await conn.execute(query)).mappings().first()
        return self._run_record(row) if row is not None else None

    @staticmethod
    def _thread_record(row: Mapping[Any, Any]) -> ThreadRecord:
        data = dict(row)
        data["metadata"] = data.get("metadata") or {}
        return ThreadRecord(**data)

    @staticmethod
    def _run_record(row: Mapping[Any, Any]) -> RunRecord:
        data = dict(row)
        data["usage"] = data["usage"] or {}
        data["metadata"] = data["metadata"] or {}
        data["options"] = data["options"] or {}
        return RunRecord(**data)
