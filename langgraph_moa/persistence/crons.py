"""Crons: scheduled runs in ``moa_crons``, and one row per fired tick in ``moa_cron_firings``.

A cron is a run request (``payload``: assistant, input, config, metadata...) with a
``schedule`` (a cron expression; a sixth field gives seconds, croniter's convention:
``* * * * * */2`` is every two seconds) and the time of its next tick, ``next_run_date``.
Any number of processes may run a scheduler over the same database; a tick fires once:

1. :meth:`CronStore.claim` moves ``next_run_date`` from the tick to the next one with a
   conditional ``UPDATE ... WHERE next_run_date = <tick>`` and, in the same transaction,
   inserts the firing ``(cron_id, tick)`` (its primary key): of two processes claiming the
   same tick, one updates a row and the other none.
2. The winner creates the run, then marks the firing ``done`` (:meth:`CronStore.fired`).

Clocks of the processes may disagree: a tick that has a firing row is never the next tick
again (a changed schedule restarts after the last claimed tick if the clock is behind it,
and a claim that meets an existing firing moves the cron past it instead of failing on
the same tick forever).

:meth:`CronStore.delete` removes the cron, then waits until no firing of it is still
``claimed`` (a run being created), so no run of the cron appears after it returns.
A process that dies between 1 and 2 loses that tick (at most once, never twice).
Tables come from the migration runner (component ``crons``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence import migrations

__all__ = [
    "CronFiring",
    "CronRecord",
    "CronStore",
    "InvalidScheduleError",
    "crons_table",
    "firings_table",
    "next_tick",
]

_KEY = 255
_Time = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_metadata = sa.MetaData()

crons_table = sa.Table(
    "moa_crons",
    _metadata,
    sa.Column("cron_id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(_KEY), nullable=False),
    sa.Column("assistant_id", sa.String(64), nullable=False),
    sa.Column("thread_id", sa.String(_KEY), nullable=True),
    sa.Column("schedule", sa.String(255), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=True),
    sa.Column("end_time", _Time, nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("on_run_completed", sa.String(16), nullable=True),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=True),
    sa.Column("spec", sa.JSON, nullable=True),
    sa.Column("next_run_date", _Time, nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    sa.Index("moa_crons_due_idx", "enabled", "next_run_date"),
    sa.Index("moa_crons_tenant_idx", "tenant", "created_at"),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

firings_table = sa.Table(
    "moa_cron_firings",
    _metadata,
    sa.Column("cron_id", sa.String(64), primary_key=True),
    sa.Column("tick", _Time, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)


def _create_tables(conn: sa.Connection) -> None:
    for table in (crons_table, firings_table):
        table.create(conn, checkfirst=True)


# The steps are listed in migrations.STEPS["crons"]: append one there, never edit one.


class InvalidScheduleError(ValueError):
    """A schedule croniter cannot read, or an unknown timezone."""


def next_tick(schedule: str, after: datetime, timezone: str | None = None) -> datetime:
    """The first tick of ``schedule`` strictly after ``after`` (naive UTC in, naive UTC
    out), evaluated in ``timezone`` (IANA name; default UTC)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from croniter import croniter

    if not croniter.is_valid(schedule):
        raise InvalidScheduleError(
            f"Invalid cron schedule: {schedule!r}. Use the standard cron format (minute hour "
            "day_of_month month day_of_week), e.g. '*/5 * * * *'; a sixth field gives "
            "seconds ('* * * * * */2' is every two seconds)"
        )
    try:
        zone = ZoneInfo(timezone) if timezone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(
            f"Invalid timezone: {timezone!r}. Use an IANA name such as 'America/New_York'"
        ) from None
    base = after.replace(tzinfo=UTC).astimezone(zone)
    try:
        found = croniter(schedule, base).get_next(datetime)
    except Exception as exc:  # e.g. "0 0 31 2 *": valid fields, but no such day
        raise InvalidScheduleError(
            f"Invalid cron schedule: {schedule!r} never fires ({exc})"
        ) from None
    return found.astimezone(UTC).replace(tzinfo=None)


