"""What the dashboard shows, computed from registry records and graph state (no HTML)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from langgraph_moa.persistence.registry import RunRecord
from langgraph_moa.runtime.progress import aggregation_summary
from langgraph_moa.spec import GraphSpec

__all__ = [
    "ACTIVE",
    "Cell",
    "Layer",
    "RunRow",
    "RunView",
    "run_row",
    "run_view",
    "usage_total",
]

ACTIVE = ("pending", "running")


def usage_total(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's total usage, whether recorded flat (CLI) or as ``{"total": ...}`` (server)."""
    usage = usage or {}
    total = usage.get("total")
    return dict(total) if isinstance(total, Mapping) else dict(usage)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


@dataclass
class RunRow:
    """One line of the runs list."""

    run_id: str
    thread_id: str
    spec: str
    status: str
    tokens: int
    cost: float
    seconds: float | None
    created: str
    task: str


def run_row(run: RunRecord) -> RunRow:
    """The runs-list line of ``run``."""
    total = usage_total(run.usage)
    end = run.finished_at or (run.updated_at if run.status not in ACTIVE else None)
    return RunRow(
        run_id=run.run_id,
        thread_id=run.thread_id,
        spec=run.spec_name or "",
        status=run.status,
        tokens=int(total.get("total_tokens") or 0),
        cost=float(total.get("cost") or 0.0),
        seconds=_seconds(run.started_at or run.created_at, end),
        created=run.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        task=task_of(run.input),
    )


def task_of(value: Any) -> str:
    """The question of a run's input: its ``task`` or its last message."""
    if not isinstance(value, Mapping):
        return ""
    if value.get("task"):
        return str(value["task"])
    messages = value.get("messages") or []
    if messages:
        last = messages[-1]
        content = last.get("content") if isinstance(last, Mapping) else last
        return content if isinstance(content, str) else str(content)
    return ""


@dataclass
class Cell:
    """One agent in one layer: waiting, running, done, failed, missing or skipped."""

    agent: str
    state: str
    model: str = ""
    subtask: str = ""
    content: str = ""
    error: str = ""
    tokens: int = 0
    seconds: float | None = None


@dataclass
class Layer:
    """One layer: its routing, plan, agents and synthesis."""

    index: int
    routing: str
    plan: list[dict[str, str]] | None
    cells: list[Cell]
    synthesis: str | None
    synthesizer_state: str
    synthesizer_tokens: int = 0
    aggregation: str = ""
    """How the layer aggregated (mode, vote and agreement, pick), once it did."""


@dataclass
class RunView:
    """A run page: status, the layers x agents grid, answer, notes, errors, pause."""

    run_id: str
    thread_id: str
    spec: str
    status: str
    task: str
    layers: list[Layer]
    answer: str
    notes: list[str]
    error: str
    interrupts: list[Any]
    tokens: int
    cost: float
    seconds: float | None
    editable: dict[str, str] = field(default_factory=dict)
    """Proposals a person may edit before the paused synthesis (agent -> text)."""
    attribution: list[dict[str, Any]] = field(default_factory=list)
    """The answer's claims, each with the agents whose proposals support it."""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def paused(self) -> bool:
        return self.status == "interrupted" and bool(self.interrupts)

    @property
    def resumable(self) -> bool:
        return self.status in ("interrupted", "cancelled", "error") and not self.interrupts


_CANCELLED = repr(asyncio.CancelledError())


def _written(task: Any, layer: int, agent: str) -> Mapping[str, Any] | None:
    """The proposal a pending task already wrote (a run's own last checkpoint read from
    the history shows its step's finished tasks as results, not in the values)."""
    result = getattr(task, "result", None)
    if not isinstance(result, Mapping):
        return None
    proposal = ((result.get("proposals") or {}).get(str(layer)) or {}).get(agent)
    return proposal if isinstance(proposal, Mapping) else None


