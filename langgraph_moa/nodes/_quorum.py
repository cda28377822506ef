"""The layer gate: quorum, grace period and layer timeout for a layer's parallel agents.

All ``Send`` tasks of a layer run in one superstep, in one process and event loop. Each
agent node joins the gate of its layer (keyed by invocation, checkpoint and layer), runs
its model call through :meth:`LayerGate.guard`, and reports the outcome. When
``needed`` agents have answered, the grace timer starts; when it ends (or the layer
timeout, counted from the first agent's start), the calls still running are cancelled and
their agents get a ``missing`` proposal.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from langgraph_moa.nodes.budget import Ledger

__all__ = ["Cut", "LayerGate", "layer_gate"]

T = TypeVar("T")


class Cut(Exception):
    """An agent's call was cancelled by its layer's grace period or timeout."""


class LayerGate:
    """Shared by the agents of one layer in one invocation (one event loop)."""

    def __init__(
        self,
        *,
        layer: int,
        needed: int,
        grace: float | None,
        timeout: float | None,
        ledger: Ledger,
        run_id: str,
    ) -> None:
        self.layer = layer
        self.needed = max(needed, 0)
        self.grace = grace
        self.ledger = ledger
        self.run_id = run_id
        self.answered = 0
        self.reason: str | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._loop = asyncio.get_running_loop()
        if timeout is not None:
            self._timers.append(
                self._loop.call_later(
                    timeout, self.cut, f"no answer within the layer timeout of {timeout:g}s"
                )
            )
        if self.needed == 0:
            self._quorum_reached()

    def report(self, ok: bool) -> None:
        """An agent finished: ``ok`` when it answered."""
        if ok:
            self.answered += 1
            if self.answered == self.needed:
                self._quorum_reached()

    def _quorum_reached(self) -> None:
        if self.grace is None:
            return
        reason = (
            f"no answer within the grace period of {self.grace:g}s after "
            f"{self.answered} agents answered (quorum {self.needed})"
        )
        self._timers.append(self._loop.call_later(self.grace, self.cut, reason))

    def cut(self, reason: str) -> None:
        """Cancel the calls still running; their agents get ``missing`` proposals."""
        if self.reason is not None:
            return
        self.reason = reason
        for task in list(self._calls):
            task.cancel(reason)

    async def guard(self, call: Coroutine[Any, Any, T]) -> T:
        """Run ``call`` unless the layer is cut first; raise :class:`Cut` if it is."""
        if self.reason is not None:
            call.close()
            raise Cut(self.reason)
        task = asyncio.ensure_future(call)
        self._calls.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self.reason is None or (me is not None and me.cancelling()):
                raise
            raise Cut(self.reason) from None
        finally:
            self._calls.discard(task)

    def close(self) -> None:
        """Stop the timers (the last agent left)."""
        for timer in self._timers:
            timer.cancel()


_lock = threading.Lock()
_gates: dict[tuple[Any, ...], tuple[LayerGate, int]] = {}


@contextmanager
def layer_gate(key: tuple[Any, ...], **kwargs: Any) -> Iterator[LayerGate]:
    """Join the gate ``key`` (created with ``kwargs`` by its first agent); leave on exit."""
    with _lock:
        gate, members = _gates.get(key) or (None, 0)
        if gate is None:
            gate = LayerGate(**kwargs)
        _gates[key] = (gate, members + 1)
    try:
        yield gate
    finally:
        with _lock:
            gate, members = _gates[key]
            if members > 1:
                _gates[key] = (gate, members - 1)
            else:
                del _gates[key]
                gate.close()
