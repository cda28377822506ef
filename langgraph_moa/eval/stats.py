"""Paired statistics: is spec X more or less accurate than the baseline on the same items?

Two accuracies with overlapping intervals say little; the items are shared, so the right
test is paired. For 0/1 scores on the same items:

* :func:`mcnemar_exact`: the exact McNemar test, a two-sided binomial test on the
  discordant items (``b`` = only the baseline right, ``c`` = only X right; ``p = 1/2``
  under the null);
* :func:`paired_bootstrap`: a percentile bootstrap interval of the mean difference,
  resampling items (seeded, so the same scores give the same interval);
* :func:`bootstrap_interval`: the same for one spec's accuracy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

__all__ = [
    "PairedComparison",
    "bootstrap_interval",
    "compare_paired",
    "mcnemar_exact",
    "paired_bootstrap",
]

RESAMPLES = 10_000
"""Bootstrap resamples by default."""


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    ``p = min(1, 2 * P[X <= min(b, c)])`` with ``X ~ Binomial(b + c, 1/2)``; 1.0 when there
    is no discordant pair (nothing tells the two apart).
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _percentiles(values: list[float], level: float) -> tuple[float, float]:
    values.sort()
    alpha = (1 - level) / 2
    last = len(values) - 1
    return values[round(alpha * last)], values[round((1 - alpha) * last)]


def bootstrap_interval(
    scores: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (items resampled)."""
    n = len(scores)
    if n == 0:
        return 0.0, 1.0
    rng = random.Random(seed)
    data = list(scores)
    means = [sum(rng.choices(data, k=n)) / n for _ in range(resamples)]
    return _percentiles(means, level)


def paired_bootstrap(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of ``candidate - baseline`` over paired items and its percentile bootstrap
    interval: (difference, low, high). Items are resampled as pairs."""
    if len(candidate) != len(baseline):
        raise ValueError(
            f"paired scores need the same items: {len(candidate)} vs {len(baseline)} scores"
        )
    n = len(candidate)
    if n == 0:
        return 0.0, -1.0, 1.0
    diffs = [x - y for x, y in zip(candidate, baseline, strict=True)]
    rng = random.Random(seed)
    means = [sum(rng.choices(diffs, k=n)) / n for _ in range(resamples)]
    low, high = _percentiles(means, level)
    return sum(diffs) / n, low, high


@dataclass(frozen=True)
class PairedComparison:
    """A spec against the baseline on the items both answered (closed items only)."""

    candidate: str
    baseline: str
    items: int
    both: int
    only_baseline: int
    """McNemar's ``b``: items only the baseline got right."""
    only_candidate: int
    """McNemar's ``c``: items only the candidate got right."""
    neither: int
    difference: float
    """Candidate accuracy minus baseline accuracy on these items."""
    ci95: tuple[float, float]
    p_value: float
    """Exact two-sided McNemar p-value."""

    def to_json(self) -> dict[str, object]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "items": self.items,
            "both_right": self.both,
            "only_baseline_right": self.only_baseline,
            "only_candidate_right": self.only_candidate,
            "both_wrong": self.neither,
            "difference": round(self.difference, 4),
            "difference_ci95": [round(x, 4) for x in self.ci95],
            "mcnemar_p": round(self.p_value, 6),
            "test": "exact McNemar (two-sided); paired percentile bootstrap of the difference",
        }


def compare_paired(
    candidate: str,
    baseline: str,
    candidate_scores: dict[str, float],
    baseline_scores: dict[str, float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> PairedComparison:
    """Pair two specs' 0/1 scores by item id (items scored for both only)."""
    ids = sorted(set(candidate_scores) & set(baseline_scores))
    x = [candidate_scores[i] for i in ids]
    y = [baseline_scores[i] for i in ids]
    both = sum(1 for a, b in zip(x, y, strict=True) if a >= 0.5 and b >= 0.5)
    only_b = sum(1 for a, b in zip(x, y, strict=True) if a < 0.5 <= b)
    only_c = sum(1 for a, b in zip(x, y, strict=True) if b < 0.5 <= a)
    difference, low, high = paired_bootstrap(x, y, seed=seed, resamples=resamples)
    return PairedComparison(
        candidate=candidate,
        baseline=baseline,
        items=len(ids),
        both=both,
        only_baseline=only_b,
        only_candidate=only_c,
        neither=len(ids) - both - only_b - only_c,
        difference=difference,
        ci95=(low, high),
        p_value=mcnemar_exact(only_b, only_c),
    )
