"""Pairwise LLM judge (AlpacaEval style), asked in both orders to cancel position bias.

Given an evaluation's call source, the judge's calls are rows of the call ledger like every
other model call (node and kind ``judge``), and ``moa eval --reuse`` answers an unchanged one
from it (the judge decodes greedily, temperature 0, unless its model entry sets another)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from langgraph_moa.eval.dataset import EvalItem
from langgraph_moa.models import ModelResolver
from langgraph_moa.nodes._calls import (
    CallRequest,
    CallSource,
    canonical_message,
    ledger_call,
    model_request,
)
from langgraph_moa.spec import ModelSpec
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


JUDGE_MAX_TOKENS = 512


class PairwiseJudge:
    """Asks ``model`` (a model entry, or a chat model as it is) which of two answers is
    better, in both orders, at temperature 0.

    A bare chat model's calls are recorded too, but never answered from the ledger: nothing
    says which server it calls nor whether its replies are repeatable."""

    def __init__(self, model: BaseChatModel | ModelSpec, label: str) -> None:
        self.label = label
        self._models: ModelResolver | None = None
        self._model: BaseChatModel | None = None
        if isinstance(model, ModelSpec):
            self._models = ModelResolver({"judge": model}, "judge")
            self.spec = model
        else:
            self._model, self.spec = model, ModelSpec()

    @property
    def model(self) -> BaseChatModel:
        """The chat model the judge calls (one per event loop for a model entry)."""
        if self._models is not None:
            return self._models.get("judge", temperature=0.0, max_tokens=JUDGE_MAX_TOKENS)
        assert self._model is not None
        return self._model

    def request(self, messages: list[BaseMessage]) -> CallRequest:
        """The call ledger's view of one call of the judge."""
        if self._models is not None:
            return model_request(
                self._models,
                "judge",
                messages,
                node="judge",
                kind="judge",
                temperature=0.0,
                max_tokens=JUDGE_MAX_TOKENS,
            )
        params = {"model": self.label, "temperature": 0.0, "max_tokens": JUDGE_MAX_TOKENS}
        return CallRequest(
            "judge", "judge", self.label, [canonical_message(m) for m in messages], params
        )

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

    async def _ask(
        self, item: EvalItem, a: str, b: str, calls: CallSource | None
    ) -> tuple[Verdict, str, Usage]:
        messages: list[BaseMessage] = list(self.prompt(item, a, b))
        if calls is None:
            reply = await self.model.ainvoke(messages)
        else:
            made = await ledger_call(calls, self.request(messages), self.model, messages, self.spec)
            reply = made.message
        assert isinstance(reply, AIMessage)
        meta = reply.usage_metadata
        usage = Usage(
            input_tokens=meta["input_tokens"] if meta else 0,
            output_tokens=meta["output_tokens"] if meta else 0,
            total_tokens=meta["total_tokens"] if meta else 0,
            calls=1,
        )
        return parse_verdict(reply.text), reply.text, usage

    async def compare(
        self, item: EvalItem, candidate: str, baseline: str, calls: CallSource | None = None
    ) -> Judgment:
        """Judge ``candidate`` against ``baseline`` with each in position A once (the calls
        recorded in, and answered from, ``calls`` when given)."""
        first, reply1, usage1 = await self._ask(item, candidate, baseline, calls)
        second, reply2, usage2 = await self._ask(item, baseline, candidate, calls)
        score = (_points(first, "A") + _points(second, "B")) / 2
        return Judgment([first, second], score, [reply1, reply2], add_usage(usage1, usage2))
