"""The run registry: threads and runs, next to the checkpoints, in the same SQL store.

The checkpointer keeps a run's state; the registry keeps what the state does not
say: which runs exist, their status, who is running them, and what they cost. It
is what ``moa runs`` lists, what ``moa resume`` checks, and what the HTTP server and
the workers read and write.

Tables (prefix ``moa_``, created by :meth:`RunRegistry.setup` through the migration
runner, component ``registry`` of :mod:`.migrations`):

* ``moa_threads``: ``thread_id``, ``created_at``, ``updated_at``, ``metadata`` (JSON),
  ``status`` (``idle | busy | interrupted | error``), ``owner`` (a tenant, nullable),
  ``spec_name``, and the thread's *lease*: ``lease_token`` (NULL = free), ``lease_epoch``
  (incremented at every acquisition), ``lease_heartbeat_at``, ``lease_host``/``lease_pid``
  (the holding process), ``lease_run_id`` (see :meth:`RunRegistry.acquire_lease`).
* ``moa_runs``: ``run_id``, ``thread_id``, ``spec_name``, ``spec_hash``, ``spec``
  (the spec as JSON), ``spec_source`` (the file it came from, if any), ``status``
  (``pending | running | interrupted | success | error | cancelled``), ``input``,
  ``answer``, ``error``, ``waiting_for`` (the interrupts a paused run waits on),
  ``attempts``, owner process (``owner_host``, ``owner_pid``, ``owner_token``) with
  ``heartbeat_at``, ``created_at``, ``updated_at``, ``started_at``, ``finished_at``,
  ``usage`` (totals), ``metadata`` and ``options`` (JSON for callers' own use),
  ``parent_run_id`` and ``checkpoint_id`` (where a fork started), ``cancel_requested_at``
  (see :meth:`RunRegistry.request_cancel`).

Usage (async only; the engine is a SQLAlchemy ``AsyncEngine``)::

    registry = RunRegistry.from_engine(saver.engine)   # share the checkpointer's engine
    # or: async with RunRegistry.from_url("sqlite:///moa.sqlite") as registry:
    await registry.setup()
    await registry.create_thread("t1", metadata={"user": "ann"}, owner="tenant-a")
    run = await registry.create_run("t1", spec=spec_json, spec_name="team",
                                    spec_hash=h, input={"task": "..."}, owner=Owner.current())
    await registry.heartbeat(run.run_id, Owner.current())      # False: ownership lost
    await registry.update_run(run.run_id, owner=Owner.current(), status="success",
                              answer="...", release=True)

Ownership: a run is owned by at most one live process. :meth:`RunRegistry.claim_run`
takes a run atomically (a compare-and-swap on ``owner_token``) when it is free, owned
by the caller, or its owner is gone: heartbeat older than ``stale_after`` seconds, or
a process id that is dead on this host. Otherwise it raises :class:`RunOwnedError`
naming the owner. Updates passed ``owner=`` are fenced: they raise
:class:`OwnershipLostError` when another process has taken the run since.

Status changes of a run also set its thread's status (``running``/``pending`` ->
``busy``, ``interrupted`` -> ``interrupted``, ``error`` -> ``error``, others ->
``idle``) in the same transaction, unless ``sync_thread=False``.

Times are naive UTC ``datetime`` values taken from this process's clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from langgraph_moa.persistence import migrations
from langgraph_moa.persistence.engines import (
    READ_ONLY,
    get_async_engine,
    release_async_engine,
)
from langgraph_moa.persistence.events import events

__all__ = [
    "CANCEL_CHANNEL",
    "RUN_STATUSES",
    "THREAD_STATUSES",
    "LeaseHeldError",
    "Owner",
    "OwnershipLostError",
    "RegistryError",
    "RunNotFoundError",
    "RunOwnedError",
    "RunRecord",
    "RunRegistry",
    "RunStatus",
    "ThreadExistsError",
    "ThreadNotFoundError",
    "ThreadRecord",
    "ThreadStatus",
    "pid_alive",
    "thread_status_for",
]

RunStatus = Literal["pending", "running", "interrupted", "success", "error", "cancelled"]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
THREAD_STATUSES: tuple[str, ...] = get_args(ThreadStatus)
ACTIVE_STATUSES = ("pending", "running")
DEFAULT_STALE_AFTER = 30.0
"""Seconds without a heartbeat after which a run's owner counts as gone."""
CANCEL_CHANNEL = "moa_run_cancel"
"""PostgreSQL NOTIFY channel of cancel requests (payload: the run id)."""

