"""Prompts of the agent, router and synthesizer nodes."""

from __future__ import annotations

AGENT_SYSTEM = (
    "You are {name}, one expert in a team of agents working on the same task. {description}"
    "Answer the task you are given directly and concisely."
)

AGENT_REFERENCES = (
    "Other agents answered in the previous round. Use their work critically: keep what is "
    "right, fix what is wrong, and add what is missing.\n\n{references}"
)

ROUTER_SYSTEM = (
    "You are the router of a team of agents. Split the user's task into subtasks and give "
    "each subtask to the agent best suited to it. Use only these agents:\n{agents}\n\n"
    "Reply with JSON only, no prose, in exactly this form:\n"
    '{{"plan": [{{"agent": "<agent name>", "subtask": "<what this agent must do>"}}]}}'
)

ROUTER_REPAIR = (
    "Your plan could not be used: {error}. Reply again with JSON only, using only the "
    "agents listed, in the form "
    '{{"plan": [{{"agent": "<agent name>", "subtask": "<what this agent must do>"}}]}}.'
)

# The aggregate-and-synthesize prompt of Wang et al. 2024 (Mixture-of-Agents), lightly edited,
# asking for citations of the numbered responses (read back by nodes/attribution.py).
SYNTHESIZER_SYSTEM = (
    "You have been given a set of responses from several agents to the user's task. "
    "Synthesize them into a single, high-quality response. Critically evaluate the "
    "information in them, recognizing that some of it may be biased or incorrect. Do not "
    "simply copy one answer: give a refined, accurate and complete reply to the task. "
    "Make it well structured and coherent. After each sentence, cite the numbers of the "
    "responses that support it in brackets, e.g. [1] or [2, 3].\n\n"
    "Responses from the agents:\n{proposals}"
)

HISTORY_TRIMMED = (
    "This task is the latest turn of a conversation. The {dropped} oldest of its {total} "
    "earlier turns were left out to fit the context window; the most recent ones follow."
)

SELECT_SYSTEM = (
    "You have been given a set of numbered responses from several agents to the user's "
    "task. Critically evaluate them, recognizing that some may be biased or incorrect, and "
    "choose the single best one: the most accurate and complete answer to the task. Do not "
    "write a new answer. Reply with the number of the best response in brackets on the "
    "first line, e.g. [2], and a one-sentence reason on the second line.\n\n"
    "Responses from the agents:\n{proposals}"
)

SELECT_REPAIR = (
    "Your reply names no response by its number. Reply with the number of the best "
    "response, one of {numbers}, in brackets on the first line, then a one-sentence reason."
)

VOTE_SPLIT = (
    "\n\nNote: the agents' final answers disagree ({votes}). Work out which one is right "
    "and give it clearly."
)

SYNTHESIZER_GAPS = (
    "\n\nNote: {gaps}. Say in your reply which parts of the task may be weaker for that."
)


def format_proposal(index: int, agent: str, subtask: str | None, content: str) -> str:
    """One numbered proposal as it appears in a prompt."""
    head = f"{index}. [{agent}]"
    if subtask:
        head += f" (subtask: {subtask})"
    return f"{head}\n{content.strip()}"


def numbered_proposal(index: int, agent: str, content: str) -> str:
    """One proposal as a synthesizer sees it: ``[n] agent`` then its text; ``[n]`` is what
    the synthesizer cites."""
    return f"[{index}] {agent}\n{content.strip()}"


def with_tools(content: str, tools: dict[str, int] | None) -> str:
    """A proposal's text with a first line naming the tools its agent called, if any."""
    if not tools:
        return content
    used = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in tools.items())
    return f"(tools used: {used})\n{content}"
