"""The async saver: ``AsyncSQLAlchemySaver`` over an ``AsyncEngine``."""

from __future__ import annotations

import asyncio
import copy
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, cast

from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only, greenlet_spawn

from langgraph_moa.persistence.engines import release_async_engine, release_engine
from langgraph_moa.persistence.errors import PersistenceError
from langgraph_moa.persistence.saver._api import SaverAPI
from langgraph_moa.persistence.saver._connections import RETRIES, T, retryable
from langgraph_moa.persistence.saver._setup import new_async_engine, twin_engine
from langgraph_moa.persistence.saver.sync import SQLAlchemySaver
from langgraph_moa.persistence.serde import AllowlistEntry


class _Shared:
    """State a saver shares with its ``with_allowlist`` clones: the locks that order
    its operations and the sync twin (see :meth:`AsyncSQLAlchemySaver._sync_twin`)."""

    def __init__(self) -> None:
        self.twin: SQLAlchemySaver | None = None
        self.twin_lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._setup_alock: asyncio.Lock | None = None

    def alock(self) -> asyncio.Lock:
        """Serializes the operations on SQLite (one connection)."""
        if self._alock is None:
            self._alock = asyncio.Lock()
        return self._alock

    def setup_alock(self) -> asyncio.Lock:
        """Serializes set-up and the first schema check."""
        if self._setup_alock is None:
            self._setup_alock = asyncio.Lock()
        return self._setup_alock


class AsyncSQLAlchemySaver(SaverAPI):
    """Checkpointer over an ``AsyncEngine`` (aiosqlite, psycopg async, aiomysql).

    Same arguments as :class:`SQLAlchemySaver`. The sync methods (used by
    ``graph.invoke``/``get_state``) run on a sync engine of the same database, made on
    first use; they block, so call them from a thread other than the event loop's.
    """

    def __init__(self, engine: AsyncEngine, **kwargs: Any) -> None:
        if not isinstance(engine, AsyncEngine):
            raise TypeError("AsyncSQLAlchemySaver takes an AsyncEngine; use SQLAlchemySaver")
        super().__init__(engine.sync_engine, **kwargs)
        self.engine = engine
        self._kwargs = kwargs
        self._shared = _Shared()  # shared with the clones with_allowlist makes
        self._twin: SQLAlchemySaver | None = None

    @classmethod
    @asynccontextmanager
    async def from_url(
        cls,
        url: str,
        *,
        serde: SerializerProtocol | None = None,
        serde_allowlist: Iterable[AllowlistEntry] = (),
        encrypt: bool | str | bytes = False,
        auto_setup: bool = True,
        **engine_kwargs: Any,
    ) -> AsyncIterator[AsyncSQLAlchemySaver]:
        """A saver on a new async engine for ``url``, given with a sync or async driver
        (``sqlite:///f``, ``postgresql://...``, ``mysql://...``); gives it back on exit."""
        engine = new_async_engine(url, **engine_kwargs)
        saver = cls(
            engine,
            serde=serde,
            serde_allowlist=serde_allowlist,
            encrypt=encrypt,
            auto_setup=auto_setup,
        )
        try:
            yield saver
        finally:
            await saver.aclose()
            await release_async_engine(engine)

    def _sleep(self, seconds: float) -> None:
        await_only(asyncio.sleep(seconds))

    def _attempt(
        self, fn: Callable[..., T], args: tuple[Any, ...], *, begin: str | None, read: bool
    ) -> T:
        # aiosqlite runs each call of the driver on its own thread; running the whole
        # operation there as one call saves a thread hop per statement (several per put).
        if self.backend != "sqlite" or not hasattr(self._aiosqlite_conn_cls(), "_execute"):
            return super()._attempt(fn, args, begin=begin, read=read)
        self._ensure_ready()
        with self._checkout() as raw:
            drv: Any = raw.driver_connection
            return cast(
                T, await_only(drv._execute(self._in_sqlite_thread, drv, fn, args, begin, read))
            )

    @staticmethod
    def _aiosqlite_conn_cls() -> type:
        import aiosqlite

        return aiosqlite.Connection

    @staticmethod
    def _in_sqlite_thread(
        drv: Any, fn: Callable[..., T], args: tuple[Any, ...], begin: str | None, read: bool
    ) -> T:
        conn: sqlite3.Connection = drv._conn
        attempt = 0
        while True:
            cur = conn.cursor()
            try:
                if begin:
                    cur.execute(begin)
                result = fn(cur, *args)
                if conn.in_transaction:
                    conn.commit()
                return result
            except BaseException as exc:
                if conn.in_transaction:
                    conn.rollback()
                attempt += 1
                if attempt >= RETRIES or not retryable(exc):
                    raise
            finally:
                cur.close()
            time.sleep(0.02 * attempt * (1 + random.random()))

    async def __aenter__(self) -> AsyncSQLAlchemySaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Return the saver's connection to the pool and give back the sync engine taken
        for the sync methods (``from_url`` does this on exit)."""
        await greenlet_spawn(self._close_cached)
        shared = self._shared
        with shared.twin_lock:
            twin, shared.twin = shared.twin, None
        if twin is not None:
            twin.close()
            release_engine(twin.engine)
        self._twin = None

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run the sync storage logic over the async engine."""
        if not self._ready:
            async with self._shared.setup_alock():
                if not self._ready:
                    await greenlet_spawn(self._check_ready)
        if self.backend == "sqlite":
            # one operation at a time on the saver's own connection: SQLite has one
            # writer anyway, and a second connection would cost a pool checkout and
            # reset (thread hops to aiosqlite) per operation; in memory, it must be one
            async with self._shared.alock():
                return await greenlet_spawn(fn, *args, **kwargs)
        return await greenlet_spawn(fn, *args, **kwargs)

    async def setup(self) -> None:
        """Create the tables or migrate them to this version; idempotent, safe to run
        from several processes at once."""
        async with self._shared.setup_alock():
            await greenlet_spawn(self._setup_sync)
            await greenlet_spawn(self._check_ready)

    async def _run_async(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._call(getattr(self, name), *args, **kwargs)

    def _run_sync(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # on a sync engine of the same database
        return getattr(self._sync_twin(), name)(*args, **kwargs)

    def with_allowlist(self, extra_allowlist: Any) -> AsyncSQLAlchemySaver:
        """A shallow clone whose serde also deserializes ``extra_allowlist``."""
        clone = cast(AsyncSQLAlchemySaver, super().with_allowlist(extra_allowlist))
        if clone is not self:
            clone._twin = None  # the sync methods need a twin with the new serde
        return clone

    # sync API, on a sync engine of the same database

    def _sync_twin(self) -> SQLAlchemySaver:
        """The sync saver on a sync engine of the same database: one per saver and its
        clones (a clone's twin is a shallow copy with the clone's serde, sharing the
        engine and the connection), closed by :meth:`aclose`."""
        twin = self._twin
        if twin is None:
            shared = self._shared
            with shared.twin_lock:
                if shared.twin is None:
                    if self._memory:
                        raise PersistenceError(
                            "an in-memory SQLite database cannot be shared with a second "
                            "engine: use the async methods (ainvoke, aget_state) or a file URL"
                        )
                    shared.twin = SQLAlchemySaver(
                        twin_engine(self.engine), serde=self.serde, auto_setup=self.auto_setup
                    )
                twin = shared.twin
            if twin.serde is not self.serde:
                twin = copy.copy(twin)
                twin.serde = self.serde
            self._twin = twin
        return twin
