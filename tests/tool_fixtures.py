"""Tools the tool tests import by path (``tests.tool_fixtures:add``)."""

from __future__ import annotations

import os
from pathlib import Path

from langchain_core.tools import ToolException, tool


def add(a: int, b: int) -> int:
    """Add two integers. Each call appends a line to the file named by MOA_TOOL_COUNTER."""
    counter = os.environ.get("MOA_TOOL_COUNTER")
    if counter:
        with Path(counter).open("a") as handle:
            handle.write(f"add {a} {b}\n")
    return a + b


def explode(text: str) -> str:
    """Always fails."""
    raise RuntimeError(f"cannot handle {text!r}")


@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def deny(text: str) -> str:
    """Refuses with a tool error."""
    raise ToolException(f"will not {text}")


NOT_A_TOOL = 42


def charge(amount: int) -> str:
    """Charge a card (a side effect that must not happen twice). Appends a line to
    MOA_TOOL_COUNTER, then waits until the file MOA_TOOL_RELEASE exists."""
    import time

    with Path(os.environ["MOA_TOOL_COUNTER"]).open("a") as handle:
        handle.write(f"charge {amount}\n")
    release = Path(os.environ["MOA_TOOL_RELEASE"])
    while not release.exists():
        time.sleep(0.02)
    return f"charged {amount}"


async def remember(fact: str) -> str:
    """Save a fact in long-term memory (namespace ``("memory",)``, key ``fact``)."""
    from langgraph.config import get_store

    await get_store().aput(("memory",), "fact", {"text": fact})
    return f"saved {fact}"


async def recall() -> str:
    """Everything in long-term memory under ``("memory",)``, as ``key=text; ...``."""
    from langgraph.config import get_store

    items = await get_store().asearch(("memory",), limit=100)
    found = sorted(f"{i.key}={i.value.get('text')}" for i in items)
    return "; ".join(found) or "nothing remembered"
