"""Aggregation without synthesis: a majority vote over the proposals' final answers, and
reading a synthesizer's pick of the best proposal (modes ``vote`` and ``select``)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

__all__ = [
    "Pick",
    "Vote",
    "canonical_number",
    "extract_answer",
    "normalize_answer",
    "parse_pick",
    "tally",
]

_BOXED = re.compile(r"\\boxed\{([^{}\n]+)\}")
_MARKER = re.compile(
    r"\b(?:final answer|answer)\s*(?:is|was|:|=|-)\s*(?::\s*)?(\S[^\n]*)", re.IGNORECASE
)
_LIST_ITEM = re.compile(r"^(?:[-*+>]|#+)\s+")
_DECORATION = "*_`\"'\u201c\u201d\u2018\u2019\u00ab\u00bb \t"
_THOUSANDS = re.compile(r"(?<=\d)[,_](?=\d{3}(?!\d))")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
_CHOICE = re.compile(
    r"^(?:\(([a-h])\)|([a-h])[.):](?:\s|$)|(?:option|choice|letter)\s+\(?([a-h])\)?\b|([a-h])$)"
)
_YES = {"yes", "yeah", "yep", "true", "correct"}
_NO = {"no", "nope", "false", "incorrect"}
_ARTICLES = {"a", "an", "the"}
_WORD = re.compile(r"[^\W_]+")
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}


def extract_answer(text: str) -> str | None:
    """The final answer of a proposal, as written: the last ``\\boxed{...}``, else the
    text after the last "answer is"/"answer:" marker, else the last non-empty line
    (a one-line proposal is its own answer). None for a blank proposal."""
    text = text.strip()
    if not text:
        return None
    boxed = _BOXED.findall(text)
    if boxed:
        found = boxed[-1]
    else:
        markers = list(_MARKER.finditer(text))
        if markers:
            found = markers[-1].group(1)
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            found = lines[-1]
    found = _LIST_ITEM.sub("", found.strip()).replace("**", "").replace("__", "")
    found = found.strip(_DECORATION)
    return found.rstrip(".!;, ").strip(_DECORATION) or None


def canonical_number(token: str) -> str:
    """A number token written one way: ``48.0`` and ``48`` give ``48``, ``0.50`` gives
    ``0.5``; a fraction or anything else is returned as it is."""
    if "/" in token:
        return token
    try:
        value = Decimal(token)
    except InvalidOperation:
        return token
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def normalize_answer(answer: str) -> str | None:
    """The key two answers must share to count as the same vote.

    Multiple-choice letters become ``(b)`` (``B``, ``(B)``, ``b)``, ``B. Paris``, ``option
    B``); yes/no answers ``yes``/``no`` by their first word (``True``, ``Correct.``, ``No,
    because...``); an answer holding numbers its last number, canonical (``1,000.50`` ->
    ``1000.5``, ``$48`` -> ``48``, ``seven`` -> ``7``); anything else its lower-case words
    without punctuation or articles. None when nothing is left.
    """
    text = unicodedata.normalize("NFKC", answer).strip().strip(_DECORATION).lower()
    choice = _CHOICE.match(text)
    if choice:
        return f"({next(g for g in choice.groups() if g)})"
    words = _WORD.findall(text)
    if not words:
        return None
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO:
        return "no"
    numbers = _NUMBER.findall(_THOUSANDS.sub("", text))
    if numbers:
        return canonical_number(numbers[-1])
    if len(words) == 1 and words[0] in _NUMBER_WORDS:
        return _NUMBER_WORDS[words[0]]
    kept = [w for w in words if w not in _ARTICLES]
    return " ".join(kept or words)


@dataclass(frozen=True)
class Vote:
    """The result of a majority vote over the proposals of one layer."""

    answers: dict[str, str | None]
    """Each agent's final answer as extracted (None: none found)."""
    keys: dict[str, str | None]
    """Each agent's normalized answer."""
    votes: dict[str, int]
    """Normalized answer -> votes, most first (ties in the order the agents are listed)."""
    agreement: float
    """Share of all the proposals that gave the most frequent answer (0 when none)."""
    tie: bool
    winner: str | None
    """The normalized answer that won, None on a tie or below ``min_agreement``."""
    agent: str | None
    """The first agent (in order) that gave the winning answer."""

    def describe(self) -> str:
        """The votes as a short text: ``'48' x2 (p1, p2), '46' x1 (p3)``."""
        parts = []
        for key, count in self.votes.items():
            who = ", ".join(a for a, k in self.keys.items() if k == key)
            parts.append(f"{key!r} x{count} ({who})")
        silent = [a for a, k in self.keys.items() if k is None]
        if silent:
            parts.append(f"no answer found ({', '.join(silent)})")
        return ", ".join(parts) or "no answers"


