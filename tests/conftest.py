"""Shared fixtures: throw-away databases on the machine's real servers.

Tests that need PostgreSQL or MariaDB skip when the server is unreachable, unless
``MOA_REQUIRE_SERVICES=1`` (set by ``.ci/run``), in which case they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["langgraph_moa.testing.pytest_plugin"]

PG_ADMIN = os.environ.get("MOA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN = os.environ.get("MOA_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")
REQUIRE_SERVICES = os.environ.get("MOA_REQUIRE_SERVICES") == "1"


def missing(msg: str) -> None:
    """Skip for a missing service or package; fail instead under MOA_REQUIRE_SERVICES=1."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{msg} (MOA_REQUIRE_SERVICES=1)")
    pytest.skip(msg)


def _unavailable(what: str, exc: Exception) -> None:
    missing(f"{what} is not reachable ({exc}); start it or unset MOA_REQUIRE_SERVICES")


@pytest.fixture
def bwrap() -> None:
    """Bubblewrap for the Python sandbox (``pytest.mark.usefixtures("bwrap")``)."""
    if shutil.which("bwrap") is None:
        missing("bubblewrap (bwrap) is not installed; .ci/run installs it")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'moa.sqlite'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) of a fresh PostgreSQL database, dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    name = f"moa_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A SQLAlchemy URL (PyMySQL) of a fresh MariaDB/MySQL database, dropped afterwards."""
    try:
        import pymysql

        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=5)
    except Exception as exc:
        _unavailable("MariaDB/MySQL", exc)
    name = f"moa_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    admin.close()
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
    finally:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root")
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each of the three databases in turn (sync driver URL)."""
    fixture = {"sqlite": "sqlite_url", "postgres": "pg_url", "mysql": "mysql_url"}[request.param]
    return str(request.getfixturevalue(fixture))
