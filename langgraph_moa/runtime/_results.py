"""What a run left (:class:`RunResult`) and the types the Python API takes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langgraph_moa.nodes.budget import usage_report
from langgraph_moa.spec import GraphSpec
from langgraph_moa.state import Aggregation, Claim, Usage

__all__ = ["RunResult", "RunStatus", "SpecSource"]

RunStatus = Literal["pending", "running", "interrupted", "success", "error", "cancelled"]
SpecSource = GraphSpec | str | Path | Mapping[str, Any]


@dataclass
class RunResult:
    """What a run left: its ids, status, answer and usage."""

    thread_id: str
    run_id: str
    status: RunStatus
    answer: str | None
    usage: Usage = field(default_factory=lambda: Usage())
    usage_by_agent: dict[str, Usage] = field(default_factory=dict)
    interrupts: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    next: list[str] = field(default_factory=list)
    """Nodes that run next when the run is paused (empty when it finished)."""
    interrupt_ids: list[str] = field(default_factory=list)
    """Ids of :attr:`interrupts`, for ``Command(resume={id: value})`` when there are several."""

    def to_json(self) -> dict[str, Any]:
        """The object ``moa run --json`` prints."""
        return {
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "status": self.status,
            "answer": self.answer,
            "usage": {
                "total": self.usage,
                "by_layer": usage_report(self.values)["by_layer"],
                "by_agent": self.usage_by_agent,
            },
            "interrupts": self.interrupts,
            "next": self.next,
            "notes": self.notes,
            "aggregation": self.aggregation,
            "attribution": self.attribution,
        }

    @property
    def aggregation(self) -> dict[str, Aggregation]:
        """How each layer (key: its number) turned its proposals into its answer: the mode,
        and for ``vote`` the votes and the agreement, for ``select`` the pick and its reason."""
        return dict(self.values.get("aggregation") or {})

    @property
    def attribution(self) -> list[Claim]:
        """The answer's claims (sentences), each with the agents whose proposals support it."""
        return list(self.values.get("attribution") or [])

    @property
    def waiting_for(self) -> list[dict[str, Any]]:
        """What a paused run waits for: the interrupts, or the nodes after a pause."""
        if self.interrupts:
            ids = self.interrupt_ids or [""] * len(self.interrupts)
            return [
                {**(i if isinstance(i, dict) else {"value": i}), "interrupt_id": n}
                for i, n in zip(self.interrupts, ids, strict=False)
            ]
        if self.next:
            return [{"kind": "paused", "next": self.next}]
        return []
