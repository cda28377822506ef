"""Attribution: which agents' proposals support each claim (sentence) of an answer.

A synthesizer cites the numbered proposals of its prompt (``[1]``, ``[2, 3]``, or an agent's
name in brackets); :func:`attribute` reads those citations, removes them from the answer
and, for a claim without one, infers its support from word overlap with the proposals
(``inferred``). :func:`copied` attributes an answer that is one proposal as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from langgraph_moa.state import Claim

__all__ = ["OVERLAP", "attribute", "claims_of", "copied", "strip_citations"]

OVERLAP = 0.5
"""Share of a claim's content words a proposal must contain to support it (inferred)."""

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_WORD = re.compile(r"[^\W_]+")
_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "are",
        "but",
        "not",
        "you",
        "all",
        "any",
        "can",
        "had",
        "her",
        "was",
        "one",
        "our",
        "out",
        "has",
        "his",
        "how",
        "its",
        "may",
        "new",
        "now",
        "see",
        "two",
        "who",
        "did",
        "get",
        "let",
        "put",
        "say",
        "she",
        "too",
        "use",
        "that",
        "with",
        "have",
        "this",
        "will",
        "your",
        "from",
        "they",
        "been",
        "were",
        "which",
        "their",
        "there",
        "what",
        "when",
        "than",
        "them",
        "then",
        "into",
        "more",
        "some",
        "such",
        "also",
        "only",
        "other",
        "these",
        "those",
        "would",
        "could",
        "should",
        "about",
        "after",
        "over",
        "very",
        "just",
        "most",
        "each",
        "both",
        "here",
        "where",
        "while",
        "being",
        "does",
        "because",
        "between",
        "same",
        "answer",
    ]
)


def _marker(agents: Sequence[str]) -> re.Pattern[str]:
    """A citation: ``[1]``, ``[1, 2]``, ``[1-3]``, ``[name]`` (not ``x[1]``, an index)."""
    names = "|".join(re.escape(a) for a in sorted(agents, key=len, reverse=True))
    item = r"\d+(?:\s*[-\u2013]\s*\d+)?" + (f"|{names}" if names else "")
    # a run of blanks is tried from its first one only: linear time on long runs
    lead = r"(?:(?<![ \t])[ \t]+|(?<![\w\[ \t]))"
    return re.compile(rf"{lead}\[\s*(?:{item})(?:\s*[,;]\s*(?:{item}))*\s*\]")


def _cited(marker: str, agents: Sequence[str]) -> list[int] | None:
    """The proposal numbers a marker cites; None when one is out of range (not a citation)."""
    numbers: list[int] = []
    for part in re.split(r"[,;]", marker.strip().strip("[]")):
        part = part.strip()
        span = re.fullmatch(r"(\d+)\s*[-\u2013]\s*(\d+)", part)
        if span:
            low, high = int(span.group(1)), int(span.group(2))
            if not 1 <= low <= high <= len(agents):  # checked first: [1-99999999] is cheap
                return None
            found = list(range(low, high + 1))
        elif part.isdigit():
            found = [int(part)]
        else:
            found = [agents.index(part) + 1] if part in agents else []
        if not found or not all(1 <= n <= len(agents) for n in found):
            return None
        numbers += [n for n in found if n not in numbers]
    return numbers


def _sentences(line: str) -> list[str]:
    """A line split after ``.``, ``!`` or ``?`` (and the citations that follow them)
    before white space; ``3.14`` and ``x.y`` stay whole."""
    ends = re.finditer(r"(?<![.!?])[.!?]+['\")]*(?:[ \t]*\[[^\[\]\n]{1,40}\])*(?=\s|$)", line)
    parts, start = [], 0
    for end in ends:
        parts.append(line[start : end.end()])
        start = end.end()
    parts.append(line[start:])
    return [p.strip() for p in parts if p.strip()]


def claims_of(text: str) -> list[str]:
    """The claims of ``text``: each sentence of each line, and each fenced code block
    whole; lines without a letter or digit (rules, blank lines) are left out."""
    claims: list[str] = []
    pos = 0
    for fence in _FENCE.finditer(text):
        claims += _prose_claims(text[pos : fence.start()])
        claims.append(fence.group(0))
        pos = fence.end()
    return claims + _prose_claims(text[pos:])


def _prose_claims(text: str) -> list[str]:
    out: list[str] = []
    for line in text.splitlines():
        out += [s for s in _sentences(line) if _WORD.search(s)]
    return out


def strip_citations(text: str, agents: Sequence[str]) -> str:
    """``text`` without the citation markers of proposals 1..len(agents) (code blocks and
    other bracketed text are kept)."""
    marker = _marker(agents)

    def drop(match: re.Match[str]) -> str:
        return "" if _cited(match.group(0), agents) is not None else match.group(0)

    pieces, pos = [], 0
    for fence in _FENCE.finditer(text):
        pieces.append(marker.sub(drop, text[pos : fence.start()]))
        pieces.append(fence.group(0))
        pos = fence.end()
    pieces.append(marker.sub(drop, text[pos:]))
    return "".join(pieces)


def _content_words(text: str) -> set[str]:
    words = {w.lower() for w in _WORD.findall(text)}
    return {w for w in words if (len(w) >= 3 or w.isdigit()) and w not in _STOP}


def attribute(
    reply: str, agents: Sequence[str], proposals: Sequence[str]
) -> tuple[str, list[Claim]]:
    """The answer (``reply`` without its citations) and its claims; ``agents[i]`` wrote
    ``proposals[i]``, cited as ``[i + 1]``.

    A claim's agents are those it cites, in proposal order; a claim citing none is
    supported (``inferred``) by every proposal holding at least :data:`OVERLAP` of its
    content words (words of 3+ letters or numbers, common words left out), in proposal
    order; with no such proposal its agents are empty.
    """
    marker = _marker(agents)
    vocab = [_content_words(p) for p in proposals]
    claims: list[Claim] = []
    for raw in claims_of(reply):
        fenced = bool(_FENCE.fullmatch(raw))
        numbers: list[int] = []
        if not fenced:
            for match in marker.finditer(raw):
                cited = _cited(match.group(0), agents)
                numbers += [n for n in cited or [] if n not in numbers]
            numbers.sort()
        text = raw if fenced else strip_citations(raw, agents).strip()
        if not text or not _WORD.search(text):
            continue
        inferred = not numbers
        if inferred:
            words = _content_words(text)
            if words:
                numbers = [
                    i
                    for i, have in enumerate(vocab, 1)
                    if len(words & have) >= OVERLAP * len(words)
                ]
        claims.append(
            Claim(
                text=text,
                agents=[agents[n - 1] for n in numbers],
                proposals=numbers,
                inferred=inferred,
            )
        )
    return strip_citations(reply, agents).strip(), claims


def copied(text: str, sources: Sequence[tuple[int, str]]) -> list[Claim]:
    """The claims of ``text`` copied from proposals: every claim is supported by each
    ``(number, agent)`` of ``sources`` (not inferred)."""
    return [
        Claim(
            text=claim,
            agents=[a for _, a in sources],
            proposals=[n for n, _ in sources],
            inferred=False,
        )
        for claim in claims_of(text)
    ]