_KEY = 255  # thread ids: fits a MySQL utf8mb4 index key


# ----------------------------------------------------------------------- errors ---


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why and what to do."""


class ThreadNotFoundError(RegistryError, KeyError):
    """No thread with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "thread not found"


class ThreadExistsError(RegistryError):
    """A thread with that id already exists."""


class RunNotFoundError(RegistryError, KeyError):
    """No run with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class RunOwnedError(RegistryError):
    """The run is owned by another live process."""

    def __init__(self, run: RunRecord, message: str) -> None:
        super().__init__(message)
        self.run = run


class OwnershipLostError(RegistryError):
    """Another process took the run over; this process must stop writing to it."""


class LeaseHeldError(RegistryError):
    """The thread's lease is held by another live process (it runs a run of the thread)."""

    def __init__(self, thread: ThreadRecord, message: str) -> None:
        super().__init__(message)
        self.thread = thread


def _describe_lease(thread: ThreadRecord, now: datetime) -> str:
    beat = ""
    if thread.lease_heartbeat_at is not None:
        beat = f", heartbeat {(now - thread.lease_heartbeat_at).total_seconds():.0f}s ago"
    run = f"run {thread.lease_run_id} " if thread.lease_run_id else "a run "
    return (
        f"thread {thread.thread_id} is busy: {run}holds its lease (pid {thread.lease_pid} on "
        f"{thread.lease_host}{beat})"
    )


# ----------------------------------------------------------------------- owners ---


@dataclass(frozen=True)
class Owner:
    """A process that owns runs: host name, process id and a token unique to it."""

    host: str
    pid: int
    token: str

    @classmethod
    def current(cls) -> Owner:
        """This process (the same token for the life of the process)."""
        global _CURRENT
        if _CURRENT is None or _CURRENT.pid != os.getpid():  # new after fork()
            _CURRENT = cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)
        return _CURRENT

    @classmethod
    def new(cls) -> Owner:
        """A fresh owner of this process (a new token), e.g. one per worker task."""
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


_CURRENT: Owner | None = None


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


# ---------------------------------------------------------------------- records ---


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value is not None else None


