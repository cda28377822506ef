"""The registry's tables (``moa_threads``, ``moa_runs``) and their migration steps."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from langgraph_moa.persistence.run_records import _KEY, RUN_JSON_COLUMNS

# ----------------------------------------------------------------------- schema ---

_metadata = sa.MetaData()
_Time = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_Text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

threads_table = sa.Table(
    "moa_threads",
    _metadata,
    sa.Column("thread_id", sa.String(_KEY), primary_key=True),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(_KEY), nullable=True),
    sa.Column("spec_name", sa.String(100), nullable=True),
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lease_heartbeat_at", _Time, nullable=True),
    sa.Column("lease_host", sa.String(255), nullable=True),
    sa.Column("lease_pid", sa.Integer, nullable=True),
    sa.Column("lease_run_id", sa.String(64), nullable=True),
    sa.Index("moa_threads_updated_idx", "updated_at"),
    sa.Index("moa_threads_owner_idx", "owner"),
    sa.Index("moa_threads_status_idx", "status"),
)

runs_table = sa.Table(
    "moa_runs",
    _metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("thread_id", sa.String(_KEY), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    sa.Column("spec_name", sa.String(100), nullable=True),
    sa.Column("spec_hash", sa.String(64), nullable=True),
    sa.Column("spec", sa.JSON, nullable=True),
    sa.Column("spec_source", sa.String(1000), nullable=True),
    sa.Column("input", sa.JSON, nullable=True),
    sa.Column("answer", _Text, nullable=True),
    sa.Column("error", _Text, nullable=True),
    sa.Column("waiting_for", sa.JSON, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("owner_host", sa.String(255), nullable=True),
    sa.Column("owner_pid", sa.Integer, nullable=True),
    sa.Column("owner_token", sa.String(64), nullable=True),
    sa.Column("heartbeat_at", _Time, nullable=True),
    sa.Column("started_at", _Time, nullable=True),
    sa.Column("finished_at", _Time, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("metadata", sa.JSON, nullable=True),
    sa.Column("options", sa.JSON, nullable=True),
    sa.Column("parent_run_id", sa.String(64), nullable=True),
    sa.Column("checkpoint_id", sa.String(64), nullable=True),
    sa.Column("cancel_requested_at", _Time, nullable=True),
    sa.Index("moa_runs_thread_idx", "thread_id", "created_at"),
    sa.Index("moa_runs_status_idx", "status", "created_at"),
)


_V1_COLUMNS = {
    "moa_threads": {"lease_token", "lease_epoch", "lease_heartbeat_at", "lease_host", "lease_pid"}
    | {"lease_run_id"},
    "moa_runs": {"cancel_requested_at"},
}
"""Columns added by migration 2 (a fresh database gets them from migration 1 already)."""


def _migration_1(conn: sa.Connection) -> None:
    for table in (threads_table, runs_table):
        table.create(conn, checkfirst=True)


def _migration_2(conn: sa.Connection) -> None:
    """The thread lease (token, epoch, heartbeat, holder) and cancel requests."""
    inspector = sa.inspect(conn)
    for table in (threads_table, runs_table):
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for name in sorted(_V1_COLUMNS[table.name] - present):
            column = table.c[name]
            ddl = column.type.compile(dialect=conn.dialect)
            extra = " NOT NULL DEFAULT 0" if name == "lease_epoch" else ""
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} {ddl}{extra}"))


# The steps are listed in migrations.STEPS["registry"]: append one there, never edit one.

_RUN_COLUMNS = {c.name for c in runs_table.columns}
_JSON_RUN = set(RUN_JSON_COLUMNS)
_UPDATABLE_RUN = _RUN_COLUMNS - {"run_id", "thread_id", "created_at"}
