"""Helpers of the server tests: ``moa serve`` as a real subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from langgraph_moa.testing import ModelServer

MOA = str(Path(sys.executable).with_name("moa"))
KEY_A = "tenant-a-key-0123456789abcdef"
KEY_B = "tenant-b-key-0123456789abcdef"


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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"moa serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ok", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"moa serve did not answer /ok within 60 s:\n{self.output()}")

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


def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate()`` (sync) until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")
