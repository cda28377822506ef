"""Graph state of a Mixture-of-Agents run and the reducers that merge parallel writes."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict  # pydantic builds JSON schemas of these on 3.11

__all__ = [
    "AgentInput",
    "Aggregation",
    "Claim",
    "MoAInput",
    "MoAOutput",
    "MoAState",
    "Proposal",
    "Subtask",
    "Turn",
    "Usage",
    "add_usage",
    "append_list",
    "merge_dict",
    "merge_proposals",
    "merge_usage",
]


class Usage(TypedDict, total=False):
    """Token counts and cost of one or more model calls."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    calls: int
    cost: float
    tool_calls: int


class Subtask(TypedDict):
    """One item of a router's plan: which agent does what."""

    agent: str
    subtask: str


class Proposal(TypedDict):
    """What one agent wrote in one layer."""

    agent: str
    layer: int
    subtask: str
    content: str
    status: Literal["ok", "failed", "missing"]
    error: NotRequired[str | None]
    model: NotRequired[str | None]
    usage: NotRequired[Usage]
    run_id: NotRequired[str]
    """The graph invocation that wrote it: a resume retries failures of earlier ones."""
    seconds: NotRequired[float]
    tools: NotRequired[dict[str, int]]
    """Tools the agent called for it, with how many times."""
    tool_seconds: NotRequired[float]
    """Seconds its tool calls took, together."""
    """How long the agent's call took."""


class Claim(TypedDict):
    """One sentence (or line) of an answer and the agents whose proposals support it."""

    text: str
    agents: list[str]
    proposals: list[int]
    """The 1-based numbers of those proposals in the synthesizer's prompt."""
    inferred: bool
    """True when the support was found by text overlap, not cited (or copied) by the model."""


class Aggregation(TypedDict, total=False):
    """How a layer's proposals became its answer (``mode`` of the layer's synthesizer)."""

    mode: str
    """``synthesize``, ``vote``, ``select`` or ``concat``."""
    decided_by: str
    """``vote``, ``synthesizer``, ``select`` or ``fallback`` (an unreadable pick)."""
    proposals: list[str]
    """The agents of the numbered proposals, in order: ``proposals[0]`` is [1]."""
    answers: dict[str, str | None]
    """Mode vote: each agent's final answer as extracted (None: none found)."""
    votes: dict[str, int]
    """Mode vote: normalized answer -> number of agents that gave it, most first."""
    winner: str | None
    """Mode vote: the normalized answer that won (None when the synthesizer decided)."""
    agreement: float
    """Mode vote: share of the proposals that gave the most frequent answer."""
    choice: int | None
    """Mode select: the number of the picked proposal (None when the pick was unreadable)."""
    agent: str | None
    """Mode select/vote: the agent whose proposal is the answer."""
    reason: str
    """Why: the synthesizer's reason for a pick, or why a vote went to the synthesizer."""
    cited: int
    """Mode synthesize (or a vote the synthesizer decided): claims the synthesizer cited."""


def add_usage(a: Usage | None, b: Usage | None) -> Usage:
    """Sum two usage records field by field."""
    out: Usage = dict(a or {})  # type: ignore[assignment]
    for key, value in (b or {}).items():
        out[key] = out.get(key, 0) + value  # type: ignore[literal-required,operator]
    return out


def merge_usage(left: dict[str, Usage] | None, right: dict[str, Usage] | None) -> dict[str, Usage]:
    """Reducer: per-agent usage, summed across parallel writes."""
    merged = dict(left or {})
    for name, usage in (right or {}).items():
        merged[name] = add_usage(merged.get(name), usage)
    return merged


def merge_proposals(
    left: dict[str, dict[str, Proposal]] | None,
    right: dict[str, dict[str, Proposal]] | None,
) -> dict[str, dict[str, Proposal]]:
    """Reducer: proposals keyed by layer, then agent name.

    Parallel writes of one layer merge by agent name, so a fan-out never loses a
    proposal, and a repeated write of the same agent (a retried task) replaces
    rather than duplicates it. Keys are strings so the state stays JSON-shaped.
    """
    merged = {layer: dict(by_agent) for layer, by_agent in (left or {}).items()}
    for layer, by_agent in (right or {}).items():
        merged.setdefault(str(layer), {}).update(by_agent)
    return merged


def merge_dict(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer: shallow dict merge, right wins."""
    return {**(left or {}), **(right or {})}


def append_list(left: list[Any] | None, right: list[Any] | None) -> list[Any]:
    """Reducer: concatenation that tolerates a missing side."""
    return [*(left or []), *(right or [])]


class Turn(TypedDict):
    """An earlier turn of a conversation: the question and its final answer ("" if none)."""

    question: str
    answer: str


class MoAInput(TypedDict, total=False):
    """What a caller passes in: a task, or chat messages whose last one is the task."""

    task: str
    messages: list[AnyMessage]


class MoAOutput(TypedDict, total=False):
    """What a run returns."""

    answer: str
    messages: list[AnyMessage]
    syntheses: list[str]
    proposals: dict[str, dict[str, Proposal]]
    usage: dict[str, Usage]
    aggregation: dict[str, Aggregation]
    attribution: list[Claim]


class MoAState(TypedDict, total=False):
    """The whole state of a run."""

    task: str
    """The question of the current turn."""
    messages: Annotated[list[AnyMessage], add_messages]
    """The conversation: one human message per turn, then its final answer."""
    asked: str
    """Id of the human message the current turn answers."""
    layer: int
    plans: Annotated[dict[str, list[Subtask]], merge_dict]
    proposals: Annotated[dict[str, dict[str, Proposal]], merge_proposals]
    syntheses: list[str]
    answer: str
    usage: Annotated[dict[str, Usage], merge_usage]
    notes: Annotated[list[str], append_list]
    aggregation: Annotated[dict[str, Aggregation], merge_dict]
    """How each layer (key: its number) turned its proposals into its answer."""
    attribution: list[Claim]
    """The final answer's claims with the agents that support them."""


class AgentInput(TypedDict):
    """The private payload a router sends to one agent node."""

    task: str
    subtask: str
    layer: int
    previous_synthesis: str | None
    previous_proposals: list[Proposal]
    peers: NotRequired[list[str]]
    """The agents the layer's plan sent work to (for the layer's quorum)."""
    spent: NotRequired[Usage]
    """The run's usage when the layer started (for its budget)."""
    history: NotRequired[list[Turn]]
    """Earlier turns of the conversation that fit the agent's context window."""
    history_dropped: NotRequired[int]
    """How many older turns were left out to fit."""
