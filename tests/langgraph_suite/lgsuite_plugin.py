"""pytest plugin for LangGraph's own suite (loaded by ``run.py`` with ``-p lgsuite_plugin``).

- ``sync_checkpointer`` / ``async_checkpointer``: LangGraph's two fixtures with our kinds
  (``moa_sqlite``, ``moa_postgres``, ``moa_sqlite_aio``, ``moa_postgres_aio``) added to
  the official ones. ``run.py`` appends one import line to the unpacked copy's
  ``tests/conftest.py`` so these replace the originals there; the official kinds still run
  LangGraph's own context managers (``tests/conftest_checkpointer.py``).
- Selection: only tests whose checkpointer fixture has a kind listed in
  ``$MOA_LGSUITE_KINDS`` run (by the fixture's param, not ``-k``: the ``cache`` fixture
  also has a param called ``sqlite``). Each selected test records its kind and a key
  naming the same test on another kind (junit properties ``lg_kind`` / ``lg_key``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

import lgsuite_savers
import pytest

KINDS_ENV = "MOA_LGSUITE_KINDS"
SYNC_KINDS = [
    "memory",
    "memory_migrate_sends",
    "sqlite",
    "sqlite_aes",
    "postgres",
    "postgres_pipe",
    "postgres_pool",
    "moa_sqlite",
    "moa_postgres",
]
ASYNC_KINDS = [
    "memory",
    "sqlite_aio",
    "postgres_aio",
    "postgres_aio_pipe",
    "postgres_aio_pool",
    "moa_sqlite_aio",
    "moa_postgres_aio",
]
FIXTURES = ("sync_checkpointer", "async_checkpointer")


def _official(name: str) -> Any:
    from tests import conftest_checkpointer  # the unpacked copy's module

    # LangGraph's tests expect PostgreSQL on localhost:5442 (its docker compose file).
    conftest_checkpointer.DEFAULT_POSTGRES_URI = lgsuite_savers.pg_server_url()
    return getattr(conftest_checkpointer, f"_checkpointer_{name}")()


def _context(name: str) -> Any:
    if name.startswith("moa_"):
        return getattr(lgsuite_savers, name)()
    return _official(name)


@pytest.fixture(scope="function", params=SYNC_KINDS)
def sync_checkpointer(request: pytest.FixtureRequest) -> Iterator[Any]:
    cm: AbstractContextManager[Any] = _context(request.param)
    with cm as checkpointer:
        yield checkpointer


@pytest.fixture(scope="function", params=ASYNC_KINDS)
async def async_checkpointer(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    cm: AbstractAsyncContextManager[Any] = _context(request.param)
    async with cm as checkpointer:
        yield checkpointer


def _key(item: pytest.Item, fixture: str) -> str:
    """The test and its other params: the same for one test on every checkpointer kind."""
    params = item.callspec.params  # type: ignore[attr-defined]
    rest = ",".join(f"{k}={params[k]!r}" for k in sorted(params) if k not in FIXTURES)
    return f"{item.nodeid.split('[', 1)[0]}[{fixture}:{rest}]"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = {k for k in os.environ.get(KINDS_ENV, "").split(",") if k}
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        fixture = next((f for f in FIXTURES if f in params), None)
        if fixture is None or params[fixture] not in wanted:
            drop.append(item)
            continue
        item.user_properties.append(("lg_kind", params[fixture]))
        item.user_properties.append(("lg_key", _key(item, fixture)))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
