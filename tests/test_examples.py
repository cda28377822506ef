"""The examples and spec files in examples/ stay true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from langgraph_moa.spec import load_spec

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("script", ["custom_graph.py", "python_builder.py"])
def test_example_script_runs(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "answer" in done.stdout


@pytest.mark.parametrize("spec", sorted(p.name for p in (EXAMPLES / "specs").iterdir()))
def test_example_spec_is_valid(spec: str) -> None:
    assert load_spec(EXAMPLES / "specs" / spec).layers
