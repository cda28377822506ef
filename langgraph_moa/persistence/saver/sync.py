"""The sync saver: ``SQLAlchemySaver`` over a sync ``Engine``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence.engines import release_engine
from langgraph_moa.persistence.saver._api import SaverAPI
from langgraph_moa.persistence.saver._connections import T
from langgraph_moa.persistence.saver._setup import new_engine
from langgraph_moa.persistence.serde import AllowlistEntry

_SQLITE_FILE_LOCKS: dict[str, threading.Lock] = {}


class SQLAlchemySaver(SaverAPI):
    """Checkpointer over a sync SQLAlchemy ``Engine`` (SQLite, PostgreSQL, MySQL/MariaDB).

    Args:
        engine: the engine; see :func:`~langgraph_moa.persistence.engines.get_engine`
            for one set up for several writing processes, or use :meth:`from_url`.
        serde: a serializer of your own (default: :func:`~langgraph_moa.persistence.make_serde`,
            LangGraph's msgpack format without pickle; see :mod:`~langgraph_moa.persistence.serde`).
        serde_allowlist: classes (or ``(module, name)`` tuples) that deserialize as
            themselves even when not imported state classes.
        encrypt: ``True`` to AES-encrypt stored values with ``$LANGGRAPH_AES_KEY``, or a key.
        auto_setup: create/migrate the tables on first use (else call :meth:`setup`).

    The async methods run the sync ones in a worker thread.
    """

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        if isinstance(engine, AsyncEngine):
            raise TypeError("SQLAlchemySaver takes a sync Engine; use AsyncSQLAlchemySaver")
        super().__init__(engine, **kwargs)
        self.engine = engine
        self._lock: threading.Lock | None = None
        if self._memory:
            self._lock = threading.Lock()  # one shared connection: one operation at a time
        elif self.backend == "sqlite":
            path = str(engine.url.database)
            self._lock = _SQLITE_FILE_LOCKS.setdefault(path, threading.Lock())
        self._setup_lock = threading.Lock()

    @classmethod
    @contextmanager
    def from_url(
        cls,
        url: str,
        *,
        serde: SerializerProtocol | None = None,
        serde_allowlist: Iterable[AllowlistEntry] = (),
        encrypt: bool | str | bytes = False,
        auto_setup: bool = True,
        **engine_kwargs: Any,
    ) -> Iterator[SQLAlchemySaver]:
        """A saver on the process's engine of ``url`` (any driver spelling, see
        :mod:`~langgraph_moa.persistence.engines`); gives it back on exit."""
        engine = new_engine(url, **engine_kwargs)
        saver = None
        try:
            saver = cls(
                engine,
                serde=serde,
                serde_allowlist=serde_allowlist,
                encrypt=encrypt,
                auto_setup=auto_setup,
            )
            yield saver
        finally:
            if saver is not None:
                saver.close()
            release_engine(engine)

    def _ensure_ready(self) -> None:
        if not self._ready:
            with self._setup_lock:
                if not self._ready:
                    self._check_ready()

    def _attempt(
        self, fn: Callable[..., T], args: tuple[Any, ...], *, begin: str | None, read: bool
    ) -> T:
        # SQLite: writers of this process queue on a lock (cheaper than busy-waiting in
        # SQLite); an in-memory database has one connection, so everything queues.
        if self._lock is None or (read and not self._memory):
            return super()._attempt(fn, args, begin=begin, read=read)
        with self._lock:
            return super()._attempt(fn, args, begin=begin, read=read)

    def close(self) -> None:
        """Return the saver's connection to the pool (``from_url`` does this on exit;
        ``with SQLAlchemySaver(engine) as saver:`` too). The engine stays open."""
        self._close_cached()

    def __enter__(self) -> SQLAlchemySaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _admin(self, fn: Callable[[Connection], T]) -> T:
        if self._lock is None:
            return super()._admin(fn)
        self._ensure_ready()
        with self._lock:
            return super()._admin(fn)

    def setup(self) -> None:
        """Create the tables or migrate them to this version; idempotent, safe to run
        from several processes at once."""
        with self._setup_lock:
            self._setup_sync()
            self._check_ready()

    def _run_sync(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)

    async def _run_async(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # the sync methods in a worker thread
        return await asyncio.to_thread(getattr(self, name), *args, **kwargs)
