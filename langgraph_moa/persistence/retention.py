"""Retention: keep the last N checkpoints of each thread, delete threads idle for too long.

The saver methods do the work (``prune_to_last``, ``delete_older_than``); this module
parses the user's durations and backs the ``moa prune`` command.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from langgraph_moa.persistence.saver import SQLAlchemySaver

__all__ = ["PruneReport", "parse_duration", "prune_command"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` (or a bare number of seconds)."""
    if isinstance(text, timedelta):
        return text
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(
            f"cannot read the duration {text!r}: use a number and a unit, e.g. 30d, 12h, "
            "90m, 45s or 2w"
        )
    amount, unit = float(match.group(1)), (match.group(2) or "s").lower()
    return timedelta(seconds=amount * _UNIT_SECONDS[unit])


@dataclass(frozen=True)
class PruneReport:
    """What ``prune_command`` deleted."""

    threads_deleted: int
    checkpoints_deleted: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune_command(
    db_url: str,
    keep_last: int | None = None,
    older_than: str | timedelta | None = None,
) -> PruneReport:
    """Apply retention to the store at ``db_url``.

    ``older_than``: delete every thread with no checkpoint written for that long.
    ``keep_last``: then keep only the newest ``keep_last`` checkpoints of each namespace
    of every remaining thread (the latest always stays).
    """
    if keep_last is None and older_than is None:
        raise ValueError(
            "nothing to do: give keep_last (--keep-last, e.g. 20) and/or older_than "
            "(--older-than, e.g. 30d)"
        )
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: keep at least the latest checkpoint (>= 1)")
    age = parse_duration(older_than) if older_than is not None else None
    with SQLAlchemySaver.from_url(db_url) as saver:
        threads = saver.delete_older_than(age) if age is not None else 0
        checkpoints = saver.prune_to_last(None, keep=keep_last) if keep_last is not None else 0
    return PruneReport(threads_deleted=threads, checkpoints_deleted=checkpoints)