@dataclass
class CronRecord:
    """One cron."""

    cron_id: str
    tenant: str
    assistant_id: str
    thread_id: str | None
    schedule: str
    next_run_date: datetime
    created_at: datetime
    updated_at: datetime
    enabled: bool = True
    timezone: str | None = None
    end_time: datetime | None = None
    on_run_completed: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | None = None
    """The graph's spec when the cron was made (a worker without the spec file uses it)."""

    def to_json(self) -> dict[str, Any]:
        """The API's ``Cron`` shape."""
        return {
            "cron_id": self.cron_id,
            "assistant_id": self.assistant_id,
            "thread_id": self.thread_id,
            "on_run_completed": self.on_run_completed,
            "end_time": _iso(self.end_time),
            "schedule": self.schedule,
            "timezone": self.timezone,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "user_id": None,
            "payload": self.payload,
            "next_run_date": _iso(self.next_run_date),
            "metadata": self.metadata,
            "enabled": self.enabled,
        }


@dataclass(frozen=True)
class CronFiring:
    """A claimed tick of a cron and the run it made."""

    cron_id: str
    tick: datetime
    run_id: str
    state: str
    created_at: datetime


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value is not None else None


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _key(tenant: str | None) -> str:
    return tenant or ""


def _record(row: Mapping[Any, Any]) -> CronRecord:
    data = dict(row)
    data["payload"] = dict(data["payload"] or {})
    data["metadata"] = dict(data["metadata"] or {})
    data["enabled"] = bool(data["enabled"])
    return CronRecord(**data)


FIRINGS_KEPT = timedelta(days=1)
"""How long the settled firings of a cron are kept (a tick's row is what makes it fire
once; after a day it is only history)."""

_SORTABLE = ("cron_id", "assistant_id", "thread_id", "next_run_date", "end_time", "created_at")


