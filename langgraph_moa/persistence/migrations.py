"""One migration runner for every table of the store.

Each component (``checkpoints``, ``registry``, ``events``, ``calls``, ``eval``) has an ordered list
of steps in :data:`STEPS`; step ``i`` brings the component to version ``i + 1``. The
applied versions are rows of one table, ``moa_schema_migrations(component, version,
name, applied_at)``. :func:`upgrade` applies the missing steps of a component under a
database-wide lock (a PostgreSQL advisory lock, MySQL ``GET_LOCK``, SQLite's write lock
by ``BEGIN IMMEDIATE``), so processes starting together migrate once; it refuses a
database whose schema is newer than this code (:class:`SchemaVersionError`).

Adding a step (never edit or remove one; steps must be idempotent)::

    # a new column: add it to the Table definition, then append here
    STEPS["registry"].append(
        Step("lease columns on moa_threads", add_columns("moa_threads", "lease_token", ...))
    )

Databases written before this runner existed kept their versions in one table per
component (``moa_checkpoint_migrations``, ``moa_registry_migrations``,
``moa_eval_migrations``, ``moa_server_migrations``); the first :func:`upgrade` of a
component copies its versions here and drops the old table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence.errors import PersistenceError, SchemaVersionError
from langgraph_moa.persistence.urls import redact

__all__ = [
    "STEPS",
    "Step",
    "add_columns",
    "aupgrade",
    "current_version",
    "double_columns",
    "schema_version",
    "table",
    "upgrade",
]

LOCK_NAME = "moa_schema_migrations"
_PG_LOCK_ID = 0x6D6F615F736368 & 0x7FFFFFFFFFFFFFFF  # "moa_sch"
_LOCK_TIMEOUT_S = 120

_metadata = sa.MetaData()
table = sa.Table(
    "moa_schema_migrations",
    _metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column(
        "applied_at",
        sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
        nullable=False,
    ),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)


@dataclass(frozen=True)
class Step:
    """One schema change: ``apply(connection)`` inside the runner's transaction."""

    name: str
    apply: Callable[[Connection], None]


def _create(module: str, *names: str) -> Callable[[Connection], None]:
    """A step creating the tables ``names`` (Table objects of ``module``) if missing."""

    def apply(conn: Connection) -> None:
        import importlib

        mod = importlib.import_module(module)
        for name in names:
            getattr(mod, name).create(conn, checkfirst=True)

    return apply


def _call(module: str, name: str) -> Callable[[Connection], None]:
    """A step calling the function ``name`` of ``module`` (imported when it runs)."""

    def apply(conn: Connection) -> None:
        import importlib

        getattr(importlib.import_module(module), name)(conn)

    return apply


_REGISTRY = "langgraph_moa.persistence.registry"


def add_columns(
    table_name: str, *columns: str, module: str | None = None
) -> Callable[[Connection], None]:
    """A step adding ``columns`` (as declared on the Table ``table_name`` of ``module``,
    default: the registry's) to an existing table; columns already there are skipped."""

    def apply(conn: Connection) -> None:
        target = _find_table(module or _REGISTRY, table_name)
        present = {c["name"] for c in sa.inspect(conn).get_columns(table_name)}
        preparer = conn.dialect.identifier_preparer
        for name in columns:
            if name in present:
                continue
            ddl = sa.schema.CreateColumn(target.c[name]).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {preparer.format_table(target)} ADD COLUMN {ddl}")

    return apply


