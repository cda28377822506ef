"""Show an evaluation: a rich table, a Markdown table, and a PNG chart (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from langgraph_moa.eval.runner import EvalReport, SpecSummary

__all__ = [
    "ChartUnavailable",
    "markdown_table",
    "require_matplotlib",
    "rich_table",
    "write_chart",
]


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pct(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None or ci is None:
        return "-"
    return f"{value:.1%} [{ci[0]:.0%}, {ci[1]:.0%}]"


def _paired(report: EvalReport, s: SpecSummary) -> list[str]:
    if s.label == report.reference:
        return ["reference", "-"]
    c = report.comparisons.get(s.label)
    if c is None:
        return ["-", "-"]
    low, high = c.ci95
    return [
        f"{c.difference:+.1%} [{low:+.1%}, {high:+.1%}]",
        f"{c.p_value:.3g} ({c.only_baseline}/{c.only_candidate})",
    ]


def _cells(report: EvalReport, s: SpecSummary) -> list[str]:
    win = "baseline" if s.is_baseline else _pct(s.win_rate, s.win_ci)
    per_item = f"{s.tokens / s.answered:.0f}" if s.answered else "-"
    calls = f"{s.calls / s.answered:.1f}" if s.answered else "-"
    p50 = f"{s.latency_p50:.2f}" if s.latency_p50 is not None else "-"
    cells = [
        s.label,
        f"{s.answered}/{s.items}",
        f"{s.correct:g}/{s.closed}" if s.closed else "-",
        _pct(s.accuracy, s.accuracy_ci),
    ]
    if report.reference is not None:
        cells += _paired(report, s)
    if report.baseline is not None:
        cells.append(win)
    total = f"{sum(s.latencies):.0f}" if s.latencies else "-"
    if _reuses(report):
        calls += f" ({s.calls_reused}/{s.calls} reused)"
    return [*cells, per_item, calls, f"{s.cost:.4f}", p50, total, str(s.errors)]


def _reuses(report: EvalReport) -> bool:
    """Whether some results took calls from the call ledger (``--reuse``)."""
    return any(s.calls_reused for s in report.specs)


def _headers(report: EvalReport) -> list[str]:
    headers = ["spec", "answered", "correct", "accuracy [95% CI]"]
    if report.reference is not None:
        headers += [
            f"paired diff vs {report.reference} [95% CI]",
            "McNemar p (only ref / only spec right)",
        ]
    if report.baseline is not None:
        headers.append(f"win rate vs {report.baseline} [95% CI]")
    calls = "calls/item (from the ledger)" if _reuses(report) else "calls/item"
    return [*headers, "tokens/item", calls, "cost", "p50 s", "total s", "errors"]


def rich_table(report: EvalReport) -> Table:
    """The summary as a rich table: accuracy with its Wilson 95% interval; each spec against
    the single model, paired by item (accuracy difference with a paired bootstrap 95%
    interval, exact McNemar p-value and the discordant counts). With results whose calls
    came from the call ledger (``--reuse``), the calls column says how many; latencies are
    those of the answers whose every call went to a model."""
    table = Table(title=f"evaluation {report.eval_id}", title_justify="left")
    for i, header in enumerate(_headers(report)):
        table.add_column(header, justify="left" if i == 0 else "right")
    for s in report.specs:
        table.add_row(*_cells(report, s))
    return table


def markdown_table(report: EvalReport) -> str:
    """The summary as a Markdown table (for a README)."""
    headers = _headers(report)
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(_cells(report, s)) + " |" for s in report.specs]
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Raise :class:`ChartUnavailable`, saying how to install it, if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ChartUnavailable(
            "--chart needs matplotlib, which is not installed; install it with "
            "`pip install matplotlib` (or leave out --chart)"
        ) from None


def write_chart(report: EvalReport, path: Path) -> None:
    """A bar chart of accuracy (and win rate) per spec with 95% Wilson intervals.

    Raises :class:`ChartUnavailable` when matplotlib is not installed.
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "accuracy",
            [(s.label, s.accuracy, s.accuracy_ci) for s in report.specs if s.accuracy is not None],
        ),
        (
            f"win rate vs {report.baseline}",
            [(s.label, s.win_rate, s.win_ci) for s in report.specs if s.win_rate is not None],
        ),
    ]
    panels = [(title, bars) for title, bars in panels if bars]
    if not panels:
        raise ValueError("nothing to chart: no spec has a score yet")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels, strict=True):
        labels = [b[0] for b in bars]
        values = [b[1] or 0.0 for b in bars]
        low = [max(0.0, v - (b[2] or (v, v))[0]) for v, b in zip(values, bars, strict=True)]
        high = [max(0.0, (b[2] or (v, v))[1] - v) for v, b in zip(values, bars, strict=True)]
        ax.bar(range(len(bars)), values, yerr=[low, high], capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(bars)), labels, rotation=15, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        for x, v in enumerate(values):
            ax.text(x, 0.02, f"{v:.0%}", ha="center", fontsize=8, color="white")
    fig.suptitle(f"{report.eval_id} ({report.items} items, 95% Wilson intervals)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
