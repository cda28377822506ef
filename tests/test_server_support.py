"""Helpers of the server tests: ``moa serve`` as a real subprocess on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import yaml

from langgraph_moa.testing import ModelServer
from langgraph_moa.testing.rules import ChatRequest, Reply, default_reply

MOA = str(Path(sys.executable).with_name("moa"))
KEY_A = "tenant-a-key-0123456789abcdef"
KEY_B = "tenant-b-key-0123456789abcdef"
WAIT = 120.0  # the last guard of every wait on an event or a condition


def free_port() -> int:
    """An unused TCP port of 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def moa_spec(srv: ModelServer, *, name: str = "moa", **layer: Any) -> dict[str, Any]:
    """Two agents (models p1, p2) and a synthesizer (model synth) on ``srv``."""
    models = {
        n: {"model": n, "base_url": srv.base_url, "max_retries": 0} for n in ("p1", "p2", "synth")
    }
    return {
        "name": name,
        "models": models,
        "agents": [{"name": "a1", "model": "p1"}, {"name": "a2", "model": "p2"}],
        "layers": [{"agents": ["a1", "a2"], "synthesizer": {"model": "synth"}, **layer}],
    }


class Served:
    """A ``moa serve`` process; ``url`` once :meth:`start` returned."""

    def __init__(
        self,
        tmp_path: Path,
        specs: Sequence[dict[str, Any]],
        db_url: str,
        *,
        keys: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.keys = list(keys)
        self.files = []
        for i, spec in enumerate(specs):
            path = tmp_path / f"spec{i}.yaml"
            path.write_text(yaml.safe_dump(spec))
            self.files.append(path)
        self.extra = list(extra)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [MOA, "serve", "--db", self.db_url, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--heartbeat", "0.5"]
        for path in self.files:
            cmd += ["--spec", str(path)]
        if not self.keys:
            cmd.append("--no-auth")
        return cmd + self.extra

    def start(self) -> Served:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOA_API_KEYS")}
        if self.keys:
            env["MOA_API_KEYS"] = ",".join(self.keys)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"moa serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ok", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"moa serve did not answer /ok within {WAIT:g} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is cleaned up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self) -> Served:
        self.stop()
        return self.start()


def serve(
    tmp_path: Path,
    specs: Sequence[dict[str, Any]],
    db_url: str,
    **kwargs: Any,
) -> Iterator[Served]:
    """Start, yield, stop (for fixtures)."""
    served = Served(tmp_path, specs, db_url, **kwargs).start()
    try:
        yield served
    finally:
        served.stop()


def synthesis(srv: ModelServer, task: str | None = None) -> str:
    """The answer a run must give: the scripted synthesizer's reply to what it was last sent
    (for ``task``, when given)."""
    sent = [
        r
        for r in srv.requests
        if r.model == "synth" and r.status == 200 and (task is None or r.last_user == task)
    ]
    assert sent, f"no answered synthesizer call for {task!r}"
    return f"synth answer {sent[-1].digest}"


class Held:
    """The next call of ``model`` (matching ``prompt``, a regex) waits until :meth:`release`
    (no timer: the test decides), then gets the default reply; ``await held.arrived()`` waits
    for the call on an event. :func:`release_holds` (at teardown) releases every hold."""

    open: ClassVar[list[Held]] = []

    def __init__(
        self, srv: ModelServer, model: str = "synth", *, prompt: str | None = None
    ) -> None:
        self.model = model
        self.came, self.gate = threading.Event(), threading.Event()

        def reply(req: ChatRequest) -> Reply:
            self.came.set()
            self.gate.wait(600)  # a bound only: released by the test, at the latest at its end
            return default_reply(req)  # what an unheld call answers: results stay comparable

        srv.add_rule(model=model, prompt=prompt, reply=reply, times=1)
        Held.open.append(self)

    async def arrived(self) -> None:
        """Wait (without blocking the event loop) until the held call has arrived."""
        came = await asyncio.to_thread(self.came.wait, WAIT)
        assert came, f"no {self.model} call arrived within {WAIT:g} s"

    def release(self) -> None:
        self.gate.set()


def release_holds() -> None:
    """Release every held call (test teardown, before the model server stops)."""
    while Held.open:
        Held.open.pop().release()


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll the async ``check`` until it returns something truthy (async sleeps between);
    fail naming ``what`` after :data:`WAIT` seconds, a last guard only."""
    deadline = time.monotonic() + WAIT
    while not (value := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value
