"""Assistants with versions: ``moa_assistants`` and ``moa_assistant_versions``.

An assistant is a graph (a served spec, by ``graph_id``) with its own ``config``,
``context``, ``metadata``, ``name`` and ``description``. Every tenant has its own
assistants (the tenant is part of each key; ``None``, the single tenant of an open
server, is stored as ``""``). Creating an assistant writes version 1; each
:meth:`AssistantStore.update` writes the next version and makes it the assistant's
current one; :meth:`AssistantStore.set_latest` points the assistant back at any
version. Tables come from the migration runner (component ``assistants``).

>>> store = AssistantStore(engine)
>>> await store.setup()
>>> a = await store.create("tenant-a", graph_id="team", config={"recursion_limit": 50})
>>> a = await store.update("tenant-a", a.assistant_id, metadata={"owner": "ann"})  # v2
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from langgraph_moa.persistence import migrations

__all__ = [
    "AssistantExistsError",
    "AssistantNotFoundError",
    "AssistantRecord",
    "AssistantStore",
    "assistants_table",
    "versions_table",
]

_KEY = 255
_Time = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_metadata = sa.MetaData()


def _data_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("graph_id", sa.String(100), nullable=False),
        sa.Column("config", sa.JSON, nullable=True),
        sa.Column("context", sa.JSON, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
    ]


assistants_table = sa.Table(
    "moa_assistants",
    _metadata,
    sa.Column("tenant", sa.String(_KEY), primary_key=True),
    sa.Column("assistant_id", sa.String(64), primary_key=True),
    *_data_columns(),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

versions_table = sa.Table(
    "moa_assistant_versions",
    _metadata,
    sa.Column("tenant", sa.String(_KEY), primary_key=True),
    sa.Column("assistant_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    *_data_columns(),
    sa.Column("created_at", _Time, nullable=False),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)


def _create_tables(conn: sa.Connection) -> None:
    for table in (assistants_table, versions_table):
        table.create(conn, checkfirst=True)


# The steps are listed in migrations.STEPS["assistants"]: append one there, never edit one.


class AssistantNotFoundError(LookupError):
    """No such assistant (or version) for this tenant."""


class AssistantExistsError(ValueError):
    """An assistant with this id exists already (``if_exists="raise"``)."""


@dataclass
class AssistantRecord:
    """One assistant at one version (``version`` is its current one for an assistant)."""

    assistant_id: str
    graph_id: str
    version: int
    name: str
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The API's ``Assistant`` shape."""
        return {
            "assistant_id": self.assistant_id,
            "graph_id": self.graph_id,
            "config": self.config,
            "context": self.context,
            "metadata": self.metadata,
            "version": self.version,
            "name": self.name,
            "description": self.description,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }

    def version_json(self) -> dict[str, Any]:
        """The API's ``AssistantVersion`` shape (no ``updated_at``)."""
        out = self.to_json()
        del out["updated_at"]
        return out


def _iso(value: datetime) -> str:
    return value.replace(tzinfo=UTC).isoformat()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _key(tenant: str | None) -> str:
    return tenant or ""


async def _make_current(
    conn: AsyncConnection,
    tenant: str | None,
    assistant_id: str,
    data: dict[str, Any],
    version: int,
    now: datetime,
) -> None:
    """Copy a version's fields into the assistant's current row."""
    await conn.execute(
        assistants_table.update()
        .where(
            assistants_table.c.tenant == _key(tenant),
            assistants_table.c.assistant_id == assistant_id,
        )
        .values(**data, version=version, updated_at=now)
    )


def _record(row: Mapping[Any, Any], updated_at: datetime | None = None) -> AssistantRecord:
    return AssistantRecord(
        assistant_id=row["assistant_id"],
        graph_id=row["graph_id"],
        version=int(row["version"]),
        name=row["name"],
        description=row["description"],
        config=dict(row["config"] or {}),
        context=dict(row["context"] or {}),
        metadata=dict(row["metadata"] or {}),
        created_at=row["created_at"],
        updated_at=updated_at or row.get("updated_at") or row["created_at"],
    )


