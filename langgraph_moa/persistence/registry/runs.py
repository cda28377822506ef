"""Runs: their rows, ownership (claim, heartbeat, release) and cancel requests."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from langgraph_moa.persistence.events import RunEvent, events, row_event, thread_event_key
from langgraph_moa.persistence.registry._tables import (
    _JSON_RUN,
    _UPDATABLE_RUN,
    runs_table,
)
from langgraph_moa.persistence.registry.threads import ThreadsMixin
from langgraph_moa.persistence.run_records import (
    ACTIVE_STATUSES,
    CANCEL_CHANNEL,
    DEFAULT_STALE_AFTER,
    RUN_STATUSES,
    Owner,
    OwnershipLostError,
    RegistryError,
    RunNotFoundError,
    RunOwnedError,
    RunRecord,
    RunStatus,
    _check_status,
    _jsonable,
    _now,
)


class RunsMixin(ThreadsMixin):
    """The run, ownership and cancel operations of :class:`RunRegistry`."""

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

    async def thread_runs_after(
        self, thread_id: str, after: tuple[datetime, str] | None = None, *, limit: int = 100
    ) -> list[RunRecord]:
        """Runs of ``thread_id`` that come after ``after`` (a ``(created_at, run_id)``) in
        the order ``created_at, run_id``, oldest first, at most ``limit``: a follower pages
        through new runs without listing the thread's older ones."""
        query = sa.select(runs_table).where(runs_table.c.thread_id == thread_id)
        if after is not None:
            at, run_id = after
            query = query.where(
                sa.or_(
                    runs_table.c.created_at > at,
                    sa.and_(runs_table.c.created_at == at, runs_table.c.run_id > run_id),
                )
            )
        query = query.order_by(runs_table.c.created_at, runs_table.c.run_id).limit(limit)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._run_record(r) for r in rows]

    async def thread_events(
        self, thread_id: str, created_at: datetime, after: int = 0, *, limit: int = 1000
    ) -> list[RunEvent]:
        """Logged stream events of every run of ``thread_id``, and of the thread itself
        (:func:`~langgraph_moa.persistence.events.thread_event_key`: of the thread created
        at ``created_at``), with an id above ``after``, in order (at most ``limit``)."""
        columns = (events.c.id, events.c.run_id, events.c.event, sa.cast(events.c.data, sa.Text()))
        of_runs = (
            sa.select(*columns)
            .join(runs_table, runs_table.c.run_id == events.c.run_id)
            .where(runs_table.c.thread_id == thread_id, events.c.id > after)
            .order_by(events.c.id)
            .limit(limit)
        )
        of_thread = (
            sa.select(*columns)
            .where(events.c.run_id == thread_event_key(thread_id, created_at), events.c.id > after)
            .order_by(events.c.id)
            .limit(limit)
        )
        async with self._reading() as conn:
            rows = [*(await conn.execute(of_runs)).all(), *(await conn.execute(of_thread)).all()]
        rows.sort(key=lambda row: int(row[0]))
        return [row_event(r) for r in rows[:limit]]

    async def last_thread_event(self, thread_id: str, created_at: datetime) -> int:
        """The id of the newest logged event of ``thread_id`` (created at ``created_at``)
        or of one of its runs (0 if none)."""
        of_runs = (
            sa.select(sa.func.max(events.c.id))
            .join(runs_table, runs_table.c.run_id == events.c.run_id)
            .where(runs_table.c.thread_id == thread_id)
        )
        of_thread = sa.select(sa.func.max(events.c.id)).where(
            events.c.run_id == thread_event_key(thread_id, created_at)
        )
        async with self._reading() as conn:
            found = [(await conn.execute(q)).scalar() for q in (of_runs, of_thread)]
        return max(int(f or 0) for f in found)

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
        resume_ended: bool = True,
    ) -> RunRecord:
        """Take a run for ``owner`` (this process by default) atomically.

        Succeeds when the run is free, already ``owner``'s, or its owner is gone;
        raises :class:`RunOwnedError` naming the live owner otherwise, and
        :class:`RunNotFoundError` for an unknown id. Sets ``status`` (``running``),
        the heartbeat, ``started_at``, and adds one attempt. ``resume_ended=False``: an
        ended run is not taken (:class:`RunOwnedError`), say one a cancel request ended
        since the caller read it, which taking it would clear.
        """
        owner = owner or Owner.current()
        run = await self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r}")
        if not resume_ended and run.status not in ACTIVE_STATUSES:
            raise RunOwnedError(run, f"run {run_id} is {run.status} already; not taking it")
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
        if run.status not in ACTIVE_STATUSES:  # resuming an ended run: an old cancel is spent
            values["cancel_requested_at"] = None
        token = runs_table.c.owner_token
        seen = token.is_(None) if run.owner_token is None else token == run.owner_token
        async with self.engine.begin() as conn:
            result = await conn.execute(
                runs_table.update()
                # the status too: a cancel that ended the run since it was read wins
                .where(runs_table.c.run_id == run_id, runs_table.c.status == run.status, seen)
                .values(**values)
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