def tally(texts: dict[str, str], *, min_agreement: float = 0.5) -> Vote:
    """Vote over ``texts`` (agent -> proposal): the most frequent normalized answer wins
    when it is alone at the top and its share of all the proposals is ``min_agreement``
    or more."""
    answers = {agent: extract_answer(text) for agent, text in texts.items()}
    keys = {agent: normalize_answer(a) if a else None for agent, a in answers.items()}
    counted = Counter(k for k in keys.values() if k is not None)
    first = {k: i for i, k in reversed(list(enumerate(keys.values()))) if k is not None}
    order = sorted(counted, key=lambda k: (-counted[k], first[k]))
    votes = {k: counted[k] for k in order}
    top = votes[order[0]] if order else 0
    tie = len(order) > 1 and votes[order[1]] == top
    agreement = top / len(texts) if texts else 0.0
    won = bool(order) and not tie and agreement >= min_agreement
    winner = order[0] if won else None
    agent = next((a for a, k in keys.items() if k == winner), None) if won else None
    return Vote(answers, keys, votes, round(agreement, 4), tie, winner, agent)


@dataclass(frozen=True)
class Pick:
    """A synthesizer's choice of the best proposal."""

    choice: int | None
    """1-based number of the picked proposal; None when the reply names none."""
    reason: str


_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_NAMED = re.compile(
    r"\b(?:proposal|response|choice|option|number|best)(?:\s*(?:is\b|:))?\s*(?:#\s*)?(\d+)\b",
    re.IGNORECASE,
)
_LEADING = re.compile(r"^\W*(\d+)\W*$", re.MULTILINE)  # a first line that is only a number
_REASON = re.compile(r"^\s*(?:reason|because|why)\s*[:\-]\s*", re.IGNORECASE)


def parse_pick(reply: str, count: int, agents: list[str] | None = None) -> Pick:
    """Read which of ``count`` numbered proposals a reply picks: JSON ``{"choice": n,
    "reason": ...}``, else the first ``[n]``, "proposal n" or first line that is only a
    number, in 1..count, else the one agent name it mentions ("the answer is 2" is no
    pick: a synthesizer answering the task is not misread). The reason is the rest of the
    reply."""
    text = reply.strip()
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            data = json.loads(text[start : end + 1])
        except ValueError:
            data = None
        if isinstance(data, dict):
            value = next(
                (data[k] for k in ("choice", "best", "proposal", "pick") if k in data), None
            )
            number = value if type(value) is int else _int(value)  # not a bool
            if number is not None and 1 <= number <= count:
                return Pick(number, str(data.get("reason") or "").strip())
    first, _, rest = text.partition("\n")
    for pattern in (_BRACKETED, _NAMED, _LEADING):
        for match in pattern.finditer(first if pattern is _LEADING else text):
            number = int(match.group(1))
            if 1 <= number <= count:
                on_first = match.start() < len(first)
                reason = rest.strip() if on_first and rest.strip() else text
                return Pick(number, _REASON.sub("", reason).strip())
    named = [i for i, a in enumerate(agents or [], 1) if re.search(rf"\b{re.escape(a)}\b", text)]
    if len(named) == 1:
        return Pick(named[0], text)
    return Pick(None, text)


def _int(value: object) -> int | None:
    if isinstance(value, str) and value.strip().strip("[]#").isdigit():
        return int(value.strip().strip("[]#"))
    return None
