"""Evaluation results in the run store: one row per (evaluation, kind, spec, item).

Tables (created on the store's database by :meth:`EvalStore.setup`):

* ``moa_eval_results``: ``kind`` is ``answer`` (a spec's answer to an item, its score,
  tokens, cost and latency) or ``judge`` (a pairwise judgment of a spec's answer against
  the baseline's). An interrupted evaluation resumes by skipping the rows it finds.
Versions are kept by the store's migration runner (component ``eval`` of
:mod:`langgraph_moa.persistence.migrations`); a database written by a newer version
of this code is refused instead of misread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence import migrations
from langgraph_moa.persistence.engines import get_async_engine, release_async_engine
from langgraph_moa.persistence.errors import SchemaVersionError

__all__ = ["SCHEMA_VERSION", "EvalSchemaError", "EvalStore", "ResultRow"]

Kind = Literal["answer", "judge"]

_metadata = sa.MetaData()
_Text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_Time = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

results_table = sa.Table(
    "moa_eval_results",
    _metadata,
    sa.Column("eval_id", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("spec", sa.String(150), primary_key=True),
    sa.Column("item_id", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("score", sa.Double, nullable=True),
    sa.Column("answer", _Text, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("input_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("output_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("calls", sa.Integer, nullable=False, default=0),
    sa.Column("cost", sa.Double, nullable=False, default=0.0),
    sa.Column("latency_s", sa.Double, nullable=True),
    sa.Column("created_at", _Time, nullable=False),
)


def _migration_1(conn: sa.Connection) -> None:
    results_table.create(conn, checkfirst=True)


migrations.STEPS.setdefault(
    "eval",
    [
        migrations.Step("create moa_eval_results", _migration_1),
        migrations.Step(
            "moa_eval_results.score, cost, latency_s: FLOAT columns as DOUBLE on MySQL/MariaDB",
            migrations.double_columns(
                "moa_eval_results", "score", "cost", "latency_s", module="langgraph_moa.eval.store"
            ),
        ),
    ],
)
"""Ordered schema changes of the ``eval`` component; append a step, never edit one."""
SCHEMA_VERSION = migrations.schema_version("eval")

EvalSchemaError = SchemaVersionError
"""The database holds evaluation tables of a newer, unknown schema version."""


@dataclass
class ResultRow:
    """One recorded result."""

    eval_id: str
    kind: Kind
    spec: str
    item_id: str
    status: str
    score: float | None = None
    answer: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    cost: float = 0.0
    latency_s: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_FIELDS = [c.name for c in results_table.columns if c.name != "created_at"]


class EvalStore:
    """Reads and writes ``moa_eval_results`` through a SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine

    @classmethod
    def from_url(cls, url: str | None) -> EvalStore:
        """A store on ``url`` (else ``MOA_DB_URL``, else the default SQLite file)."""
        from langgraph_moa.runtime.store import resolve_db_url

        return cls(get_async_engine(resolve_db_url(url)), owns_engine=True)

    async def __aenter__(self) -> EvalStore:
        try:
            await self.setup()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._owns_engine:
            self._owns_engine = False
            await release_async_engine(self.engine)

    async def setup(self) -> int:
        """Create or upgrade the tables (idempotent, safe to race); return the version.

        Raises :class:`EvalSchemaError` if the database was written by a newer version.
        """
        return await migrations.aupgrade(self.engine, "eval")

    async def schema_version(self) -> int:
        """The applied schema version (0 before :meth:`setup`)."""
        async with self.engine.connect() as conn:
            found = await conn.run_sync(migrations.current_version, "eval")
        return found or 0

    async def record(self, row: ResultRow) -> bool:
        """Insert ``row``; False if that (eval, kind, spec, item) was already recorded."""
        values = {name: getattr(row, name) for name in _FIELDS}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    results_table.insert().values(**values, created_at=datetime.now(UTC))
                )
        except sa.exc.IntegrityError:
            return False
        return True

    async def results(self, eval_id: str, kind: Kind | None = None) -> list[ResultRow]:
        """The recorded rows of ``eval_id`` (of one ``kind``), oldest first."""
        t = results_table
        query = sa.select(*(t.c[name] for name in _FIELDS)).where(t.c.eval_id == eval_id)
        if kind is not None:
            query = query.where(t.c.kind == kind)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(t.c.created_at))).mappings().all()
        return [ResultRow(**{**row, "details": row["details"] or {}}) for row in rows]

    async def clear(self, eval_id: str, item_ids: Sequence[str] | None = None) -> int:
        """Delete every row of ``eval_id`` (of ``item_ids`` only, when given); return how
        many."""
        query = results_table.delete().where(results_table.c.eval_id == eval_id)
        if item_ids is not None:
            query = query.where(results_table.c.item_id.in_(list(item_ids)))
        async with self.engine.begin() as conn:
            done = await conn.execute(query)
        return int(done.rowcount or 0)