def _cell(agent: str, proposal: Mapping[str, Any] | None, task: Any, active: bool) -> Cell:
    if proposal is not None:
        state = {"ok": "done", "failed": "failed", "missing": "missing"}.get(
            str(proposal.get("status")), "done"
        )
        usage = proposal.get("usage") or {}
        return Cell(
            agent=agent,
            state=state,
            model=str(proposal.get("model") or ""),
            subtask=str(proposal.get("subtask") or ""),
            content=str(proposal.get("content") or ""),
            error=str(proposal.get("error") or ""),
            tokens=int(usage.get("total_tokens") or 0),
            seconds=proposal.get("seconds"),
        )
    if task is not None:
        error = getattr(task, "error", None)
        # a cancelled task's error comes back from the store as its repr: it stopped
        if error and not isinstance(error, asyncio.CancelledError) and str(error) != _CANCELLED:
            return Cell(agent=agent, state="failed", error=str(error))
        return Cell(agent=agent, state="running" if active else "stopped")
    return Cell(agent=agent, state="waiting")


def run_view(
    run: RunRecord,
    spec: GraphSpec | None,
    values: Mapping[str, Any],
    tasks: Iterable[Any] = (),
    interrupts: Sequence[Any] = (),
) -> RunView:
    """The run page of ``run`` from the ``values`` and pending ``tasks`` of its latest
    checkpoint (empty values: the run has not started its turn yet)."""
    active = run.status in ACTIVE
    pending = {t.name: t for t in tasks}
    if "prepare" in pending:  # the previous turn's values, about to be reset
        values = {}
    proposals: Mapping[str, Mapping[str, Any]] = values.get("proposals") or {}
    plans: Mapping[str, list[dict[str, str]]] = values.get("plans") or {}
    syntheses: list[str] = list(values.get("syntheses") or [])
    layers: list[Layer] = []
    for n, layer in enumerate(spec.layers if spec else [], start=1):
        written = proposals.get(str(n)) or {}
        plan = plans.get(str(n))
        planned = {s["agent"] for s in plan} if plan is not None else None
        cells = []
        for agent in layer.agents:
            task = pending.get(f"L{n}_{agent}")
            proposal = written.get(agent) or (_written(task, n, agent) if task else None)
            cell = _cell(agent, proposal, task, active)
            if planned is not None and agent not in planned and cell.state == "waiting":
                cell.state = "skipped"
            cells.append(cell)
        synthesis = syntheses[n - 1] if len(syntheses) >= n else None
        if synthesis is not None:
            synth_state = "done"
        elif f"L{n}_synthesizer" in pending:
            synth_state = "paused" if interrupts else ("running" if active else "stopped")
        else:
            synth_state = "waiting"
        synth_usage = (values.get("usage") or {}).get(f"synthesizer_L{n}") or {}
        record = (values.get("aggregation") or {}).get(str(n))
        layers.append(
            Layer(
                index=n,
                routing=layer.routing.mode,
                plan=[dict(s) for s in plan] if plan is not None else None,
                cells=cells,
                synthesis=synthesis,
                synthesizer_state=synth_state,
                synthesizer_tokens=int(synth_usage.get("total_tokens") or 0),
                aggregation=aggregation_summary(record) if record else "",
            )
        )
    total = usage_total(run.usage)
    if not total.get("total_tokens"):
        total = {"total_tokens": 0, "cost": 0.0}
        for usage in (values.get("usage") or {}).values():
            total["total_tokens"] += int(usage.get("total_tokens") or 0)
            total["cost"] += float(usage.get("cost") or 0.0)
    editable: dict[str, str] = {}
    for item in interrupts:
        if isinstance(item, Mapping) and item.get("kind") == "approve_synthesis":
            editable.update({str(k): str(v) for k, v in (item.get("proposals") or {}).items()})
    end = run.finished_at or (run.updated_at if not active else None)
    return RunView(
        run_id=run.run_id,
        thread_id=run.thread_id,
        spec=run.spec_name or "",
        status=run.status,
        task=str(values.get("task") or task_of(run.input)),
        layers=layers,
        answer=str(values.get("answer") or run.answer or ""),
        notes=[str(n) for n in values.get("notes") or []],
        error=run.error or "",
        interrupts=list(interrupts),
        tokens=int(total.get("total_tokens") or 0),
        cost=float(total.get("cost") or 0.0),
        seconds=_seconds(run.started_at or run.created_at, end),
        editable=editable,
        attribution=[dict(c) for c in values.get("attribution") or []],
    )
