"""The embedding examples, run as real processes and driven with ``langgraph_sdk``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

from langgraph_moa.testing import ModelServer
from tests.test_server_support import KEY_A, WAIT, free_port, moa_spec, synthesis

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(tmp_path: Path, name: str, srv: ModelServer, **env: str) -> Iterator[str]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(moa_spec(srv, name="helper")))
    port = free_port()
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name)],
        env={
            **os.environ,
            "MOA_SPECS": str(spec),
            "MOA_DB_URL": f"sqlite:///{tmp_path / 'moa.sqlite'}",
            "MOA_PORT": str(port),
            **env,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} did not start:\n{(tmp_path / f'{name}.log').read_text()}")
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def test_server_app_example(tmp_path: Path, model_server: ModelServer) -> None:
    for url in run_example(tmp_path, "server_app.py", model_server, MOA_API_KEYS=KEY_A):
        assert httpx.get(f"{url}/threads/search", timeout=WAIT).status_code in (401, 405)
        client = get_client(url=url, api_key=KEY_A)
        thread = await client.threads.create()
        values = await client.runs.wait(thread["thread_id"], "helper", input={"task": "hi"})
        assert values["answer"] == synthesis(model_server, "hi")


async def test_router_mounted_under_a_prefix(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.add_rule(model="synth", delay=0.5)
    for url in run_example(tmp_path, "mount_router.py", model_server):
        assert httpx.get(f"{url}/", timeout=WAIT).json()["service"] == "my product"
        assert httpx.post(f"{url}/moa/threads", json={}, timeout=WAIT).status_code == 401
        ann = get_client(
            url=f"{url}/moa", api_key=None, headers={"Authorization": "Bearer token-ann"}
        )
        bob = get_client(
            url=f"{url}/moa", api_key=None, headers={"Authorization": "Bearer token-bob"}
        )
        thread = await ann.threads.create()
        tid = thread["thread_id"]
        parts = [
            p
            async for p in ann.runs.stream(
                tid,
                "helper",
                input={"task": "mounted"},
                stream_mode="updates",
                stream_resumable=True,
            )
        ]
        assert parts[0].event == "metadata" and parts[-1].event == "updates"
        run = await ann.runs.create(tid, "helper", input={"task": "again"})
        assert (await ann.runs.join(tid, run["run_id"]))["answer"] == synthesis(
            model_server, "again"
        )
        waited = await ann.runs.wait(tid, "helper", input={"task": "wait"})
        assert waited["answer"] == synthesis(model_server, "wait")
        with pytest.raises(NotFoundError):
            await bob.threads.get_state(tid)
        assert await bob.threads.search() == []
        paths = httpx.get(f"{url}/openapi.json", timeout=WAIT).json()["paths"]
        assert "/moa/threads/{thread_id}/runs/stream" in paths and "/" in paths
