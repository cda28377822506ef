"""The thread lease: one live holder per thread, fenced by token and epoch."""

from __future__ import annotations

from langgraph_moa.persistence.registry._tables import (
    threads_table,
)
from langgraph_moa.persistence.registry.threads import ThreadsMixin
from langgraph_moa.persistence.run_records import (
    DEFAULT_STALE_AFTER,
    LeaseHeldError,
    Owner,
    ThreadNotFoundError,
    ThreadRecord,
    _describe_lease,
    _now,
)


class LeasesMixin(ThreadsMixin):
    """The thread-lease operations of :class:`RunRegistry`."""

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
