"""`moa serve --workers`: the HTTP server queues runs, `moa worker` processes execute them,
and the server streams their events across processes (with replay for reconnects)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from langgraph_moa.graphs import compile_graph
from langgraph_moa.runtime.store import open_checkpointer
from langgraph_moa.spec import load_spec
from langgraph_moa.testing import ModelServer
from tests.test_workers_support import WAIT, Workers, calls, spec_for, until, workers

__all__ = ["workers"]  # fixture

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(
    pg_url: str, model_server: ModelServer, workers: Workers, tmp_path: Path
) -> Iterator[str]:
    """``moa serve --workers`` of the test spec, plus one worker; yields the base URL."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec_for(model_server)))
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "langgraph_moa.cli", "serve", "--workers", "--no-auth"),
            *("--db", pg_url, "--spec", str(spec_file), "--port", str(port)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        workers.start()
        yield url
    finally:
        proc.kill()
        proc.wait()


async def test_server_streams_a_run_executed_by_a_worker(
    server: str, model_server: ModelServer, workers: Workers
) -> None:
    await workers.ready(1)
    client = get_client(url=server)
    thread = await client.threads.create()
    parts = []
    async for part in client.runs.stream(
        thread["thread_id"],
        "scale",
        input={"task": "served task"},
        stream_mode=["updates"],
        stream_resumable=True,
    ):
        parts.append(part)
    assert parts[0].event == "metadata", parts
    run_id = parts[0].data["run_id"]
    updates = [next(iter(p.data)) for p in parts if p.event == "updates"]
    assert updates[0] == "prepare" and updates[-1] == "L2_synthesizer", workers.logs()
    run = await client.runs.get(thread["thread_id"], run_id)
    assert run["status"] == "success"
    state = await client.threads.get_state(thread["thread_id"])
    assert state["values"]["answer"].startswith("s answer")
    assert calls(model_server, "served task") == {
        "a1": 1,
        "a2": 1,
        "b1": 1,
        "b2": 1,
        "b3": 1,
        "s": 1,
    }
    # the worker, not the server, executed it
    assert f"run_id='{run_id}'" in workers.logs()

    # a client that saw the first events reconnects with Last-Event-ID and gets the rest
    replay = [
        p
        async for p in client.runs.join_stream(
            thread["thread_id"], run_id, last_event_id=parts[2].id
        )
    ]
    assert [(p.event, p.data) for p in replay] == [(p.event, p.data) for p in parts[3:]]


async def test_server_cancels_a_run_queued_to_workers(server: str, workers: Workers) -> None:
    """No worker is running yet: the queued run is cancelled before any worker sees it."""
    client = get_client(url=server)
    thread = await client.threads.create()
    workers.stop()  # the fixture's worker
    run = await client.runs.create(thread["thread_id"], "scale", input={"task": "cancel me"})
    await client.runs.cancel(thread["thread_id"], run["run_id"])
    run = await client.runs.get(thread["thread_id"], run["run_id"])
    assert run["status"] in ("cancelled", "interrupted")


async def test_server_run_survives_its_worker_being_killed(
    pg_url: str, server: str, model_server: ModelServer, workers: Workers
) -> None:
    """A run the server queued loses its worker in layer 2; a second worker continues it
    with the server's handler, and a client following the run sees it end."""
    model_server.add_rule(model="b3", prompt="server victim", delay=600, times=1)
    second = workers.start()
    await workers.ready(2)
    client = get_client(url=server)
    thread = await client.threads.create()
    run = await client.runs.create(
        thread["thread_id"], "scale", input={"task": "server victim"}, stream_resumable=True
    )
    async with open_checkpointer(pg_url) as saver:
        graph = compile_graph(load_spec(spec_for(model_server)), checkpointer=saver)
        config = {"configurable": {"thread_id": thread["thread_id"]}}

        async def b1_b2_saved() -> bool:
            state = await graph.aget_state(config)  # type: ignore[arg-type]
            return {"L2_b1", "L2_b2"} <= {t.name for t in state.tasks if t.result is not None}

        await until(b1_b2_saved, "b1 and b2 of layer 2 to be checkpointed", workers)
    await until(lambda: model_server.in_flight("b3") >= 1, "b3 to be called", workers)
    holder = next(p for p in workers.procs if f"run_id='{run['run_id']}'" in workers.log_of(p))
    holder.kill()
    holder.wait()
    events = [p async for p in client.runs.join_stream(thread["thread_id"], run["run_id"])]
    done = await client.runs.get(thread["thread_id"], run["run_id"])
    assert done["status"] == "success", workers.logs()
    assert events, "the stream of the resumed run"
    assert calls(model_server, "server victim") == {
        "a1": 1,
        "a2": 1,
        "b1": 1,
        "b2": 1,
        "b3": 2,
        "s": 1,
    }
    survivor = second if holder is not second else workers.procs[0]
    assert f"run_id='{run['run_id']}'" in workers.log_of(survivor)
