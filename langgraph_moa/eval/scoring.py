"""Scorers of closed answers (exact match, regex) and the Wilson confidence interval."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

from langgraph_moa.nodes.aggregation import canonical_number

__all__ = [
    "answer_candidates",
    "exact_match",
    "normalize",
    "regex_match",
    "wilson_interval",
]

_SMALL_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(_SMALL_NUMBERS.split(" "))} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "hundred": "100",
    "thousand": "1000",
}
_ARTICLES = {"a", "an", "the"}
_TOKEN = re.compile(r"-?\d+(?:\.\d+)?|[^\W_]+", re.UNICODE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_MARKER = re.compile(
    r"(?:final answer|answer|output|result)\s*(?:is|:|=)\s*(.+)|\bprints?\s*:?\s*(.+)",
    re.IGNORECASE,
)
_EMPHASIS = re.compile(r"\*\*(.+?)\*\*|\\boxed\{(.+?)\}|`([^`\n]+)`")


def normalize(text: str) -> str:
    """Lower case, words and numbers only, articles dropped, numbers canonical.

    ``"The answer is 1,000.50!"`` and ``"answer is 1000.5"`` both give
    ``"answer is 1000.5"``; ``"Seven"`` gives ``"7"``; a lone ``"A"`` stays ``"a"``.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _THOUSANDS.sub("", text)
    tokens = _TOKEN.findall(text)
    words = []
    for token in tokens:
        if token in _ARTICLES and len(tokens) > 1:  # a lone "A" is a choice's letter
            continue
        token = _NUMBER_WORDS.get(token, token)
        words.append(canonical_number(token) if _NUMBER.fullmatch(token) else token)
    return " ".join(words)


def answer_candidates(answer: str, *, numeric: bool) -> list[str]:
    """The parts of a free-text answer that may hold the final answer.

    The whole answer, the text after the last "answer is"/"answer:"/"prints" marker, the
    first and last non-empty lines, emphasised spans (``**x**``, ``\\boxed{x}``, ```x```),
    and, when the reference is a number, the last number in the answer (the GSM8K rule).
    """
    answer = answer.strip()
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    candidates = [answer]
    markers = list(_MARKER.finditer(answer))
    if markers:
        last = markers[-1]
        candidates.append((last.group(1) or last.group(2) or "").splitlines()[0])
    if lines:
        candidates += [lines[0], lines[-1]]
    for match in _EMPHASIS.finditer(answer):
        candidates.append(next(g for g in match.groups() if g is not None))
    if numeric:
        numbers = _NUMBER.findall(_THOUSANDS.sub("", unicodedata.normalize("NFKC", answer)))
        if numbers:
            candidates.append(numbers[-1])
    return candidates


def exact_match(answer: str, references: Sequence[str]) -> str | None:
    """The candidate of ``answer`` equal to a reference after :func:`normalize`, or None."""
    wanted = {normalize(r) for r in references}
    numeric = any(_NUMBER.fullmatch(w) for w in wanted)
    for candidate in answer_candidates(answer, numeric=numeric):
        if normalize(candidate) in wanted:
            return candidate
    return None


def regex_match(answer: str, pattern: str | re.Pattern[str]) -> str | None:
    """The first match of ``pattern`` in ``answer`` (``re.search``), or None."""
    found = re.search(pattern, answer)
    return found.group(0) if found else None


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for ``z=1.96``).

    ``successes`` may be fractional (win rates count a tie as half a win).
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)
