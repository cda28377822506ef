"""Tools the tool tests import by path (``tests.tool_fixtures:add``)."""

from __future__ import annotations

import os
from pathlib import Path

from langchain_core.tools import tool


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