def sync_config_context(
    config: dict[str, Any] | None, context: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Keep ``config.configurable`` and ``context`` equal, as LangGraph Server does;
    raises ``ValueError`` when both are given."""
    config = dict(config or {})
    if config.get("configurable") and context:
        raise ValueError(
            "give `config.configurable` or `context`, not both (context replaces configurable)"
        )
    if config.get("configurable"):
        context = dict(config["configurable"])
    elif context:
        config["configurable"] = dict(context)
    return config, context


class AssistantStore:
    """Assistants and their versions in SQL, per tenant (see the module docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def setup(self) -> int:
        """Create the tables through the migration runner (idempotent)."""
        return await migrations.aupgrade(self.engine, "assistants")

    async def _current(
        self, conn: AsyncConnection, tenant: str | None, assistant_id: str, lock: bool = False
    ) -> Mapping[Any, Any] | None:
        query = sa.select(assistants_table).where(
            assistants_table.c.tenant == _key(tenant),
            assistants_table.c.assistant_id == assistant_id,
        )
        if lock and conn.dialect.name != "sqlite":
            query = query.with_for_update()
        return (await conn.execute(query)).mappings().first()

    async def get(self, tenant: str | None, assistant_id: str) -> AssistantRecord | None:
        """The tenant's assistant at its current version, or None."""
        async with self.engine.connect() as conn:
            row = await self._current(conn, tenant, assistant_id)
        return _record(row) if row is not None else None

    async def create(
        self,
        tenant: str | None,
        *,
        graph_id: str,
        assistant_id: str | None = None,
        config: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        description: str | None = None,
        if_exists: Literal["raise", "do_nothing"] = "raise",
    ) -> AssistantRecord:
        """Create version 1; an existing id raises :class:`AssistantExistsError` or, with
        ``if_exists="do_nothing"``, returns the existing assistant."""
        config, context = sync_config_context(config, context)
        assistant_id = assistant_id or str(uuid.uuid4())
        now = _now()
        data = {
            "tenant": _key(tenant),
            "assistant_id": assistant_id,
            "graph_id": graph_id,
            "config": config,
            "context": context or {},
            "metadata": dict(metadata or {}),
            "name": name or "Untitled",
            "description": description,
        }
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    assistants_table.insert().values(
                        **data, version=1, created_at=now, updated_at=now
                    )
                )
                await conn.execute(
                    versions_table.insert().values(**data, version=1, created_at=now)
                )
        except sa.exc.IntegrityError:
            existing = await self.get(tenant, assistant_id)
            if existing is None:  # deleted meanwhile: a conflict all the same
                raise AssistantExistsError(f"Assistant {assistant_id} already exists") from None
            if if_exists == "do_nothing":
                return existing
            raise AssistantExistsError(f"Assistant {assistant_id} already exists") from None
        return _record({**data, "version": 1, "created_at": now, "updated_at": now})

    async def update(
        self,
        tenant: str | None,
        assistant_id: str,
        *,
        graph_id: str | None = None,
        config: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        description: str | None = None,
    ) -> AssistantRecord:
        """Write the next version (fields not given are kept; ``metadata`` is merged into
        the current one) and make it current."""
        config, context = sync_config_context(config, context)
        async with self.engine.begin() as conn:
            row = await self._current(conn, tenant, assistant_id, lock=True)
            if row is None:
                raise AssistantNotFoundError(f"Assistant {assistant_id} not found")
            top = await conn.scalar(
                sa.select(sa.func.max(versions_table.c.version)).where(
                    versions_table.c.tenant == _key(tenant),
                    versions_table.c.assistant_id == assistant_id,
                )
            )
            version = int(top or 0) + 1
            now = _now()
            data = {
                "graph_id": graph_id if graph_id is not None else row["graph_id"],
                "config": config if config else dict(row["config"] or {}),
                "context": context if context is not None else dict(row["context"] or {}),
                "metadata": {**(row["metadata"] or {}), **(metadata or {})},
                "name": name if name is not None else row["name"],
                "description": description if description is not None else row["description"],
            }
            try:
                await conn.execute(
                    versions_table.insert().values(
                        tenant=_key(tenant),
                        assistant_id=assistant_id,
                        version=version,
                        created_at=now,
                        **data,
                    )
                )
            except sa.exc.IntegrityError:  # a concurrent update took this number (SQLite)
                raise AssistantExistsError(
                    f"Assistant {assistant_id} was updated concurrently; retry"
                ) from None
            await _make_current(conn, tenant, assistant_id, data, version, now)
        return _record(
            {
                **data,
                "assistant_id": assistant_id,
                "version": version,
                "created_at": row["created_at"],
            },
            updated_at=now,
        )

    async def set_latest(
        self, tenant: str | None, assistant_id: str, version: int
    ) -> AssistantRecord:
        """Make ``version`` the assistant's current one."""
        async with self.engine.begin() as conn:
            row = await self._current(conn, tenant, assistant_id, lock=True)
            if row is None:
                raise AssistantNotFoundError(f"Assistant {assistant_id} not found")
            found = (
                (
                    await conn.execute(
                        sa.select(versions_table).where(
                            versions_table.c.tenant == _key(tenant),
                            versions_table.c.assistant_id == assistant_id,
                            versions_table.c.version == version,
                        )
                    )
                )
                .mappings()
                .first()
            )
            if found is None:
                raise AssistantNotFoundError(
                    f"Version {version} not found for assistant {assistant_id}"
                )
            now = _now()
            data = {
                k: found[k]
                for k in ("graph_id", "config", "context", "metadata", "name", "description")
            }
            await _make_current(conn, tenant, assistant_id, data, version, now)
        return _record(
            {
                **data,
                "assistant_id": assistant_id,
                "version": version,
                "created_at": row["created_at"],
            },
            updated_at=now,
        )

    async def versions(
        self,
        tenant: str | None,
        assistant_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[AssistantRecord]:
        """The assistant's versions, newest first, whose metadata contains ``metadata``."""
        query = (
            sa.select(versions_table)
            .where(
                versions_table.c.tenant == _key(tenant),
                versions_table.c.assistant_id == assistant_id,
            )
            .order_by(versions_table.c.version.desc())
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        found = [_record(r) for r in rows]
        if metadata:
            found = [v for v in found if all(v.metadata.get(k) == x for k, x in metadata.items())]
        return found[offset : offset + limit]

    async def list(
        self, tenant: str | None, *, graph_id: str | None = None
    ) -> list[AssistantRecord]:
        """Every assistant of the tenant (of ``graph_id``), current versions."""
        query = sa.select(assistants_table).where(assistants_table.c.tenant == _key(tenant))
        if graph_id is not None:
            query = query.where(assistants_table.c.graph_id == graph_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(r) for r in rows]

    async def delete(self, tenant: str | None, assistant_id: str) -> bool:
        """Delete the assistant and its versions; False when there was none."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                assistants_table.delete().where(
                    assistants_table.c.tenant == _key(tenant),
                    assistants_table.c.assistant_id == assistant_id,
                )
            )
            await conn.execute(
                versions_table.delete().where(
                    versions_table.c.tenant == _key(tenant),
                    versions_table.c.assistant_id == assistant_id,
                )
            )
        return bool(result.rowcount)
