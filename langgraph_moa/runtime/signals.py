"""Stop a run cleanly on Ctrl-C or SIGTERM; exit at once on the second signal.

The first signal cancels the running task: LangGraph waits for the checkpoint writes
of the tasks that finished, :class:`~langgraph_moa.runtime.api.MoA` marks the run
``interrupted`` and it stays resumable. A second signal exits immediately (what is
already stored stays stored; the run is then resumed like a crashed one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator

__all__ = ["EXIT_CODE", "cancel_on_signals"]

EXIT_CODE = 130
"""Exit status after an interrupted run (128 + SIGINT), as shells expect."""


@contextlib.contextmanager
def cancel_on_signals(
    on_first: Callable[[int], None] | None = None,
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[list[int]]:
    """Inside a coroutine: the first of ``signals`` cancels the current task, the second
    exits the process with :data:`EXIT_CODE`. Yields the list of signals received."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "cancel_on_signals() must be used inside a task"
    received: list[int] = []

    def handle(signum: int) -> None:
        received.append(signum)
        if len(received) > 1:
            sys.stderr.write("\nstopped at once; resume the run later\n")
            sys.stderr.flush()
            os._exit(EXIT_CODE)
        if on_first is not None:
            on_first(signum)
        task.cancel(f"signal {signal.Signals(signum).name}")

    installed: list[int] = []
    for signum in signals:
        try:
            loop.add_signal_handler(signum, handle, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
            pass
    try:
        yield received
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
