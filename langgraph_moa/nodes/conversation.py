"""Threads as conversations: the earlier turns a node shows its model, fitted to its window.

A thread's ``messages`` hold one human message per turn followed by that turn's final
answer. Agents, routers and synthesizers see the earlier turns (questions and answers,
never proposals) as chat messages before the current task; when they do not fit the
model's context window the oldest turns are left out first and the prompt says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.utils import count_tokens_approximately

from langgraph_moa.nodes import prompts
from langgraph_moa.state import MoAState, Turn

__all__ = [
    "HISTORY_MARGIN",
    "earlier_turns",
    "fit_turns",
    "history_note",
    "tokens_of",
    "turn_messages",
    "with_history",
]

HISTORY_MARGIN = 64
"""Tokens kept free besides the reply when fitting the history (template, counting error)."""


def tokens_of(messages: Sequence[BaseMessage]) -> int:
    """Approximate prompt size of ``messages`` in tokens."""
    return count_tokens_approximately(list(messages))


def earlier_turns(state: MoAState) -> list[Turn]:
    """The turns before the current one, oldest first.

    The current turn starts at the human message ``state["asked"]`` (or the last human
    message); every earlier human message opens a turn whose answer is the last AI
    message before the next human one ("" if the turn was never answered).
    """
    messages: list[AnyMessage] = list(state.get("messages") or [])
    asked = state.get("asked")
    end = next((i for i, m in enumerate(messages) if asked and m.id == asked), None)
    if end is None:
        humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
        end = humans[-1] if humans else len(messages)
    turns: list[Turn] = []
    for message in messages[:end]:
        if isinstance(message, HumanMessage):
            turns.append(Turn(question=message.text, answer=""))
        elif isinstance(message, AIMessage) and turns and message.text:
            turns[-1]["answer"] = message.text
    return turns


def turn_messages(turns: Sequence[Turn]) -> list[BaseMessage]:
    """The turns as chat messages: each question, then its answer when there is one."""
    out: list[BaseMessage] = []
    for turn in turns:
        out.append(HumanMessage(turn["question"]))
        if turn["answer"]:
            out.append(AIMessage(turn["answer"]))
    return out


def fit_turns(turns: Sequence[Turn], budget: int) -> tuple[list[Turn], int]:
    """The most recent turns that fit ``budget`` tokens, and how many older ones were left out."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        size = tokens_of(turn_messages([turn]))
        if used + size > budget:
            break
        kept.append(turn)
        used += size
    kept.reverse()
    return kept, len(turns) - len(kept)


def history_note(dropped: int, total: int) -> str:
    """What a prompt says when older turns were left out ("" if none were)."""
    if not dropped:
        return ""
    return prompts.HISTORY_TRIMMED.format(dropped=dropped, total=total)


def with_history(
    messages: list[BaseMessage], turns: Sequence[Turn], dropped: int = 0
) -> list[BaseMessage]:
    """``[system, task...]`` with the earlier ``turns`` between them and a note if trimmed."""
    if not turns and not dropped:
        return messages
    head, rest = messages[:1], messages[1:]
    note = history_note(dropped, dropped + len(turns))
    if note and head and isinstance(head[0], SystemMessage):
        head = [SystemMessage(f"{head[0].text}\n\n{note}")]
    elif note:
        head = [*head, SystemMessage(note)]
    return [*head, *turn_messages(turns), *rest]


def fitted_history(
    state: MoAState, base: list[BaseMessage], window: int, reply_tokens: int
) -> tuple[list[Turn], int]:
    """The earlier turns of ``state`` that fit beside prompt ``base`` in ``window`` tokens."""
    turns = earlier_turns(state)
    if not turns:
        return [], 0
    budget = window - reply_tokens - tokens_of(base) - HISTORY_MARGIN
    return fit_turns(turns, max(budget, 0))
