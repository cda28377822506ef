"""Evaluation datasets: JSONL files of questions with a reference, a regex or a rubric.

One JSON object per line::

    {"id": "arith-01", "input": "What is 17 x 23? Answer with just the number.", "reference": "391"}
    {"input": "Capital of France?", "reference": "Paris", "regex": "(?i)\\bparis\\b"}
    {"input": "Explain WAL in SQLite.", "rubric": "Correct, mentions readers and writers."}

* ``input`` (required): the task given to each spec.
* ``reference``: the right answer (a string, a number, or a list of accepted answers),
  scored by exact match after normalisation (:func:`~langgraph_moa.eval.scoring.exact_match`).
* ``regex``: scored by ``re.search`` in the answer (case-sensitive unless ``(?i)``); wins
  over ``reference`` for scoring, the reference is then only shown to the judge.
* ``rubric``: an open question, judged pairwise against the baseline spec's answer.
* ``id`` (default ``line-N``), ``category`` (free text, reported per category).
* ``source``: how the answer is known (free text). The shipped set uses ``arithmetic: EXPR``,
  ``python: EXPR`` (the reference is what the expression gives), ``python program: ...``
  (what the snippet prints), ``definition: ...`` and ``fact: ... (a public reference)``.

:func:`select_items` picks the deterministic subset ``moa eval --limit N`` runs, and
:func:`shard_items` the share of it one of several processes runs (``--shard K/N``).
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "BUILTIN",
    "DatasetError",
    "EvalItem",
    "dataset_digest",
    "load_dataset",
    "select_items",
]

BUILTIN = ("basic", "compute")
"""Datasets shipped in the package (``langgraph_moa/eval/data/<name>.jsonl``)."""


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and line."""


class EvalItem(BaseModel):
    """One question of a dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=100)
    input: str = Field(min_length=1)
    reference: list[str] | None = None
    regex: str | None = None
    rubric: str | None = None
    category: str | None = None
    source: str | None = None

    @field_validator("reference", mode="before")
    @classmethod
    def _references(cls, value: Any) -> Any:
        if value is None or isinstance(value, list):
            return [str(v) for v in value] if isinstance(value, list) else None
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return [str(value)]
        raise ValueError("reference must be a string, a number or a list of them")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from None
        return value

    @property
    def scorer(self) -> Literal["regex", "exact", "judge"]:
        """How the item is scored: ``regex``, ``exact`` or pairwise ``judge``."""
        if self.regex is not None:
            return "regex"
        if self.reference:
            return "exact"
        return "judge"


def _resolve(source: str | Path) -> tuple[Path | None, str, str]:
    """(path, text, display name) of a file path or a built-in dataset name."""
    if isinstance(source, str) and source in BUILTIN and not Path(source).exists():
        text = resources.files("langgraph_moa.eval").joinpath(f"data/{source}.jsonl").read_text()
        return None, text, source
    path = Path(source)
    try:
        return path, path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: no such dataset file; give a JSONL file or a built-in dataset "
            f"({', '.join(BUILTIN)})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the dataset ({exc})") from None


def load_dataset(source: str | Path) -> list[EvalItem]:
    """Read and validate a JSONL dataset (a path, or a name in :data:`BUILTIN`).

    Raises :class:`DatasetError` naming ``file:line`` and the field at fault.
    """
    _, text, name = _resolve(source)
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        where = f"{name}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{where}: each line must be a JSON object with an 'input'")
        data.setdefault("id", f"line-{number}")
        try:
            item = EvalItem.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}"
                if e["type"] != "extra_forbidden"
                else f"{e['loc'][0]}: unknown field (use input, reference, regex, rubric, id, "
                "category, source)"
                for e in exc.errors()
            )
            raise DatasetError(f"{where}: {problems}") from None
        if not (item.reference or item.regex or item.rubric):
            raise DatasetError(
                f"{where}: item {item.id!r} has nothing to score against; give a "
                "'reference', a 'regex' or a 'rubric'"
            )
        if item.id in seen:
            raise DatasetError(f"{where}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise DatasetError(f"{name}: the dataset has no items")
    return items


def dataset_digest(items: list[EvalItem]) -> str:
    """A short hash of the items, to name an evaluation and notice a changed dataset."""
    # a field added later counts only when set, so older datasets keep their ids
    dumped = [
        {k: v for k, v in i.model_dump().items() if k != "source" or v is not None} for i in items
    ]
    canonical = json.dumps(dumped, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def _rank(item: EvalItem) -> str:
    return hashlib.sha256(item.id.encode()).hexdigest()


def select_items(items: list[EvalItem], limit: int | None) -> list[EvalItem]:
    """A deterministic subset of ``limit`` items covering the categories evenly: categories
    take turns, each giving its items in the order of a hash of their id; the items come
    in that order (which is the order an evaluation runs them).

    The same ``limit`` always gives the same items, and a larger ``limit`` gives a superset
    whose first items are the smaller one's (so a quick run's results are reused by a
    longer one, and a longer run stopped early has finished a smaller one's items first);
    no ``limit`` gives every item, in that order too.
    """
    if limit is None or limit > len(items):
        limit = len(items)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    groups: dict[str, list[EvalItem]] = {}
    for item in items:
        groups.setdefault(item.category or "", []).append(item)
    queues = [sorted(groups[c], key=_rank) for c in sorted(groups)]
    chosen: list[EvalItem] = []
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``, with 1 <= K <= N."""
    k, slash, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = (0, 0)
    if not slash or not 1 <= shard[0] <= shard[1]:
        raise ValueError(f"--shard {text!r}: use K/N with 1 <= K <= N, e.g. 1/2 and 2/2")
    return shard


def shard_items(items: list[EvalItem], shard: tuple[int, int] | None) -> list[EvalItem]:
    """The ``K``-th of ``N`` shares of ``items``, in their order: each category is dealt
    out in turn (its ``j``-th item goes to share ``(j + c) % N``, ``c`` the category's
    rank), so every share covers the categories evenly. ``N`` processes on one store,
    ``K`` = 1..N, compute an evaluation together; the shares are disjoint and cover every
    item. (Every ``N``-th item of :func:`select_items`' order would give each share whole
    categories when ``N`` divides their number.)"""
    if shard is None:
        return list(items)
    k, n = shard
    rank = {c: r for r, c in enumerate(sorted({i.category or "" for i in items}))}
    dealt: dict[str, int] = {}
    chosen: list[EvalItem] = []
    for item in items:
        category = item.category or ""
        j = dealt[category] = dealt.get(category, -1) + 1
        if (j + rank[category]) % n == k - 1:
            chosen.append(item)
    return chosen
