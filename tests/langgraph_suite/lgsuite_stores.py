"""pytest plugin: the official SQLite store's own tests run against our store.

Loaded with ``-p lgsuite_stores`` by ``run_stores.py`` into the unpacked
``langgraph-checkpoint-sqlite`` sdist. When ``MOA_LGSUITE_STORE`` names a database
(``sqlite``, ``postgres``, ``mysql``), ``langgraph.store.sqlite.SqliteStore`` and
``AsyncSqliteStore`` are replaced, before the test modules import them, by thin
subclasses of our stores whose ``from_conn_string(conn, index=..., ttl=...)`` opens our
store on that database: a fresh database per ``:memory:`` call, one per file path
otherwise (so reopening a file reopens its data). Nothing else changes; unset, the
official store runs (the baseline).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

KIND = os.environ.get("MOA_LGSUITE_STORE", "")
PG = os.environ.get("MOA_LGSUITE_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL = os.environ.get("MOA_LGSUITE_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
_created: list[str] = []
_tmp = tempfile.mkdtemp(prefix="moa-lgstore-")


def _admin(stmt: str) -> None:
    import sqlalchemy as sa

    base = PG if KIND == "postgres" else MYSQL
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(stmt)
    finally:
        engine.dispose()


def _url(conn_string: str) -> str:
    """Our database for the official test's connection string."""
    if conn_string == ":memory:":
        tag = uuid.uuid4().hex[:12]
    else:
        tag = hashlib.sha1(conn_string.encode()).hexdigest()[:12]
    if KIND == "sqlite":
        return f"sqlite:///{_tmp}/{tag}.sqlite"
    name = f"lgstore_{os.getpid()}_{tag}"
    if name not in _created:
        _admin(f"CREATE DATABASE {name}")
        _created.append(name)
    base = PG if KIND == "postgres" else MYSQL
    return base.rsplit("/", 1)[0] + "/" + name


def _index(index: dict[str, Any] | None) -> dict[str, Any] | None:
    """The official SQLite store calls the field list ``text_fields``."""
    if index is None:
        return None
    out = dict(index)
    if "fields" not in out and index.get("text_fields"):
        out["fields"] = index["text_fields"]
    return out


def _install() -> None:
    import langgraph.store.sqlite as official
    import langgraph.store.sqlite.aio as official_aio

    from langgraph_moa.persistence.store import AsyncSQLAlchemyStore, SQLAlchemyStore

    class MoaSqliteStore(SQLAlchemyStore):
        @classmethod
        @contextmanager
        def from_conn_string(  # type: ignore[override]
            cls, conn_string: str, *, index: Any = None, ttl: Any = None
        ) -> Iterator[Any]:
            with cls.from_url(_url(conn_string), index=_index(index), ttl=ttl) as store:
                yield store

    class MoaAsyncSqliteStore(AsyncSQLAlchemyStore):
        @classmethod
        @asynccontextmanager
        async def from_conn_string(  # type: ignore[override]
            cls, conn_string: str, *, index: Any = None, ttl: Any = None
        ) -> AsyncIterator[Any]:
            async with cls.from_url(_url(conn_string), index=_index(index), ttl=ttl) as store:
                yield store

    official.SqliteStore = MoaSqliteStore  # type: ignore[misc]
    official.AsyncSqliteStore = MoaAsyncSqliteStore  # type: ignore[misc]
    official_aio.AsyncSqliteStore = MoaAsyncSqliteStore  # type: ignore[misc]


if KIND:
    _install()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from langgraph_moa.persistence.engines import adispose_all, dispose_all

    dispose_all()
    asyncio.run(adispose_all())
    for name in _created:
        try:
            _admin(f"DROP DATABASE IF EXISTS {name}")
        except Exception as exc:
            print(f"[lgsuite-stores] could not drop {name}: {exc}")


# -- the `sync_store`/`async_store` fixtures of the `langgraph` sdist's graph tests --------
# (run_stores.py imports these two into its own unpacked copy's tests/conftest.py)


@pytest.fixture
def sync_store() -> Iterator[Any]:
    """Our sync store on MOA_LGSUITE_STORE's database, else LangGraph's InMemoryStore."""
    if not KIND:
        from langgraph.store.memory import InMemoryStore

        yield InMemoryStore()
        return
    from langgraph_moa.persistence.store import SQLAlchemyStore

    with SQLAlchemyStore.from_url(_url(":memory:")) as store:
        yield store


@pytest.fixture
async def async_store() -> AsyncIterator[Any]:
    """Our async store on MOA_LGSUITE_STORE's database, else LangGraph's InMemoryStore."""
    if not KIND:
        from langgraph.store.memory import InMemoryStore

        yield InMemoryStore()
        return
    from langgraph_moa.persistence.store import AsyncSQLAlchemyStore

    async with AsyncSQLAlchemyStore.from_url(_url(":memory:")) as store:
        yield store