class CronStore:
    """Crons and their firings in SQL, per tenant (see the module docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def setup(self) -> int:
        """Create the tables through the migration runner (idempotent)."""
        return await migrations.aupgrade(self.engine, "crons")

    async def create(
        self,
        tenant: str | None,
        *,
        assistant_id: str,
        schedule: str,
        payload: Mapping[str, Any],
        thread_id: str | None = None,
        timezone: str | None = None,
        end_time: datetime | None = None,
        enabled: bool = True,
        on_run_completed: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        cron_id: str | None = None,
        spec: Mapping[str, Any] | None = None,
    ) -> CronRecord:
        """Record a cron whose first tick is the next one of ``schedule`` from now."""
        now = _now()
        row: dict[str, Any] = {
            "cron_id": cron_id or str(uuid.uuid4()),
            "tenant": _key(tenant),
            "assistant_id": assistant_id,
            "thread_id": thread_id,
            "schedule": schedule,
            "timezone": timezone,
            "end_time": end_time,
            "enabled": enabled,
            "on_run_completed": on_run_completed,
            "payload": dict(payload),
            "metadata": dict(metadata or {}),
            "spec": dict(spec) if spec is not None else None,
            "next_run_date": next_tick(schedule, now, timezone),
            "created_at": now,
            "updated_at": now,
        }
        async with self.engine.begin() as conn:
            await conn.execute(crons_table.insert().values(**row))
        return _record(row)

    async def get(self, tenant: str | None, cron_id: str) -> CronRecord | None:
        """The tenant's cron, or None."""
        query = sa.select(crons_table).where(
            crons_table.c.cron_id == cron_id, crons_table.c.tenant == _key(tenant)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _record(row) if row is not None else None

    async def update(
        self,
        tenant: str | None,
        cron_id: str,
        values: Mapping[str, Any],
        *,
        now: datetime | None = None,
    ) -> CronRecord | None:
        """Set the columns ``values`` (a changed ``schedule`` or ``timezone`` restarts
        the ticks from now, or from the last claimed tick if this process's clock is
        behind it: a tick that fired already is never the next one); None when the
        tenant has no such cron."""
        changes = dict(values)
        now = now or _now()
        async with self.engine.begin() as conn:
            query = sa.select(crons_table).where(
                crons_table.c.cron_id == cron_id, crons_table.c.tenant == _key(tenant)
            )
            if conn.dialect.name != "sqlite":
                query = query.with_for_update()
            row = (await conn.execute(query)).mappings().first()
            if row is None:
                return None
            merged = {**dict(row), **changes, "updated_at": now}
            if "schedule" in changes or "timezone" in changes:
                base = max(now, await self._last_claimed(conn, cron_id) or now)
                merged["next_run_date"] = next_tick(merged["schedule"], base, merged["timezone"])
            await conn.execute(
                crons_table.update()
                .where(crons_table.c.cron_id == cron_id)
                .values(**{k: v for k, v in merged.items() if k not in ("cron_id", "tenant")})
            )
        return _record(merged)

    async def delete(self, tenant: str | None, cron_id: str, *, settle: float = 30.0) -> bool:
        """Delete the cron and its firings; returns once no run of it is being created
        (at most ``settle`` seconds: a process that died mid-firing is not waited for).
        False when the tenant has no such cron."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                crons_table.delete().where(
                    crons_table.c.cron_id == cron_id, crons_table.c.tenant == _key(tenant)
                )
            )
        if not result.rowcount:
            return False
        deadline = time.monotonic() + settle
        claimed = sa.select(sa.func.count()).where(
            firings_table.c.cron_id == cron_id, firings_table.c.state == "claimed"
        )
        while time.monotonic() < deadline:
            async with self.engine.connect() as conn:
                if not await conn.scalar(claimed):
                    break
            await asyncio.sleep(0.05)
        async with self.engine.begin() as conn:
            await conn.execute(firings_table.delete().where(firings_table.c.cron_id == cron_id))
        return True

    def _filter(
        self,
        tenant: str | None,
        assistant_id: str | None,
        thread_id: str | None,
        enabled: bool | None,
    ) -> list[Any]:
        where: list[Any] = [crons_table.c.tenant == _key(tenant)]
        if assistant_id is not None:
            where.append(crons_table.c.assistant_id == assistant_id)
        if thread_id is not None:
            where.append(crons_table.c.thread_id == thread_id)
        if enabled is not None:
            where.append(crons_table.c.enabled == enabled)
        return where

    async def search(
        self,
        tenant: str | None,
        *,
        assistant_id: str | None = None,
        thread_id: str | None = None,
        enabled: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: str = "created_at",
        sort_order: Literal["asc", "desc"] = "desc",
    ) -> list[CronRecord]:
        """The tenant's crons matching every filter (metadata: top-level equality)."""
        if sort_by not in _SORTABLE:
            raise ValueError(f"cannot sort crons by {sort_by!r}; use one of {_SORTABLE}")
        column = crons_table.c[sort_by]
        order = column.desc() if sort_order == "desc" else column.asc()
        query = (
            sa.select(crons_table)
            .where(*self._filter(tenant, assistant_id, thread_id, enabled))
            .order_by(order, crons_table.c.cron_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        found = [_record(r) for r in rows]
        if metadata:
            found = [c for c in found if all(c.metadata.get(k) == v for k, v in metadata.items())]
        return found[offset : offset + limit]

    async def count(
        self,
        tenant: str | None,
        *,
        assistant_id: str | None = None,
        thread_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """How many crons :meth:`search` would find without paging."""
        found = await self.search(
            tenant,
            assistant_id=assistant_id,
            thread_id=thread_id,
            metadata=metadata,
            limit=2**62,
        )
        return len(found)

    async def delete_for_assistant(self, tenant: str | None, assistant_id: str) -> list[str]:
        """Delete the tenant's crons of ``assistant_id``; their ids."""
        found = await self.search(tenant, assistant_id=assistant_id, limit=2**62)
        for cron in found:
            await self.delete(tenant, cron.cron_id)
        return [c.cron_id for c in found]

    # --------------------------------------------------------------- schedulers ---

    async def due(self, now: datetime | None = None, limit: int = 100) -> list[CronRecord]:
        """Enabled crons (every tenant's) whose next tick is at or before ``now`` and
        whose ``end_time`` has not passed, earliest first."""
        now = now or _now()
        query = (
            sa.select(crons_table)
            .where(
                crons_table.c.enabled.is_(True),
                crons_table.c.next_run_date <= now,
                sa.or_(crons_table.c.end_time.is_(None), crons_table.c.end_time >= now),
            )
            .order_by(crons_table.c.next_run_date)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(r) for r in rows]

    async def next_due(self, now: datetime | None = None) -> datetime | None:
        """The earliest next tick of any enabled cron whose ``end_time`` has not passed
        (an ended cron is never claimed: its tick would stay due and the scheduler spin)."""
        now = now or _now()
        query = sa.select(sa.func.min(crons_table.c.next_run_date)).where(
            crons_table.c.enabled.is_(True),
            sa.or_(crons_table.c.end_time.is_(None), crons_table.c.end_time >= now),
        )
        async with self.engine.connect() as conn:
            found = await conn.scalar(query)
        return found if isinstance(found, datetime) else None

    @staticmethod
    async def _last_claimed(conn: Any, cron_id: str) -> datetime | None:
        """The latest tick of the cron that has a firing row (claimed, done or skipped)."""
        found = await conn.scalar(
            sa.select(sa.func.max(firings_table.c.tick)).where(firings_table.c.cron_id == cron_id)
        )
        return found if isinstance(found, datetime) else None

    async def claim(self, cron: CronRecord, run_id: str, now: datetime | None = None) -> bool:
        """Claim the tick ``cron.next_run_date`` for ``run_id``: move the cron to its
        next tick after ``now`` and record the firing, in one transaction. False when
        another process claimed it first (or the cron changed or was deleted).

        A tick that has a firing row already (the cron's ``next_run_date`` was set back
        to it, e.g. by a PATCH computed on a clock that is behind) is someone else's: the
        cron is moved past it and past its last claimed tick, so it is not stuck on a
        claim that can never succeed."""
        tick = cron.next_run_date
        now = now or _now()
        upcoming = next_tick(cron.schedule, max(now, tick), cron.timezone)
        try:
            async with self.engine.begin() as conn:
                moved = await conn.execute(
                    crons_table.update()
                    .where(
                        crons_table.c.cron_id == cron.cron_id,
                        crons_table.c.next_run_date == tick,
                        crons_table.c.enabled.is_(True),
                    )
                    .values(next_run_date=upcoming)
                )
                if moved.rowcount != 1:
                    return False
                await conn.execute(
                    firings_table.insert().values(
                        cron_id=cron.cron_id,
                        tick=tick,
                        run_id=run_id,
                        state="claimed",
                        created_at=_now(),
                    )
                )
        except sa.exc.IntegrityError:  # the tick fired already: the move is rolled back
            await self._skip_fired(cron, now)
            return False
        return True

    async def _skip_fired(self, cron: CronRecord, now: datetime) -> None:
        """Move the cron from its tick ``cron.next_run_date``, which fired already, to the
        first tick after ``now``, the tick and its last claimed tick (unless another
        process moved it meanwhile)."""
        tick = cron.next_run_date
        async with self.engine.begin() as conn:
            last = await self._last_claimed(conn, cron.cron_id) or tick
            await conn.execute(
                crons_table.update()
                .where(crons_table.c.cron_id == cron.cron_id, crons_table.c.next_run_date == tick)
                .values(next_run_date=next_tick(cron.schedule, max(now, tick, last), cron.timezone))
            )

    async def fired(self, cron_id: str, tick: datetime, state: str = "done") -> None:
        """Mark the firing ``(cron_id, tick)``: ``done`` (its run exists) or ``skipped``;
        the cron's settled firings older than :data:`FIRINGS_KEPT` are deleted."""
        async with self.engine.begin() as conn:
            await conn.execute(
                firings_table.update()
                .where(firings_table.c.cron_id == cron_id, firings_table.c.tick == tick)
                .values(state=state)
            )
            await conn.execute(
                firings_table.delete().where(
                    firings_table.c.cron_id == cron_id,
                    firings_table.c.state != "claimed",
                    firings_table.c.tick < tick - FIRINGS_KEPT,
                )
            )

    async def firings(self, cron_id: str) -> list[CronFiring]:
        """The recorded firings of a cron, oldest first."""
        query = (
            sa.select(firings_table)
            .where(firings_table.c.cron_id == cron_id)
            .order_by(firings_table.c.tick)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [CronFiring(**dict(r)) for r in rows]
