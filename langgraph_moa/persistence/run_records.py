"""The run registry's records, statuses, owners and errors (no SQL here: `moa runs` reads
SQLite with them without importing SQLAlchemy, see :mod:`.quick_runs`)."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

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
        for name in RUN_TIME_COLUMNS:
            out[name] = _iso(out[name])
        return out


RUN_JSON_COLUMNS = ("spec", "input", "waiting_for", "usage", "metadata", "options")
"""The JSON columns of ``moa_runs``."""
RUN_TIME_COLUMNS = (
    "created_at",
    "updated_at",
    "heartbeat_at",
    "started_at",
    "finished_at",
    "cancel_requested_at",
)
"""The time columns of ``moa_runs`` (naive UTC)."""


def run_columns() -> list[str]:
    """The columns of ``moa_runs``: the fields of :class:`RunRecord`, in order."""
    return [f.name for f in fields(RunRecord)]


# ---------------------------------------------------------------------- helpers ---


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


_MISSING = object()
