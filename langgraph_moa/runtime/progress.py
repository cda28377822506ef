"""Live progress of a run, built from LangGraph's ``tasks`` and ``updates`` stream modes."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["AgentRow", "RunProgress", "aggregation_summary", "claim_line"]

Status = Literal["waiting", "running", "done", "failed", "missing", "paused"]
_NODE = re.compile(r"^L(\d+)_(.+)$")
_STYLE = {
    "waiting": "dim",
    "running": "yellow",
    "done": "green",
    "failed": "red",
    "missing": "red",
    "paused": "magenta",
}


@dataclass
class AgentRow:
    """One node of a layer as the view shows it."""

    layer: int
    name: str
    status: Status = "waiting"
    tokens: int = 0
    cost: float = 0.0
    started: float | None = None
    seconds: float | None = None
    note: str = ""
    tool_calls: int = 0
    """Tool calls finished so far (``custom`` stream events of the agent's tool loop)."""


@dataclass
class RunProgress:
    """Folds stream chunks into per-layer, per-agent rows."""

    layers: list[list[str]]
    rows: dict[str, AgentRow] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    usage: dict[str, float] = field(default_factory=dict)
    """Run totals so far: input_tokens, output_tokens, total_tokens, cost."""
    attribution: list[dict[str, Any]] = field(default_factory=list)
    """The final answer's claims with their agents, once the last layer closed."""

    def __post_init__(self) -> None:
        for n, agents in enumerate(self.layers, start=1):
            for name in ["router", *agents, "synthesizer"]:
                self.rows[f"L{n}_{name}"] = AgentRow(layer=n, name=name)

    def feed(self, mode: str, chunk: Any) -> None:
        """Take one ``(mode, chunk)`` item of ``astream(stream_mode=[...])``."""
        if mode == "custom" and isinstance(chunk, dict) and chunk.get("kind") == "tool_call":
            row = self.rows.get(str(chunk.get("node")))
            if row is not None and row.status == "running":
                tool, status = chunk.get("tool"), chunk.get("status")
                if status == "running":
                    row.note = f"{tool} running"
                else:
                    row.tool_calls += 1
                    row.note = f"{tool} {status} ({float(chunk.get('seconds') or 0):.1f}s)"
                    row.note += f", {row.tool_calls} tool calls" if row.tool_calls > 1 else ""
            return
        if mode == "tasks" and isinstance(chunk, dict):
            row = self.rows.get(str(chunk.get("name")))
            if row is None:
                return
            if "triggers" in chunk:
                row.status, row.started = "running", time.monotonic()
                return
            if row.started is not None:
                row.seconds = time.monotonic() - row.started
            if chunk.get("error"):
                row.status, row.note = "failed", str(chunk["error"])[:80]
            elif chunk.get("interrupts"):
                first = chunk["interrupts"][0]  # a dict in the tasks stream, else an Interrupt
                value = first.get("value") if isinstance(first, dict) else first.value
                row.status, row.note = "paused", "waiting for approval"
                if isinstance(value, dict) and value.get("kind") == "budget":
                    row.note = str(value.get("reason", "budget"))[:80]
            else:
                row.status = "done"
                self._result(row, chunk.get("result"))

    def _result(self, row: AgentRow, result: Any) -> None:
        if not isinstance(result, dict):
            return
        for usage in (result.get("usage") or {}).values():
            row.tokens += int(usage.get("total_tokens", 0))
            row.cost += float(usage.get("cost", 0.0))
            for key in ("input_tokens", "output_tokens", "total_tokens", "cost"):
                self.usage[key] = self.usage.get(key, 0) + usage.get(key, 0)
        for by_agent in (result.get("proposals") or {}).values():
            for proposal in by_agent.values():
                status = proposal.get("status")
                if status in ("failed", "missing") and row.name == proposal.get("agent"):
                    row.status, row.note = status, str(proposal.get("error", ""))[:80]
                elif proposal.get("tools") and row.name == proposal.get("agent"):
                    used = proposal["tools"]
                    row.note = "tools: " + ", ".join(
                        f"{n} x{c}" if c > 1 else n for n, c in used.items()
                    )
                    if proposal.get("tool_seconds") is not None:
                        row.note += f" ({proposal['tool_seconds']:.1f}s)"
        for record in (result.get("aggregation") or {}).values():
            row.note = aggregation_summary(record)
        if result.get("attribution"):
            self.attribution = list(result["attribution"])
        self.notes.extend(result.get("notes") or [])

    def render(self) -> RenderableType:
        """A rich table of every layer."""
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        priced = bool(self.usage.get("cost"))
        for col in ("layer", "node", "status", "tokens", *(["cost"] if priced else []), "time", ""):
            table.add_column(col)
        for row in self.rows.values():
            if row.name == "router" and row.status == "waiting":
                continue
            secs = (
                f"{row.seconds:.1f}s"
                if row.seconds is not None
                else (f"{time.monotonic() - row.started:.1f}s" if row.started else "")
            )
            table.add_row(
                str(row.layer),
                row.name,
                Text(row.status, style=_STYLE[row.status]),
                str(row.tokens or ""),
                *([f"{row.cost:.4g}" if row.cost else ""] if priced else []),
                secs,
                Text(row.note, style="dim"),
            )
        lines = [Text(f"note: {n}", style="dim") for n in self.notes[-3:]]
        if self.attribution:
            lines.append(Text("sources of the answer:", style="bold"))
            shown = self.attribution[:MAX_CLAIMS]
            lines += [Text(claim_line(c), style="dim") for c in shown]
            if len(self.attribution) > MAX_CLAIMS:
                lines.append(Text(f"  ... {len(self.attribution) - MAX_CLAIMS} more", style="dim"))
        if self.usage:
            u = self.usage
            total = (
                f"total: {int(u.get('total_tokens', 0))} tokens "
                f"(in {int(u.get('input_tokens', 0))}, out {int(u.get('output_tokens', 0))})"
            )
            lines.append(Text(total + (f" · cost {u['cost']:.4g}" if priced else ""), style="bold"))
        return Group(table, *lines)


MAX_CLAIMS = 8
"""Claims the live view lists (``--json`` has them all)."""


def aggregation_summary(record: dict[str, Any]) -> str:
    """One line on how a layer aggregated: ``vote '48' 2/3 (67%): p1``, ``select [2] p2``."""
    mode, decided = record.get("mode"), record.get("decided_by")
    if mode == "vote" and decided == "vote":
        winner = record.get("winner")
        count = (record.get("votes") or {}).get(winner, 0)
        total = len(record.get("proposals") or [])
        agreement = float(record.get("agreement") or 0)
        return f"vote {winner!r} {count}/{total} ({agreement:.0%}): {record.get('agent')}"
    if mode == "vote":
        return f"vote split, synthesized ({str(record.get('reason', '')).split(':')[0]})"
    if mode == "select" and decided == "select":
        return f"select [{record.get('choice')}] {record.get('agent')}"
    if mode == "select":
        return f"select: pick unreadable, took [1] {record.get('agent')}"
    if mode == "synthesize":
        return f"synthesized, {record.get('cited', 0)} claims cited"
    return str(mode or "")


def claim_line(claim: dict[str, Any], width: int = 72) -> str:
    """A claim and its agents on one line: ``  "Paris is ..." <- p1, p2 (inferred)``."""
    text = " ".join(str(claim.get("text", "")).split())
    if len(text) > width:
        text = text[: width - 3] + "..."
    agents = ", ".join(claim.get("agents") or []) or "no proposal"
    return f'  "{text}" <- {agents}' + (" (inferred)" if claim.get("inferred") else "")
