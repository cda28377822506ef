"""Run streams: live fan-out of a run's SSE events, over the event log for replay.

Events of every run (``ServerOptions.persist_streams``, on by default; off, only those of
runs created with ``stream_resumable``) are written to the event log
(:class:`~langgraph_moa.persistence.events.EventLog`, table ``moa_run_events``) before they
are fanned out; the row id is the SSE event id, so a client that reconnects with
``Last-Event-ID: n`` gets every event after ``n`` and then the live ones, and a thread's
stream reads the events of all its runs in order. Runs streamed by another process are
followed through the log (woken by LISTEN/NOTIFY on PostgreSQL, polled elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from langgraph_moa.persistence.events import EventLog, RunEvent

__all__ = ["END", "RunStreams", "StreamEvent"]


INTERNAL_EVENTS = frozenset({"end"})
"""Logged (they tell followers a run is over) but never sent to clients."""


@dataclass(frozen=True)
class StreamEvent:
    """One SSE event: its name, its JSON body, its sequence number (the log's row id when
    the run's stream is persisted)."""

    event: str
    data: bytes
    seq: int


END = StreamEvent("end", b"null", -1)
"""Put in subscriber queues when a run's stream is over (never sent to clients)."""


@dataclass
class _Channel:
    persist: bool
    seq: int = 0
    subscribers: set[asyncio.Queue[StreamEvent]] = field(default_factory=set)


def _item(row: RunEvent) -> StreamEvent:
    return StreamEvent(row.event, row.raw, row.id)


class RunStreams:
    """Sequence, persist (in ``event_log``) and fan out the events of runs."""

    def __init__(self, event_log: EventLog, *, poll_interval: float = 0.25) -> None:
        self.event_log = event_log
        self.poll_interval = poll_interval
        self._channels: dict[str, _Channel] = {}

    async def setup(self) -> None:
        await self.event_log.setup()

    def open(self, run_id: str, *, persist: bool) -> None:
        """Start the stream of ``run_id`` here (before anyone subscribes or publishes)."""
        self._channels.setdefault(run_id, _Channel(persist=persist))

    def is_open(self, run_id: str) -> bool:
        return run_id in self._channels

    async def _append(self, run_id: str, event: str, data: bytes) -> int:
        return await self.event_log.append(run_id, event, data)

    async def publish(self, run_id: str, event: str, data: bytes) -> None:
        """Send one event to every subscriber (logging it first if the run persists)."""
        channel = self._channels[run_id]
        if channel.persist:
            channel.seq = await self._append(run_id, event, data)
        else:
            channel.seq += 1
        item = StreamEvent(event, data, channel.seq)
        for queue in list(channel.subscribers):
            queue.put_nowait(item)

    async def log(self, run_id: str, event: str, data: bytes) -> None:
        """Log an event without a live channel (e.g. the error of a run that cannot resume)."""
        await self._append(run_id, event, data)

    async def close(self, run_id: str, *, log_end: bool = True) -> None:
        """End the stream: subscribers drain what they have and stop. ``log_end=False``
        logs no end marker (the run's events were deleted with its temporary thread)."""
        channel = self._channels.pop(run_id, None)
        if channel is None:
            return
        if channel.persist and log_end:
            await self._append(run_id, END.event, END.data)
        for queue in list(channel.subscribers):
            queue.put_nowait(END)

    def forget(self, run_id: str) -> None:
        """Drop the live channel without ending the stream (another process continues it)."""
        channel = self._channels.pop(run_id, None)
        for queue in list(channel.subscribers if channel else ()):
            queue.put_nowait(END)

    async def logged(self, run_id: str, after: int = 0) -> list[StreamEvent]:
        """Logged events of ``run_id`` after row id ``after``, in order."""
        return [_item(r) for r in await self.event_log.read(run_id, after)]

    async def last_logged(self, run_id: str, event: str) -> StreamEvent | None:
        """The last logged ``event`` of ``run_id``."""
        row = await self.event_log.last(run_id, event)
        return None if row is None else _item(row)

    async def delete(self, run_ids: list[str]) -> None:
        """Forget the logged events of ``run_ids``."""
        await self.event_log.delete_runs(run_ids)

    async def prune(self, older_than: float) -> int:
        """Delete logged events older than ``older_than`` seconds; how many went."""
        return await self.event_log.prune(timedelta(seconds=older_than))

    def subscribe(
        self,
        run_id: str,
        *,
        last_event_id: int | None = None,
        is_active: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The events of ``run_id``: logged ones after ``last_event_id`` (when given), then
        live ones until the run ends. Live events are buffered from this call on, so
        subscribe before starting a run to see all of it. A run that is not streamed by
        this process (a worker's, or one that already ended) is read from the log, which
        is polled while ``is_active()`` says the run goes on."""
        channel = self._channels.get(run_id)
        if channel is None:
            return self._follow_log(run_id, last_event_id, is_active)
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        channel.subscribers.add(queue)
        return self._live(run_id, channel, queue, last_event_id)

    async def _live(
        self,
        run_id: str,
        channel: _Channel,
        queue: asyncio.Queue[StreamEvent],
        last_event_id: int | None,
    ) -> AsyncIterator[StreamEvent]:
        try:
            seen = 0
            if last_event_id is not None and channel.persist:
                seen = last_event_id
                for item in await self.logged(run_id, last_event_id):
                    seen = item.seq
                    if item.event not in INTERNAL_EVENTS:
                        yield item
            while True:
                item = await queue.get()
                if item is END:
                    return
                if item.seq > seen:
                    yield item
        finally:
            channel.subscribers.discard(queue)

    async def _follow_log(
        self,
        run_id: str,
        last_event_id: int | None,
        is_active: Callable[[], Awaitable[bool]] | None,
    ) -> AsyncIterator[StreamEvent]:
        after = last_event_id or 0
        while True:
            active = is_active is not None and await is_active()
            if last_event_id is not None or active:
                for item in await self.logged(run_id, after):
                    after = item.seq
                    if item.event == END.event:
                        return
                    yield item
            if run_id in self._channels:  # it was started here meanwhile: go live
                async for item in self.subscribe(run_id, last_event_id=after):
                    yield item
                return
            if not active:
                return
            await self.event_log.wait(run_id, self.poll_interval)
