"""Shared by the durable-run tests and bench/resume.py: a 2-layer spec whose agents
take different times, `moa` subprocesses, and polling the server and the store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langgraph_moa.testing import ModelServer

AGENTS = ("a1", "a2", "a3", "a4")
MODELS = {"a1": "m1", "a2": "m2", "a3": "m3", "a4": "m4"}


def durable_spec(srv: ModelServer, **layer: Any) -> dict[str, Any]:
    """2 layers of the agents a1..a4 (model mK each, no retries), synthesizer ``synth``."""
    models = {
        name: {"model": name, "base_url": srv.base_url, "max_retries": 0, "timeout": 120}
        for name in [*MODELS.values(), "synth"]
    }
    return {
        "name": "durable",
        "models": models,
        "agents": [{"name": a, "model": m} for a, m in MODELS.items()],
        "layers": [
            {"agents": list(AGENTS), "synthesizer": {"model": "synth"}, **layer} for _ in range(2)
        ],
    }


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec, indent=2))
    return path


def moa_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "langgraph_moa.cli", *args]


def moa(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``moa ARGS`` to the end."""
    proc = subprocess.run(
        moa_cmd(*args), capture_output=True, text=True, timeout=timeout, env=_env()
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"moa {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
            f"stderr: {proc.stderr}"
        )
    return proc


def start_moa(*args: str) -> subprocess.Popen[str]:
    """Start ``moa ARGS`` in the background."""
    return subprocess.Popen(
        moa_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MOA_MODEL", "MOA_BASE_URL", "MOA_API_KEY"):
        env.pop(key, None)
    env["OPENAI_API_KEY"] = "test"
    env.setdefault("COLUMNS", "200")
    return env


def wait_for(
    what: str, check: Callable[[], bool], proc: subprocess.Popen[str] | None, limit: float = 60
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` if the process ends or ``limit`` passes."""
    deadline = time.monotonic() + limit
    while not check():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"moa ended before {what}: {proc.returncode}\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def finished(srv: ModelServer, model: str) -> int:
    """Calls of ``model`` the server answered completely (HTTP 200 sent)."""
    return sum(1 for r in srv.requests if r.model == model and r.status == 200 and r.finished)


def saved_agents(db_url: str, thread_id: str) -> set[str]:
    """Agents whose proposal is stored as a pending write of the thread's last checkpoint."""
    from langgraph_moa.runtime.store import open_checkpointer

    async def read() -> set[str]:
        async with open_checkpointer(db_url) as saver:
            found = await saver.aget_tuple({"configurable": {"thread_id": thread_id}})
        agents: set[str] = set()
        for _, channel, value in (found.pending_writes or []) if found else []:
            if channel == "proposals" and isinstance(value, dict):
                for by_agent in value.values():
                    agents.update(by_agent)
        return agents

    return asyncio.run(read())


def per_model(srv: ModelServer, names: Sequence[str]) -> dict[str, int]:
    return {n: srv.calls(n) for n in names}
