"""README claims that had no test: ``langgraph.json`` and its entrypoints, ``MOA_MODEL`` /
``MOA_BASE_URL`` as the default model, ``moa graph`` (Mermaid text) and ``moa models``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from langgraph_moa.spec import load_spec
from langgraph_moa.testing import ModelServer

ROOT = Path(__file__).parent.parent
GRAPHS = json.loads((ROOT / "langgraph.json").read_text())["graphs"]

# LangGraph's tooling loads "path:attribute" from the project directory.
LOAD = """
import asyncio, importlib.util, json, sys
path, attr = sys.argv[1].split(":")
spec = importlib.util.spec_from_file_location("entrypoint", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
graph = getattr(module, attr)
out = asyncio.run(graph.ainvoke({"task": "Compare B-trees and LSM-trees"}))
print(json.dumps({"type": type(graph).__name__, "answer": out["answer"]}))
"""


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOA_")}
    return {**env, "OPENAI_API_KEY": "test", "COLUMNS": "200", **extra}


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env_with(**env)
    )


def test_langgraph_json_lists_the_presets() -> None:
    assert set(GRAPHS) == {"layered", "team"}
    for ref in GRAPHS.values():
        path, attr = ref.split(":")
        assert (ROOT / path).is_file() and re.fullmatch(r"\w+", attr)


@pytest.mark.parametrize(("name", "calls"), [("layered", 7), ("team", 9)])
def test_langgraph_json_entrypoint_runs_on_moa_model_env(
    name: str, calls: int, model_server: ModelServer
) -> None:
    """Each entrypoint imports as LangGraph's tooling does, is a compiled graph, and runs on
    the model named by MOA_MODEL at MOA_BASE_URL; its answer is the last synthesis."""
    done = run(
        [sys.executable, "-c", LOAD, GRAPHS[name]],
        MOA_MODEL="scripted",
        MOA_BASE_URL=model_server.base_url,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    requests = model_server.requests
    assert out["type"] == "CompiledStateGraph"
    assert {r.model for r in requests} == {"scripted"} and len(requests) == calls
    final = requests[-1]
    assert "Compare B-trees and LSM-trees" in final.last_user
    assert out["answer"] == f"scripted answer {final.digest}"


def test_moa_run_and_moa_models_use_moa_model_env(
    model_server: ModelServer, tmp_path: Path
) -> None:
    env = {"MOA_MODEL": "scripted", "MOA_BASE_URL": model_server.base_url}
    moa = [sys.executable, "-m", "langgraph_moa.cli"]
    models = run([*moa, "models"], **env)
    assert models.returncode == 0, models.stderr
    assert f"scripted at {model_server.base_url} (from MOA_MODEL / MOA_BASE_URL)" in models.stdout
    db = f"sqlite:///{tmp_path}/m.sqlite"
    done = run([*moa, "run", "Say hi", "--preset", "layered", "--db", db, "--json"], **env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    requests = model_server.requests
    assert {r.model for r in requests} == {"scripted"} and len(requests) == 7
    assert result["answer"] == f"scripted answer {requests[-1].digest}"
    assert "Unclosed" not in done.stderr  # the HTTP clients close with the run's event loop


def test_moa_models_without_env_names_the_embedded_model_and_the_way_out() -> None:
    done = run([sys.executable, "-m", "langgraph_moa.cli", "models"])
    assert done.returncode == 0, done.stderr
    assert "embedded local model (no MOA_MODEL / MOA_BASE_URL set)" in done.stdout
    assert "export MOA_MODEL=" in done.stdout and "--base-url" in done.stdout


def test_moa_graph_prints_the_specs_nodes_and_edges_as_mermaid() -> None:
    path = ROOT / "examples" / "specs" / "team.yaml"
    done = run([sys.executable, "-m", "langgraph_moa.cli", "graph", str(path)])
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "graph TD;" in text
    edges = set(re.findall(r"^\s*(\w+) (-->|-\.->) (\w+);$", text, re.M))
    spec = load_spec(path)
    expected = {("__start__", "-->", "prepare")}
    prev = "prepare"
    for i, layer in enumerate(spec.layers, 1):
        head = f"L{i}_router"
        expected.add((prev, "-->", head))
        for agent in layer.agents:
            expected.add((head, "-.->", f"L{i}_{agent}"))
            expected.add((f"L{i}_{agent}", "-->", f"L{i}_synthesizer"))
        prev = f"L{i}_synthesizer"
    expected.add((prev, "-->", "__end__"))
    assert edges == expected