@dataclass
class ThreadRecord:
    """A row of ``moa_threads``."""

    thread_id: str
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    status: ThreadStatus = "idle"
    owner: str | None = None
    spec_name: str | None = None
    lease_token: str | None = None
    lease_epoch: int = 0
    lease_heartbeat_at: datetime | None = None
    lease_host: str | None = None
    lease_pid: int | None = None
    lease_run_id: str | None = None

    def lease_gone(
        self, *, stale_after: float = DEFAULT_STALE_AFTER, now: datetime | None = None
    ) -> bool:
        """True when the thread's lease is held by a process that is no longer alive:
        no heartbeat for ``stale_after`` seconds, or a dead process id on this host."""
        if self.lease_token is None:
            return False
        now = now or _now()
        beat = self.lease_heartbeat_at
        if beat is None or now - beat > timedelta(seconds=stale_after):
            return True
        return (
            self.lease_host == socket.gethostname()
            and self.lease_pid is not None
            and not pid_alive(self.lease_pid)
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (times in ISO 8601 UTC), without the lease."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _THREAD_PUBLIC}
        out["created_at"], out["updated_at"] = _iso(self.created_at), _iso(self.updated_at)
        return out


_THREAD_PUBLIC = (
    "thread_id",
    "created_at",
    "updated_at",
    "metadata",
    "status",
    "owner",
    "spec_name",
)


@dataclass
class RunRecord:
    """A row of ``moa_runs``."""

    run_id: str
    thread_id: str
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    spec_name: str | None = None
    spec_hash: str | None = None
    spec: dict[str, Any] | None = None
    spec_source: str | None = None
    input: Any = None
    answer: str | None = None
    error: str | None = None
    waiting_for: Any = None
    attempts: int = 0
    owner_host: str | None = None
    owner_pid: int | None = None
    owner_token: str | None = None
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None
    checkpoint_id: str | None = None
    cancel_requested_at: datetime | None = None

    @property
    def owner(self) -> Owner | None:
        """The owning process, or None when the run is free."""
        if self.owner_token is None:
            return None
        return Owner(self.owner_host or "?", self.owner_pid or 0, self.owner_token)

    def owner_gone(
        self, *, stale_after: float = DEFAULT_STALE_AFTER, now: datetime | None = None
    ) -> bool:
        """True when the run has an owner that is no longer alive (see module docstring)."""
        if self.owner_token is None:
            return False
        now = now or _now()
        if self.heartbeat_at is None or now - self.heartbeat_at > timedelta(seconds=stale_after):
            return True
        return (
            self.owner_host == socket.gethostname()
            and self.owner_pid is not None
            and not pid_alive(self.owner_pid)
        )

    def describe_owner(self, now: datetime | None = None) -> str:
        """``pid 123 on host (heartbeat 2s ago)``."""
        if self.owner_token is None:
            return "no process"
        beat = ""
        if self.heartbeat_at is not None:
            beat = f" (heartbeat {((now or _now()) - self.heartbeat_at).total_seconds():.0f}s ago)"
        return f"pid {self.owner_pid} on {self.owner_host}{beat}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (times in ISO 8601 UTC)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in (
            "created_at",
            "updated_at",
            "heartbeat_at",
            "started_at",
            "finished_at",
            "cancel_requested_at",
        ):
            out[name] = _iso(out[name])
        return out


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
_JSON_RUN = {"spec", "input", "waiting_for", "usage", "metadata", "options"}
_UPDATABLE_RUN = _RUN_COLUMNS - {"run_id", "thread_id", "created_at"}


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (unknown objects become their ``str``)."""
    if value is None:
        return None
    return json.loads(json.dumps(value, default=str))


def thread_status_for(run_status: str) -> ThreadStatus:
    """The thread status that goes with a run status."""
    if run_status in ACTIVE_STATUSES:
        return "busy"
    if run_status == "interrupted":
        return "interrupted"
    if run_status == "error":
        return "error"
    return "idle"


def _check_status(status: str, allowed: Sequence[str], what: str) -> None:
    if status not in allowed:
        raise ValueError(f"unknown {what} status {status!r}; use one of {', '.join(allowed)}")


# --------------------------------------------------------------------- registry ---


class RunRegistry:
    """Threads and runs in ``moa_threads``/``moa_runs`` (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self._event_log = False

    @classmethod
    def from_url(cls, url: str | sa.URL, **engine_kwargs: Any) -> RunRegistry:
        """A registry on the process's engine of ``url`` (:mod:`.engines`; given back by
        :meth:`aclose`)."""
        return cls(get_async_engine(url, **engine_kwargs), owns_engine=True)

    @classmethod
    def from_engine(cls, engine: AsyncEngine | Engine) -> RunRegistry:
        """A registry on a checkpointer's engine (``saver.engine``); a sync engine's URL
        is reopened with an async driver."""
        if isinstance(engine, AsyncEngine):
            return cls(engine)
        if isinstance(engine, Engine):
            return cls.from_url(engine.url)
        raise TypeError(f"expected a SQLAlchemy Engine or AsyncEngine, got {type(engine)}")

    async def aclose(self) -> None:
        """Give back the engine if :meth:`from_url` took it."""
        if self._owns_engine:
            self._owns_engine = False
            await release_async_engine(self.engine)

    async def __aenter__(self) -> RunRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only (on SQLite a snapshot that never takes, or waits
        for, the write lock: the polls of many processes do not queue behind writers)."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            yield conn

    @property
    def dialect(self) -> str:
        """``sqlite``, ``postgresql``, ``mysql`` or ``mariadb``."""
        return self.engine.dialect.name

    # ------------------------------------------------------------------ setup ---

    async def setup(self) -> int:
        """Apply missing migrations (idempotent, safe to race); return the schema version."""
        return await migrations.aupgrade(self.engine, "registry")

    async def schema_version(self) -> int:
        """The applied schema version (0 before :meth:`setup`)."""
        async with self.engine.connect() as conn:
            found = await conn.run_sync(migrations.current_version, "registry")
        return found or 0

    # ---------------------------------------------------------------- threads ---

    async def create_thread(
        self,
        thread_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
        spec_name: str | None = None,
        status: ThreadStatus = "idle",
        if_exists: Literal["raise", "do_nothing"] = "raise",
    ) -> ThreadRecord:
        """Create a thread; with ``if_exists="do_nothing"`` return the existing one."""
        _check_status(status, THREAD_STATUSES, "thread")
        thread_id = thread_id or str(uuid.uuid4())
        if len(thread_id) > _KEY:
            raise ValueError(f"thread id is {len(thread_id)} characters; at most {_KEY}")
        now = _now()
        row = {
            "thread_id": thread_id,
            "created_at": now,
            "updated_at": now,
            "metadata": _jsonable(dict(metadata or {})),
            "status": status,
            "owner": owner,
            "spec_name": spec_name,
        }
        existing = await self.get_thread(thread_id)
        if existing is None:
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(threads_table.insert().values(**row))
                return ThreadRecord(**row)
            except sa.exc.IntegrityError:
                existing = await self.get_thread(thread_id)  # created at the same time
        if existing is None:  # pragma: no cover - deleted in between
            raise ThreadNotFoundError(f"thread {thread_id!r} vanished while being created")
        if if_exists == "raise":
            raise ThreadExistsError(
                f"thread {thread_id!r} already exists; pick another id or use it as it is"
            )
        return existing

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        """The thread, or None."""
        async with self._reading() as conn:
            return await self._thread(conn, thread_id)

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        replace_metadata: bool = False,
        status: ThreadStatus | None = None,
        owner: str | None = None,
        spec_name: str | None = None,
        check_metadata: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> ThreadRecord:
        """Change a thread; ``metadata`` is merged into the stored one unless
        ``replace_metadata``. ``check_metadata`` sees the resulting metadata in the same
        transaction, with the row locked, and may raise to refuse the change."""
        if status is not None:
            _check_status(status, THREAD_STATUSES, "thread")
        async with self.engine.begin() as conn:
            thread = await self._thread(conn, thread_id, lock=True)
            if thread is None:
                raise ThreadNotFoundError(f"no thread {thread_id!r}")
            values: dict[str, Any] = {"updated_at": _now()}
            if metadata is not None:
                merged = dict(metadata) if replace_metadata else {**thread.metadata, **metadata}
                if check_metadata is not None:
                    check_metadata(merged)
                values["metadata"] = _jsonable(merged)
            if status is not None:
                values["status"] = status
            if owner is not None:
                values["owner"] = owner
            if spec_name is not None:
                values["spec_name"] = spec_name
            await conn.execute(
                threads_table.update()
                .where(threads_table.c.thread_id == thread_id)
                .values(**values)
            )
            for key, value in values.items():
                setattr(thread, key, value)
            return thread

    def _thread_filter(
        self,
        metadata: Mapping[str, Any] | None,
        status: str | None,
        owner: str | None,
        thread_ids: Sequence[str] | None,
    ) -> tuple[list[Any], dict[str, Any]]:
        """SQL conditions, and the metadata items only Python can compare."""
        where: list[Any] = []
        rest: dict[str, Any] = {}
        if status is not None:
            _check_status(status, THREAD_STATUSES, "thread")
            where.append(threads_table.c.status == status)
        if owner is not None:
            where.append(threads_table.c.owner == owner)
        if thread_ids is not None:
            where.append(threads_table.c.thread_id.in_(list(thread_ids)))
        col = threads_table.c.metadata
        for key, value in (metadata or {}).items():
            item = col[key]
            if isinstance(value, bool):
                where.append(item.as_boolean() == value)
            elif isinstance(value, int):
                where.append(item.as_integer() == value)
            elif isinstance(value, float):
                where.append(item.as_float() == value)
            elif isinstance(value, str):
                where.append(item.as_string() == value)
            else:  # None, lists and objects: compared after loading
                rest[key] = value
        return where, rest

    async def search_threads(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        status: ThreadStatus | None = None,
        owner: str | None = None,
        thread_ids: Sequence[str] | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: Literal["thread_id", "created_at", "updated_at", "status"] = "created_at",
        sort_order: Literal["asc", "desc"] = "desc",
    ) -> list[ThreadRecord]:
        """Threads whose metadata contains every item of ``metadata`` (top-level equality),
        with the given status and owner, sorted and paged."""
        if sort_by not in ("thread_id", "created_at", "updated_at", "status"):
            raise ValueError(f"cannot sort threads by {sort_by!r}")
        where, rest = self._thread_filter(metadata, status, owner, thread_ids)
        column = threads_table.c[sort_by]
        order = [column.desc() if sort_order == "desc" else column.asc()]
        order.append(
            threads_table.c.thread_id.desc()
            if sort_order == "desc"
            else threads_table.c.thread_id.asc()
        )
        query = sa.select(threads_table).where(*where).order_by(*order)
        if not rest:
            query = query.limit(limit).offset(offset)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        found = [self._thread_record(r) for r in rows]
        if rest:
            found = [
                t for t in found if all(t.metadata.get(k, _MISSING) == v for k, v in rest.items())
            ][offset : offset + limit]
        return found

    async def count_threads(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        status: ThreadStatus | None = None,
        owner: str | None = None,
    ) -> int:
        """How many threads :meth:`search_threads` would find without paging."""
        where, rest = self._thread_filter(metadata, status, owner, None)
        if rest:
            return len(
                await self.search_threads(
                    metadata=metadata, status=status, owner=owner, limit=2**62, offset=0
                )
            )
        async with self._reading() as conn:
            query = sa.select(sa.func.count()).select_from(threads_table).where(*where)
            return int(await conn.scalar(query) or 0)

    async def delete_thread(self, thread_id: str) -> bool:
        """Delete a thread, its runs and their events in one transaction; False if there
        was none. (Checkpoints are the checkpointer's: call its ``adelete_thread`` too.)"""
        async with self.engine.begin() as conn:
            if await self._has_event_log(conn):
                runs = sa.select(runs_table.c.run_id).where(runs_table.c.thread_id == thread_id)
                await conn.execute(events.delete().where(events.c.run_id.in_(runs)))
            await conn.execute(runs_table.delete().where(runs_table.c.thread_id == thread_id))
            result = await conn.execute(
                threads_table.delete().where(threads_table.c.thread_id == thread_id)
            )
            return bool(result.rowcount)

    async def _has_event_log(self, conn: AsyncConnection) -> bool:
        if not self._event_log:  # once there, it stays (checked again while missing)
            self._event_log = await conn.run_sync(lambda c: sa.inspect(c).has_table(events.name))
        return self._event_log

    # ------------------------------------------------------------------- runs ---

    async def create_run(
        self,
        thread_id: str,
        *,
        run_id: str | None = None,
        status: RunStatus = "pending",
        spec: Mapping[str, Any] | None = None,
        spec_name: str | None = None,
        spec_hash: str | None = None,
        spec_source: str | None = None,
        input: Any = None,
        metadata: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        checkpoint_id: str | None = None,
        owner: Owner | None = None,
        thread_metadata: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        queued_by: Owner | None = None,
    ) -> RunRecord:
        """Create a run (and its thread if missing). With ``owner`` the run is created
        claimed by that process: ``running``, one attempt, heartbeat now. With
        ``queued_by`` it is ``pending`` and held by that process (its heartbeat says the
        queue is alive, so no other process takes the run as an orphan)."""
        _check_status(status, RUN_STATUSES, "run")
        run_id = run_id or str(uuid.uuid4())
        now = _now()
        if owner is not None:
            status = "running"
        row: dict[str, Any] = {
            "run_id": run_id,
            "thread_id": thread_id,
            "status": status,
            "created_at": now,
            "updated_at": now,
            "spec_name": spec_name,
            "spec_hash": spec_hash,
            "spec": _jsonable(dict(spec) if spec is not None else None),
            "spec_source": spec_source,
            "input": _jsonable(input),
            "attempts": 1 if owner is not None else 0,
            "usage": {},
            "metadata": _jsonable(dict(metadata or {})),
            "options": _jsonable(dict(options or {})),
            "parent_run_id": parent_run_id,
            "checkpoint_id": checkpoint_id,
        }
        if owner is not None:
            row.update(
                owner_host=owner.host,
                owner_pid=owner.pid,
                owner_token=owner.token,
                heartbeat_at=now,
                started_at=now,
            )
        elif queued_by is not None:
            row.update(
                owner_host=queued_by.host,
                owner_pid=queued_by.pid,
                owner_token=queued_by.token,
                heartbeat_at=now,
            )
        await self.create_thread(
            thread_id,
            metadata=thread_metadata,
            owner=tenant,
            spec_name=spec_name,
            if_exists="do_nothing",
        )
        async with self.engine.begin() as conn:
            try:
                await conn.execute(runs_table.insert().values(**row))
            except sa.exc.IntegrityError:
                raise RegistryError(f"run {run_id!r} already exists") from None
            await self._touch_thread(conn, thread_id, status, spec_name)
        return self._run_record(row)

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        async with self._reading() as conn:
            return await self._run(conn, run_id)

    async def latest_run(self, thread_id: str) -> RunRecord | None:
        """The newest run of a thread, or None."""
        runs = await self.list_runs(thread_id=thread_id, limit=1)
        return runs[0] if runs else None

    async def list_runs(
        self,
        *,
        thread_id: str | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = True,
    ) -> list[RunRecord]:
        """Runs, newest first, optionally of one thread and/or some statuses."""
        query = sa.select(runs_table)
        if thread_id is not None:
            query = query.where(runs_table.c.thread_id == thread_id)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                _check_status(s, RUN_STATUSES, "run")
            query = query.where(runs_table.c.status.in_(statuses))
        if newest_first:
            query = query.order_by(runs_table.c.created_at.desc(), runs_table.c.run_id.desc())
        else:
            query = query.order_by(runs_table.c.created_at.asc(), runs_table.c.run_id.asc())
        query = query.limit(limit).offset(offset)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._run_record(r) for r in rows]

    async def update_run(
        self,
        run_id: str,
        *,
        owner: Owner | None = None,
        release: bool = False,
        sync_thread: bool = True,
        **values: Any,
    ) -> RunRecord:
        """Set columns of a run (``status``, ``answer``, ``error``, ``usage``,
        ``waiting_for``...). With ``owner`` the update is fenced (raises
        :class:`OwnershipLostError` if another process owns the run); ``release=True``
        also clears the owner. A final status sets ``finished_at``."""
        unknown = set(values) - _UPDATABLE_RUN
        if unknown:
            raise ValueError(f"cannot update run column(s) {sorted(unknown)}")
        now = _now()
        if "status" in values:
            _check_status(values["status"], RUN_STATUSES, "run")
            if values["status"] in ("success", "error", "cancelled", "interrupted"):
                values.setdefault("finished_at", now)
            else:
                values.setdefault("finished_at", None)
        for key in _JSON_RUN & set(values):
            values[key] = _jsonable(values[key])
        values["updated_at"] = now
        if release:
            values.update(owner_host=None, owner_pid=None, owner_token=None, heartbeat_at=None)
        elif owner is not None:
            values["heartbeat_at"] = now
        async with self.engine.begin() as conn:
            query = runs_table.update().where(runs_table.c.run_id == run_id)
            if owner is not None:
                query = query.where(runs_table.c.owner_token == owner.token)
            result = await conn.execute(query.values(**values))
            if not result.rowcount:
                run = await self._run(conn, run_id)
                if run is None:
                    raise RunNotFoundError(f"no run {run_id!r}")
                raise OwnershipLostError(
                    f"run {run_id} is now owned by {run.describe_owner()}, not by this "
                    "process; it stopped writing to it"
                )
            run = await self._run(conn, run_id)
            assert run is not None
            if sync_thread and "status" in values:
                await self._touch_thread(conn, run.thread_id, run.status, None)
            return run

    async def delete_run(self, run_id: str) -> bool:
        """Delete a run's row; False if there was none."""
        async with self.engine.begin() as conn:
            result = await conn.execute(runs_table.delete().where(runs_table.c.run_id == run_id))
            return bool(result.rowcount)

    # -------------------------------------------------------------- ownership ---

    async def claim_run(
        self,
        run_id: str,
        owner: Owner | None = None,
        *,
        stale_after: float = DEFAULT_STALE_AFTER,
        status: RunStatus = "running",
        count_attempt: bool = True,
    ) -> RunRecord:
        """Take a run for ``owner`` (this process by default) atomically.

        Succeeds when the run is free, already ``owner``'s, or its owner is gone;
        raises :class:`RunOwnedError` naming the live owner otherwise, and
        :class:`RunNotFoundError` for an unknown id. Sets ``status`` (``running``),
        the heartbeat, ``started_at``, and adds one attempt.
        """
        owner = owner or Owner.current()
        run = await self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r}")
        if run.owner_token not in (None, owner.token) and not run.owner_gone(
            stale_after=stale_after
        ):
            raise RunOwnedError(
                run,
                f"run {run_id} of thread {run.thread_id} is being run by "
                f"{run.describe_owner()}; wait for it, stop that process, or try again once "
                f"its heartbeat is older than {stale_after:.0f}s",
            )
        now = _now()
        values: dict[str, Any] = {
            "owner_host": owner.host,
            "owner_pid": owner.pid,
            "owner_token": owner.token,
            "heartbeat_at": now,
            "started_at": now,
            "updated_at": now,
            "status": status,
            "finished_at": None,
        }
        if count_attempt:
            values["attempts"] = runs_table.c.attempts + 1
        token = runs_table.c.owner_token
        seen = token.is_(None) if run.owner_token is None else token == run.owner_token
        async with self.engine.begin() as conn:
            result = await conn.execute(
                runs_table.update().where(runs_table.c.run_id == run_id, seen).values(**values)
            )
            claimed = await self._run(conn, run_id)
            assert claimed is not None
            if not result.rowcount:
                raise RunOwnedError(
                    claimed,
                    f"run {run_id} of thread {claimed.thread_id} was just taken by "
                    f"{claimed.describe_owner()}",
                )
            await self._touch_thread(conn, claimed.thread_id, status, None)
            return claimed

    async def heartbeat(self, run_id: str, owner: Owner | None = None) -> bool:
        """Refresh ``owner``'s heartbeat; False when it no longer owns the run."""
        owner = owner or Owner.current()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                runs_table.update()
                .where(runs_table.c.run_id == run_id, runs_table.c.owner_token == owner.token)
                .values(heartbeat_at=_now())
            )
            return bool(result.rowcount)

    async def release_run(
        self, run_id: str, owner: Owner | None = None, **values: Any
    ) -> RunRecord:
        """Give up ownership (fenced), setting ``values`` (e.g. the final status)."""
        return await self.update_run(run_id, owner=owner or Owner.current(), release=True, **values)

    async def stale_runs(
        self, *, stale_after: float = DEFAULT_STALE_AFTER, limit: int = 1000
    ) -> list[RunRecord]:
        """Active (``pending``/``running``) runs whose owner is gone or that have none."""
        cutoff = _now() - timedelta(seconds=stale_after)
        host = socket.gethostname()
        query = (
            sa.select(runs_table)
            .where(
                runs_table.c.status.in_(ACTIVE_STATUSES),
                sa.or_(
                    runs_table.c.owner_token.is_(None),
                    runs_table.c.heartbeat_at.is_(None),
                    runs_table.c.heartbeat_at < cutoff,
                    runs_table.c.owner_host == host,
                ),
            )
            .order_by(runs_table.c.created_at.asc())
            .limit(limit)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        runs = [self._run_record(r) for r in rows]
        return [r for r in runs if r.owner_token is None or r.owner_gone(stale_after=stale_after)]

    # ------------------------------------------------------------ thread lease ---

    async def acquire_lease(
        self,
        thread_id: str,
        token: str,
        *,
        owner: Owner | None = None,
        run_id: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> int:
        """Take the lease of ``thread_id`` for ``token`` atomically; return its epoch.

        A compare-and-swap on ``(lease_token, lease_epoch)``: it succeeds when the lease
        is free, already ``token``'s (same epoch), or its holder is gone (heartbeat older
        than ``stale_after``, or a dead process on this host); every new acquisition
        increments the epoch. Raises :class:`LeaseHeldError` naming the live holder. The
        thread is created when missing. This is the database lock that keeps one active
        run per thread across processes; the checkpointer rejects writes carrying a token
        that no longer holds it.
        """
        owner = owner or Owner.current()
        await self.create_thread(thread_id, if_exists="do_nothing")
        thread: ThreadRecord | None = None
        for _ in range(20):
            async with self._reading() as conn:
                thread = await self._thread(conn, thread_id)
            if thread is None:  # pragma: no cover - deleted in between
                raise ThreadNotFoundError(f"no thread {thread_id!r}")
            now = _now()
            if thread.lease_token == token:
                await self.renew_lease(thread_id, token)
                return thread.lease_epoch
            if thread.lease_token is not None and not thread.lease_gone(
                stale_after=stale_after, now=now
            ):
                raise LeaseHeldError(thread, _describe_lease(thread, now))
            t = threads_table.c
            seen = (
                t.lease_token.is_(None)
                if thread.lease_token is None
                else t.lease_token == thread.lease_token
            )
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    threads_table.update()
                    .where(t.thread_id == thread_id, t.lease_epoch == thread.lease_epoch, seen)
                    .values(
                        lease_token=token,
                        lease_epoch=thread.lease_epoch + 1,
                        lease_heartbeat_at=now,
                        lease_host=owner.host,
                        lease_pid=owner.pid,
                        lease_run_id=run_id,
                    )
                )
            if result.rowcount:
                return thread.lease_epoch + 1
            # someone changed the lease meanwhile: look again
        assert thread is not None
        raise LeaseHeldError(thread, f"the lease of thread {thread_id} keeps changing hands")

    async def renew_lease(self, thread_id: str, token: str) -> bool:
        """Refresh the lease's heartbeat; False when ``token`` no longer holds it."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                threads_table.update()
                .where(
                    threads_table.c.thread_id == thread_id,
                    threads_table.c.lease_token == token,
                )
                .values(lease_heartbeat_at=_now())
            )
            return bool(result.rowcount)

    async def release_lease(self, thread_id: str, token: str) -> bool:
        """Give the lease up (only ``token``'s); False when it was not held by it."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                threads_table.update()
                .where(
                    threads_table.c.thread_id == thread_id,
                    threads_table.c.lease_token == token,
                )
                .values(
                    lease_token=None,
                    lease_heartbeat_at=None,
                    lease_host=None,
                    lease_pid=None,
                    lease_run_id=None,
                )
            )
            return bool(result.rowcount)

    # ---------------------------------------------------------------- cancels ---

    async def request_cancel(self, run_id: str) -> RunRecord:
        """Ask whoever runs (or queued) ``run_id`` to stop it: sets ``cancel_requested_at``.

        The process that holds the run sees it at its next heartbeat (and on PostgreSQL
        at once through ``NOTIFY moa_run_cancel``). A run that is ``pending`` with no live
        owner is marked ``cancelled`` right here. Returns the run as it is now.
        """
        now = _now()
        async with self.engine.begin() as conn:
            await conn.execute(
                runs_table.update()
                .where(
                    runs_table.c.run_id == run_id,
                    runs_table.c.status.in_(ACTIVE_STATUSES),
                    runs_table.c.cancel_requested_at.is_(None),
                )
                .values(cancel_requested_at=now)
            )
            if self.dialect == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_notify(:channel, :run_id)"),
                    {"channel": CANCEL_CHANNEL, "run_id": run_id},
                )
            run = await self._run(conn, run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r}")
        if run.status == "pending" and (run.owner_token is None or run.owner_gone()):
            token = runs_table.c.owner_token
            seen = token.is_(None) if run.owner_token is None else token == run.owner_token
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    runs_table.update()
                    .where(runs_table.c.run_id == run_id, runs_table.c.status == "pending", seen)
                    .values(
                        status="cancelled",
                        error="cancelled before it started",
                        finished_at=now,
                        updated_at=now,
                        owner_host=None,
                        owner_pid=None,
                        owner_token=None,
                        heartbeat_at=None,
                    )
                )
                if result.rowcount:
                    await self._touch_thread(conn, run.thread_id, "cancelled", None)
                run = await self._run(conn, run_id)
            assert run is not None
        return run

    async def cancel_requested(self, run_ids: Sequence[str]) -> set[str]:
        """Which of ``run_ids`` are still active and someone asked to cancel."""
        if not run_ids:
            return set()
        query = sa.select(runs_table.c.run_id).where(
            runs_table.c.run_id.in_(list(run_ids)),
            runs_table.c.status.in_(ACTIVE_STATUSES),
            runs_table.c.cancel_requested_at.is_not(None),
        )
        async with self._reading() as conn:
            return {str(r) for r in (await conn.scalars(query)).all()}

    async def beat_owned(self, owner: Owner, run_ids: Sequence[str]) -> None:
        """Refresh the heartbeat of ``owner``'s active runs among ``run_ids`` (queued runs
        of a live process are not taken for orphans)."""
        if not run_ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                runs_table.update()
                .where(
                    runs_table.c.run_id.in_(list(run_ids)),
                    runs_table.c.owner_token == owner.token,
                    runs_table.c.status.in_(ACTIVE_STATUSES),
                )
                .values(heartbeat_at=_now())
            )

    # ---------------------------------------------------------------- helpers ---

    async def _touch_thread(
        self, conn: AsyncConnection, thread_id: str, run_status: str, spec_name: str | None
    ) -> None:
        values: dict[str, Any] = {"updated_at": _now(), "status": thread_status_for(run_status)}
        if spec_name is not None:
            values["spec_name"] = spec_name
        await conn.execute(
            threads_table.update().where(threads_table.c.thread_id == thread_id).values(**values)
        )

    async def _thread(
        self, conn: AsyncConnection, thread_id: str, lock: bool = False
    ) -> ThreadRecord | None:
        query = sa.select(threads_table).where(threads_table.c.thread_id == thread_id)
        if lock and self.dialect != "sqlite":
            query = query.with_for_update()
        row = (await conn.execute(query)).mappings().first()
        return self._thread_record(row) if row is not None else None

    async def _run(self, conn: AsyncConnection, run_id: str) -> RunRecord | None:
        query = sa.select(runs_table).where(runs_table.c.run_id == run_id)
        row = (await conn.execute(query)).mappings().first()
        return self._run_record(row) if row is not None else None

    @staticmethod
    def _thread_record(row: Mapping[Any, Any]) -> ThreadRecord:
        data = dict(row)
        data["metadata"] = data.get("metadata") or {}
        return ThreadRecord(**data)

    @staticmethod
    def _run_record(row: Mapping[Any, Any]) -> RunRecord:
        data = dict(row)
        data["usage"] = data["usage"] or {}
        data["metadata"] = data["metadata"] or {}
        data["options"] = data["options"] or {}
        return RunRecord(**data)


_MISSING = object()
