"""Per-endpoint call limits shared by every run in the process.

Every model endpoint but the embedded model gets a :class:`CallLimiter` (calls in flight:
the entry's ``max_concurrency``, else :data:`DEFAULT_MAX_CONCURRENCY`), an entry with
``requests_per_second`` an ``InMemoryRateLimiter``. Both are keyed by the endpoint
(``base_url`` or provider, model name) and the limit, so every graph and every run of the
process that uses the same endpoint with the same limit shares them, whatever event loop
or thread it runs in.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from langchain_core.rate_limiters import InMemoryRateLimiter

from langgraph_moa.spec import ModelSpec

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "CallLimiter",
    "call_limiter",
    "counting_attempts",
    "endpoint_key",
    "max_concurrency",
    "on_request",
    "rate_limiter",
]

DEFAULT_MAX_CONCURRENCY = 100
"""Calls in flight per endpoint and process when the model entry sets no ``max_concurrency``.

The HTTP client's connection pool does work in proportion to the requests queued in it for
every request it starts or ends; past this many, calls wait in the limiter's queue instead
(at 1,000 runs at once the pool took 40% of the CPU otherwise: bench/concurrency.py)."""


class CallLimiter:
    """A semaphore for coroutines of any event loop and thread.

    ``asyncio.Semaphore`` belongs to one loop; this one keeps its count under a thread
    lock and wakes a waiter on the waiter's own loop, first come first served.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a call limit must be at least 1, got {limit}")
        self.limit = limit
        self._free = limit
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def in_use(self) -> int:
        """Slots taken now."""
        with self._lock:
            return self.limit - self._free

    async def acquire(self) -> None:
        """Wait for a free slot (cancellable)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] = (
                loop,
                loop.create_future(),
            )
            self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            with self._lock:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            if not queued and waiter[1].done() and not waiter[1].cancelled():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            raise

    def release(self) -> None:
        """Free a slot: hand it to the oldest waiter, or put it back."""
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            loop, future = self._waiters.popleft()
        try:
            loop.call_soon_threadsafe(self._hand_over, future)
        except RuntimeError:  # the waiter's loop is closed: give the slot to the next one
            self.release()

    def _hand_over(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():  # the waiter gave up after it was dequeued
            self.release()
        else:
            future.set_result(None)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with limiter.slot():`` holds one slot for the block."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()


_lock = threading.Lock()
_call_limiters: dict[tuple[str, str, int], CallLimiter] = {}
_rate_limiters: dict[tuple[str, str, float], InMemoryRateLimiter] = {}


def endpoint_key(spec: ModelSpec) -> tuple[str, str]:
    """What identifies an endpoint: its URL (or ``provider``) and the model name."""
    return (spec.base_url or "provider", spec.model or "local")


def max_concurrency(spec: ModelSpec) -> int | None:
    """Calls in flight allowed at ``spec``'s endpoint (None: the embedded model, which
    queues its calls itself)."""
    if spec.max_concurrency is not None:
        return spec.max_concurrency
    return None if spec.is_local else DEFAULT_MAX_CONCURRENCY


def call_limiter(spec: ModelSpec) -> CallLimiter | None:
    """The process-wide limiter of ``spec``'s endpoint (None for the embedded model)."""
    limit = max_concurrency(spec)
    if limit is None:
        return None
    key = (*endpoint_key(spec), limit)
    with _lock:
        if key not in _call_limiters:
            _call_limiters[key] = CallLimiter(limit)
        return _call_limiters[key]


def rate_limiter(spec: ModelSpec) -> InMemoryRateLimiter | None:
    """The process-wide rate limiter of ``spec``'s endpoint, or None without a rate."""
    rate = spec.requests_per_second
    if rate is None:
        return None
    key = (*endpoint_key(spec), rate)
    with _lock:
        if key not in _rate_limiters:
            _rate_limiters[key] = InMemoryRateLimiter(
                requests_per_second=rate,
                check_every_n_seconds=min(0.1, 0.5 / rate),
                max_bucket_size=1,
            )
        return _rate_limiters[key]


_attempts: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "moa_http_attempts", default=None
)


@contextmanager
def counting_attempts() -> Iterator[list[int]]:
    """Count the HTTP requests the shared endpoint clients send in this context (a call's
    first attempt and its client-side retries): ``with counting_attempts() as n: ...; n[0]``."""
    box = [0]
    token = _attempts.set(box)
    try:
        yield box
    finally:
        _attempts.reset(token)


async def on_request(request: object) -> None:
    """HTTP client hook (``event_hooks={"request": [...]}``) feeding :func:`counting_attempts`."""
    box = _attempts.get()
    if box is not None:
        box[0] += 1