def double_columns(table_name: str, *columns: str, module: str) -> Callable[[Connection], None]:
    """A step widening ``columns`` of ``table_name`` (a Table of ``module``) from the
    single-precision ``FLOAT`` that ``sa.Float`` made on MySQL/MariaDB (about 7
    significant digits) to ``DOUBLE``, as the Table declares them now. A no-op on
    PostgreSQL (its ``FLOAT`` is double precision) and SQLite (``REAL`` holds doubles),
    and for a column that is ``DOUBLE`` already."""

    def apply(conn: Connection) -> None:
        if conn.dialect.name not in ("mysql", "mariadb"):
            return
        target = _find_table(module, table_name)
        found = {c["name"]: c["type"] for c in sa.inspect(conn).get_columns(table_name)}
        preparer = conn.dialect.identifier_preparer
        for name in columns:
            if name not in found or isinstance(found[name], sa.Double):
                continue
            ddl = sa.schema.CreateColumn(target.c[name]).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {preparer.format_table(target)} MODIFY COLUMN {ddl}")

    return apply


def _find_table(module: str, name: str) -> sa.Table:
    import importlib

    tables = [t for t in vars(importlib.import_module(module)).values() if isinstance(t, sa.Table)]
    return next(t for t in tables if t.name == name)


_DOUBLE = "FLOAT columns as DOUBLE on MySQL/MariaDB"

STEPS: dict[str, list[Step]] = {
    "checkpoints": [
        Step(
            "create moa_checkpoints, _blobs, _writes, _heads",
            _call("langgraph_moa.persistence.schema", "_v1"),
        ),
        Step(
            f"moa_checkpoint_heads.updated_at: {_DOUBLE}",
            double_columns(
                "moa_checkpoint_heads", "updated_at", module="langgraph_moa.persistence.schema"
            ),
        ),
    ],
    "registry": [
        Step("create moa_threads and moa_runs", _call(_REGISTRY, "_migration_1")),
        Step("thread lease and cancel requests", _call(_REGISTRY, "_migration_2")),
    ],
    "events": [
        Step("create moa_run_events", _create("langgraph_moa.persistence.events", "events")),
    ],
    "assistants": [
        Step(
            "create moa_assistants and moa_assistant_versions",
            _call("langgraph_moa.persistence.assistants", "_create_tables"),
        ),
    ],
    "crons": [
        Step(
            "create moa_crons and moa_cron_firings",
            _call("langgraph_moa.persistence.crons", "_create_tables"),
        ),
    ],
    "calls": [
        Step("create moa_calls", _create("langgraph_moa.persistence.calls", "calls")),
        Step(
            "index moa_calls by request hash",
            _call("langgraph_moa.persistence.calls", "_index_requests"),
        ),
        Step(
            f"moa_calls.latency_ms: {_DOUBLE}",
            double_columns("moa_calls", "latency_ms", module="langgraph_moa.persistence.calls"),
        ),
    ],
}
"""The steps of each component, in order. Components outside ``persistence/`` (the
evaluation store) add their list here when imported."""

_LEGACY = {
    "checkpoints": ("moa_checkpoint_migrations", "v"),
    "registry": ("moa_registry_migrations", "version"),
    "eval": ("moa_eval_migrations", "version"),
    "events": ("moa_server_migrations", "version"),
}


def schema_version(component: str) -> int:
    """The version of ``component`` this code reads and writes."""
    return len(_steps(component))


def _steps(component: str) -> list[Step]:
    try:
        return STEPS[component]
    except KeyError:
        raise ValueError(
            f"unknown schema component {component!r}; known: {', '.join(sorted(STEPS))}"
        ) from None


def current_version(conn: Connection, component: str) -> int | None:
    """The applied version of ``component`` (None: never set up). Reads the old
    per-component table of databases that were not upgraded yet."""
    names = set(sa.inspect(conn).get_table_names())
    found = None
    if table.name in names:
        found = conn.execute(
            sa.select(sa.func.max(table.c.version)).where(table.c.component == component)
        ).scalar()
    if found is None and component in _LEGACY and _LEGACY[component][0] in names:
        legacy, column = _LEGACY[component]
        found = conn.execute(sa.text(f"SELECT MAX({column}) FROM {legacy}")).scalar() or 0
    return None if found is None else int(found)


