"""Pairwise LLM judge (AlpacaEval style), asked in both orders to cancel position bias."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langgraph_moa.eval.dataset import EvalItem
from langgraph_moa.state import Usage, add_usage

__all__ = ["JUDGE_SYSTEM", "Judgment", "PairwiseJudge", "Verdict", "parse_verdict"]

Verdict = Literal["A", "B", "tie", "invalid"]

JUDGE_SYSTEM = (
    "You are a careful, impartial judge. You compare two responses to the same instruction "
    "and decide which one is better: more correct first, then more helpful and complete. "
    "The order of the responses and their length must not influence you. Think briefly, "
    "then end your reply with one line: 'Winner: A', 'Winner: B' or 'Winner: tie'."
)

_WINNER = re.compile(r"winner\W{0,5}(response\s+)?\**\s*\(?(A|B|tie)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(?:response\s+)?\(?(A|B|tie)\)?\W*$", re.IGNORECASE)


def parse_verdict(text: str) -> Verdict:
    """``A``, ``B`` or ``tie`` from the judge's reply (its last ``Winner:`` line), else
    ``invalid``."""
    found = _WINNER.findall(text)
    if found:
        choice = found[-1][1]
    else:
        bare = _BARE.match(text.strip())
        if bare is None:
            return "invalid"
        choice = bare.group(1)
    return "tie" if choice.lower() == "tie" else "A" if choice.upper() == "A" else "B"


@dataclass
class Judgment:
    """The two verdicts on (candidate, baseline) and the candidate's score.

    ``verdicts[0]`` is with the candidate as response A, ``verdicts[1]`` with it as B.
    Per order a win counts 1, a tie or an invalid reply 0.5, a loss 0; the score is the
    mean of the two orders, so a judge that always picks the same position scores 0.5.
    """

    verdicts: list[Verdict]
    score: float
    replies: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage())


def _points(verdict: Verdict, candidate_is: Literal["A", "B"]) -> float:
    if verdict in ("tie", "invalid"):
        return 0.5
    return 1.0 if verdict == candidate_is else 0.0


class PairwiseJudge:
    """Asks ``model`` which of two answers is better, in both orders."""

    def __init__(self, model: BaseChatModel, label: str) -> None:
        self.model = model
        self.label = label

    @staticmethod
    def prompt(item: EvalItem, a: str, b: str) -> list[SystemMessage | HumanMessage]:
        """The judge's messages for responses ``a`` and ``b`` to ``item``."""
        parts = [f"Instruction:\n{item.input}"]
        if item.reference:
            parts.append("Reference answer:\n" + " | ".join(item.reference))
        if item.rubric:
            parts.append(f"What a good response does:\n{item.rubric}")
        parts += [f"Response A:\n{a.strip()}", f"Response B:\n{b.strip()}"]
        parts.append(
            "Which response is better? End with 'Winner: A', 'Winner: B' or 'Winner: tie'."
        )
        return [SystemMessage(JUDGE_SYSTEM), HumanMessage("\n\n".join(parts))]

    async def _ask(self, item: EvalItem, a: str, b: str) -> tuple[Verdict, str, Usage]:
        reply = await self.model.ainvoke(self.prompt(item, a, b))
        assert isinstance(reply, AIMessage)
        meta = reply.usage_metadata
        usage = Usage(
            input_tokens=meta["input_tokens"] if meta else 0,
            output_tokens=meta["output_tokens"] if meta else 0,
            total_tokens=meta["total_tokens"] if meta else 0,
            calls=1,
        )
        return parse_verdict(reply.text), reply.text, usage

    async def compare(self, item: EvalItem, candidate: str, baseline: str) -> Judgment:
        """Judge ``candidate`` against ``baseline`` with each in position A once."""
        first, reply1, usage1 = await self._ask(item, candidate, baseline)
        second, reply2, usage2 = await self._ask(item, baseline, candidate)
        score = (_points(first, "A") + _points(second, "B")) / 2
        return Judgment([first, second], score, [reply1, reply2], add_usage(usage1, usage2))
