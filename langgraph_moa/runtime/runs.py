"""Durable runs: errors, spec drift, heartbeats, human decisions, history and forks.

The pieces :class:`~langgraph_moa.runtime.api.MoA` and the ``moa resume/runs/history/fork``
commands share. A run lives in two places of one SQL store: its state in the
checkpointer, its row in :class:`~langgraph_moa.persistence.registry.RunRegistry`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from langgraph_moa.persistence.registry import RegistryError, RunRecord
from langgraph_moa.spec import GraphSpec

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

__all__ = [
    "Decision",
    "HumanInputNeededError",
    "RunError",
    "RunFinishedError",
    "SpecDriftError",
    "StoreError",
    "UnknownThreadError",
    "copy_checkpoint",
    "describe_interrupt",
    "describe_waiting",
    "load_decision_file",
    "parse_edits",
    "spec_changes",
    "spec_data",
]

log = logging.getLogger(__name__)


class RunError(RegistryError):
    """A run cannot be started, resumed or forked; the message says why and what to do."""


class UnknownThreadError(RunError):
    """No run and no checkpoint for that thread."""


class RunFinishedError(RunError):
    """The run already ended with success; there is nothing to resume."""


class HumanInputNeededError(RunError):
    """The run waits for a person's decision (``--approve`` or ``--edit``)."""


class StoreError(RunError):
    """The store cannot be reached or opened; nothing was changed."""


class SpecDriftError(RunError):
    """The spec changed since the run started."""

    def __init__(self, message: str, changes: list[str]) -> None:
        super().__init__(message)
        self.changes = changes


def spec_data(spec: GraphSpec) -> dict[str, Any]:
    """The spec as JSON data (what the registry stores and ``spec_hash`` hashes)."""
    return spec.model_dump(mode="json")


def spec_changes(old: Any, new: Any, path: str = "") -> list[str]:
    """What differs between two JSON values, one ``path: old -> new`` line per change."""
    where = path or "(spec)"
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        changes: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                changes.append(f"{sub}: removed (was {_short(old[key])})")
            elif key not in old:
                changes.append(f"{sub}: added ({_short(new[key])})")
            else:
                changes += spec_changes(old[key], new[key], sub)
        return changes
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            if all(isinstance(x, str) for x in old + new):
                return [f"{where}: {_short(old)} -> {_short(new)}"]
            changes = [f"{where}: {len(old)} -> {len(new)} items"]
        else:
            changes = []
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            changes += spec_changes(a, b, f"{path}.{i}" if path else str(i))
        return changes
    return [] if old == new else [f"{where}: {_short(old)} -> {_short(new)}"]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Decision:
    """A person's answer to a paused run: go on, or replace proposals and/or a plan."""

    approve: bool = False
    proposals: dict[str, str] = field(default_factory=dict)
    plan: list[dict[str, str]] | None = None

    @property
    def empty(self) -> bool:
        return not self.approve and not self.proposals and self.plan is None


def parse_edits(items: Sequence[str]) -> dict[str, str]:
    """``["AGENT=TEXT", ...]`` as ``{agent: text}``; a bad item raises ``ValueError``."""
    edits: dict[str, str] = {}
    for item in items:
        agent, sep, text = item.partition("=")
        if not sep or not agent.strip():
            raise ValueError(f"--edit {item!r}: write it as AGENT=TEXT, e.g. --edit critic='Fine.'")
        edits[agent.strip()] = text
    return edits


def load_decision_file(path: Path) -> Decision:
    """A decision file (JSON or YAML): ``{proposals: {agent: text}, plan: [{agent, subtask}]}``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid JSON or YAML ({exc})") from None
    if not isinstance(data, dict) or not set(data) <= {"proposals", "plan"} or not data:
        raise ValueError(
            f"{path}: expected a mapping with `proposals: {{agent: text}}` and/or "
            "`plan: [{agent, subtask}]`"
        )
    proposals = data.get("proposals") or {}
    if not isinstance(proposals, dict):
        raise ValueError(f"{path}: `proposals` must map agent names to texts")
    plan = data.get("plan")
    if plan is not None and (
        not isinstance(plan, list)
        or not all(isinstance(s, dict) and {"agent", "subtask"} <= set(s) for s in plan)
    ):
        raise ValueError(f"{path}: `plan` must be a list of {{agent, subtask}} items")
    return Decision(
        proposals={str(k): str(v) for k, v in proposals.items()},
        plan=[{"agent": str(s["agent"]), "subtask": str(s["subtask"])} for s in plan]
        if plan is not None
        else None,
    )


def describe_interrupt(item: Any) -> str:
    """One thing a paused run waits for, in words."""
    if not isinstance(item, dict):
        return str(item)
    if item.get("kind") == "approve_synthesis":
        agents = ", ".join(sorted(item.get("proposals") or {}))
        return f"approval of layer {item.get('layer')}'s proposals ({agents})"
    if item.get("kind") == "paused":
        return f"a go-ahead before {', '.join(item.get('next') or [])}"
    shown = {k: v for k, v in item.items() if k != "interrupt_id"}
    return json.dumps(shown, default=str)


def describe_waiting(run: RunRecord) -> str:
    """What a paused run waits for, in a sentence."""
    items = run.waiting_for or []
    parts = [describe_interrupt(i) for i in (items if isinstance(items, list) else [items])]
    return "; ".join(parts) or "nothing (it was stopped)"


async def copy_checkpoint(
    saver: BaseCheckpointSaver[Any],
    source_thread: str,
    checkpoint_id: str,
    target_thread: str,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Copy one checkpoint of ``source_thread`` (without the writes made after it) as the
    first checkpoint of ``target_thread``; return its id. Raises :class:`RunError` when
    there is no such checkpoint."""
    source = {"configurable": {"thread_id": source_thread, "checkpoint_ns": ""}}
    source["configurable"]["checkpoint_id"] = checkpoint_id
    found = await saver.aget_tuple(source)  # type: ignore[arg-type]
    if found is None:
        raise RunError(
            f"thread {source_thread!r} has no checkpoint {checkpoint_id!r}; "
            f"`moa history {source_thread}` lists its checkpoints"
        )
    if await saver.aget_tuple({"configurable": {"thread_id": target_thread}}) is not None:
        raise RunError(f"thread {target_thread!r} already exists; pick a new thread id")
    checkpoint: dict[str, Any] = dict(found.checkpoint)
    meta = {
        **dict(found.metadata or {}),
        **dict(metadata or {}),
        "source": "fork",
        "forked_from": {"thread_id": source_thread, "checkpoint_id": checkpoint_id},
    }
    target = {"configurable": {"thread_id": target_thread, "checkpoint_ns": ""}}
    stored = await saver.aput(
        target,  # type: ignore[arg-type]
        checkpoint,  # type: ignore[arg-type]
        meta,  # type: ignore[arg-type]
        dict(checkpoint["channel_versions"]),
    )
    return str(stored["configurable"]["checkpoint_id"])