def _too_new(conn: Connection, component: str, found: int) -> SchemaVersionError:
    supported = schema_version(component)
    return SchemaVersionError(
        f"the {component} tables at {redact(conn.engine.url)} are at schema version {found}, "
        f"newer than version {supported} that this langgraph-moa knows (the database was "
        "written by a newer release); upgrade langgraph-moa here (pip install -U "
        "langgraph-moa), or point --db / MOA_DB_URL at another database",
        found=found,
        supported=supported,
    )


def upgrade(conn: Connection, component: str) -> int:
    """Bring ``component`` to :func:`schema_version` on ``conn`` (a connection with no
    transaction open); returns the version. Idempotent and safe to race."""
    steps = _steps(component)
    found = current_version(conn, component)
    if conn.in_transaction():
        conn.commit()
    if found is not None and found > len(steps):
        raise _too_new(conn, component, found)
    if found == len(steps) and _upgraded(conn, component):
        return found
    backend = conn.dialect.name
    if backend in ("mysql", "mariadb"):
        got = conn.execute(
            sa.text("SELECT GET_LOCK(:n, :t)"), {"n": LOCK_NAME, "t": _LOCK_TIMEOUT_S}
        ).scalar()
        conn.commit()
        if got != 1:
            raise PersistenceError(
                f"timed out after {_LOCK_TIMEOUT_S} s waiting for another process to finish "
                f"migrating the {component} tables at {redact(conn.engine.url)}; retry"
            )
        try:
            return _apply(conn, component, steps, commit_each=True)
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": LOCK_NAME})
            conn.commit()
    if backend == "sqlite" and not getattr(conn.engine, "_moa_sqlite_events", False):
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # our engines do this on every begin
    elif backend == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
    try:
        version = _apply(conn, component, steps, commit_each=False)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return version


def _upgraded(conn: Connection, component: str) -> bool:
    """Whether the versions of ``component`` are in the new table (not only the old one)."""
    if not sa.inspect(conn).has_table(table.name):
        return False
    row = conn.execute(sa.select(table.c.version).where(table.c.component == component)).first()
    if conn.in_transaction():
        conn.commit()
    return row is not None


def _apply(conn: Connection, component: str, steps: list[Step], *, commit_each: bool) -> int:
    """Under the lock: adopt old version records, refuse newer schemas, apply steps."""
    table.create(conn, checkfirst=True)
    query = sa.select(table.c.version).where(table.c.component == component)
    done = {int(v) for v in conn.execute(query).scalars()}
    legacy = _LEGACY.get(component)
    if legacy is not None and sa.inspect(conn).has_table(legacy[0]):
        old = conn.execute(sa.text(f"SELECT MAX({legacy[1]}) FROM {legacy[0]}")).scalar() or 0
        for version in range(1, int(old) + 1):
            if version not in done:
                name = steps[version - 1].name if version <= len(steps) else "(newer release)"
                _record(conn, component, version, name)
                done.add(version)
        conn.exec_driver_sql(f"DROP TABLE {legacy[0]}")
    found = max(done, default=0)
    if found > len(steps):
        if commit_each:
            conn.commit()
        raise _too_new(conn, component, found)
    for version in range(found + 1, len(steps) + 1):
        steps[version - 1].apply(conn)
        _record(conn, component, version, steps[version - 1].name)
        if commit_each:
            conn.commit()
    if commit_each and conn.in_transaction():
        conn.commit()
    return len(steps)


def _record(conn: Connection, component: str, version: int, name: str) -> None:
    conn.execute(
        table.insert().values(
            component=component,
            version=version,
            name=name[:200],
            applied_at=datetime.now(UTC).replace(tzinfo=None),
        )
    )


async def aupgrade(engine: AsyncEngine, component: str) -> int:
    """:func:`upgrade` over an async engine."""
    async with engine.connect() as conn:
        return await conn.run_sync(upgrade, component)
