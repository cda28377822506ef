"""Ready-made specs: ``layered`` (Together-style MoA) and ``team`` (routed specialists)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph_moa.spec import GraphSpec

__all__ = ["PRESETS", "layered", "preset", "team"]


def layered(*, proposers: int = 3, layers: int = 2, aggregation: str = "synthesize") -> GraphSpec:
    """Together-style MoA: ``proposers`` x ``layers``, each layer reading the previous one's
    answers, closed by a final aggregator.

    Intermediate layers pass their proposals on as they are (``concat``), as in Wang et al.
    2024; the last layer aggregates by ``aggregation`` (``synthesize``, ``vote``,
    ``select`` or ``concat``).
    """
    styles = [
        ("analyst", "Reason step by step and state your assumptions."),
        ("expert", "Answer as a domain expert, precise and factual."),
        ("critic", "Look for pitfalls and edge cases, then answer."),
        ("teacher", "Explain clearly and simply, with one example."),
        ("engineer", "Be practical: give concrete steps."),
    ]
    names = [
        styles[i % len(styles)][0] + (str(i // len(styles) + 1) if i >= len(styles) else "")
        for i in range(proposers)
    ]
    agents = [{"name": n, "description": styles[i % len(styles)][1]} for i, n in enumerate(names)]
    spec_layers: list[dict[str, Any]] = [
        {
            "agents": names,
            "routing": "broadcast",
            "synthesizer": aggregation if i == layers - 1 else "concat",
        }
        for i in range(layers)
    ]
    return GraphSpec.model_validate(
        {
            "name": "layered",
            "description": layered.__doc__.splitlines()[0] if layered.__doc__ else None,
            "agents": agents,
            "layers": spec_layers,
        }
    )


def team(*, tools: bool = False, docs: str | None = None) -> GraphSpec:
    """A router splits the task among research, coding, analysis and verification
    specialists; a verification layer then checks the synthesis.

    ``tools``: coding and verification get the sandboxed ``py`` tool (to run the code and
    checks the layer produced); ``docs``: research gets ``search_files`` over that directory.
    On the embedded model, tools are called through text (``models/_text_tools.py``).
    """
    agents: list[dict[str, Any]] = [
        {
            "name": "research",
            "description": "Finds and states the relevant facts, definitions and sources.",
            "role": "You are a research specialist. State the relevant facts precisely; "
            "say when you are unsure.",
        },
        {
            "name": "coding",
            "description": "Writes and explains correct, minimal code.",
            "role": "You are a coding specialist. Write correct, minimal code with a short "
            "explanation.",
        },
        {
            "name": "analysis",
            "description": "Reasons about trade-offs, numbers and consequences.",
            "role": "You are an analysis specialist. Reason step by step about trade-offs "
            "and numbers.",
        },
        {
            "name": "verification",
            "description": "Checks an answer for errors and fixes them.",
            "role": "You are a verification specialist. Check the draft answer you are given "
            "for factual, logical and code errors; correct them and give the final "
            "answer.",
        },
    ]
    spec_tools: dict[str, Any] = {}
    if tools:
        spec_tools["py"] = {"builtin": "python", "timeout": 20, "memory_mb": 512}
        for agent in agents:
            if agent["name"] in ("coding", "verification"):
                agent["tools"] = ["py"]
                agent["role"] += " Run code with the py tool to check it before you answer."
    if docs is not None:
        spec_tools["docs"] = {"builtin": "search_files", "root": docs}
        agents[0]["tools"] = ["docs"]
        agents[0]["role"] += " Search the user's documents with the docs tool and cite file:line."
    return GraphSpec.model_validate(
        {
            "name": "team",
            **({"tools": spec_tools} if spec_tools else {}),
            "description": "Routed specialists, then a verification layer.",
            "agents": agents,
            "layers": [
                {
                    "name": "work",
                    "agents": ["research", "coding", "analysis", "verification"],
                    "routing": "router",
                },
                {"name": "verify", "agents": ["verification"], "routing": "broadcast"},
            ],
        }
    )


PRESETS: dict[str, Callable[..., GraphSpec]] = {"layered": layered, "team": team}


def preset(name: str, **kwargs: Any) -> GraphSpec:
    """The preset called ``name``."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory(**kwargs)
