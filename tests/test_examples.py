"""The examples and spec files in examples/ stay true: each script's printed output is the
synthesizer's reply to the agents' proposals, as the scripted model server recorded it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.spec import load_spec
from langgraph_moa.testing import ModelServer

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_in_process(script: str) -> tuple[str, ModelServer]:
    """Run the example's ``main()`` here, keeping hold of the model server it starts."""
    servers: list[ModelServer] = []

    class Recorded(ModelServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            servers.append(self)

    main = runpy.run_path(str(EXAMPLES / script), run_name="example")["main"]
    main.__globals__["ModelServer"] = Recorded
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        asyncio.run(main())
    (srv,) = servers
    return out.getvalue(), srv


def test_custom_graph_prints_the_synthesis_and_its_word_count() -> None:
    printed, srv = run_in_process("custom_graph.py")
    *agents, synth = srv.requests
    assert sorted(r.system.split(",")[0] for r in agents) == [
        "You are correctness",
        "You are style",
    ]
    for agent in agents:  # the synthesizer was sent both proposals
        assert f"reviewer answer {agent.digest}" in synth.system
    answer = f"reviewer answer {synth.digest}"
    assert printed == f"{answer} \nwords: {len(answer.split())}\n"


def test_python_builder_prints_the_synthesis_and_the_usage() -> None:
    printed, srv = run_in_process("python_builder.py")
    by_model = sorted(r.model for r in srv.requests)
    assert by_model == ["model-a", "model-a", "model-b"]
    synth = srv.requests[-1]
    assert synth.model == "model-a" and "pessimist" in synth.system
    for proposal in srv.requests[:-1]:
        assert f"{proposal.model} answer {proposal.digest}" in synth.system
    first, second = printed.splitlines()
    assert first == f"model-a answer {synth.digest}"
    tokens = sum((r.usage or {}).get("total_tokens", 0) for r in srv.requests)
    assert second.endswith(f": {tokens} tokens, 3 model calls") and tokens > 0


@pytest.mark.parametrize("script", ["custom_graph.py", "python_builder.py"])
def test_example_script_prints_the_same_as_in_process(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    expected, _ = run_in_process(script)
    # the scripted server is deterministic; only python_builder's thread id is random
    strip = [line.split(":", 1)[-1] for line in expected.splitlines()]
    assert [line.split(":", 1)[-1] for line in done.stdout.splitlines()] == strip


@pytest.mark.parametrize("spec", sorted(p.name for p in (EXAMPLES / "specs").iterdir()))
def test_example_spec_is_valid(spec: str) -> None:
    assert load_spec(EXAMPLES / "specs" / spec).layers
