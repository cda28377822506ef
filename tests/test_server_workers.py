"""``moa serve --workers``: runs execute in ``moa worker`` processes (procrastinate on
PostgreSQL) through the ``RunExecutor`` seam, and stream back through ``moa_run_events``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from langgraph_sdk import get_client

from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.testing import ModelServer
from tests.test_server_support import (
    MOA,
    WAIT,
    Held,
    Served,
    moa_spec,
    release_holds,
    serve,
    synthesis,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def worker(pg_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    subprocess.run([MOA, "worker", "--db", pg_url, "--setup"], check=True, capture_output=True)
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        # one worker, never killed here: declared dead only after a long silence, so a
        # starved but live worker is not taken for dead on a loaded machine
        [MOA, "worker", "--db", pg_url, "--heartbeat", "1", "--stalled-after", "60"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        release_holds()
        proc.terminate()
        proc.wait(timeout=WAIT)
        log.close()


@pytest.fixture
def served(
    tmp_path: Path, pg_url: str, model_server: ModelServer, worker: subprocess.Popen[bytes]
) -> Iterator[Served]:
    yield from serve(tmp_path, [moa_spec(model_server)], pg_url, extra=["--workers"])


async def test_runs_execute_in_workers(
    served: Served, model_server: ModelServer, worker: subprocess.Popen[bytes], pg_url: str
) -> None:
    client = get_client(url=served.url)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    values = await client.runs.wait(tid, "moa", input={"task": "in a worker"})
    assert values["answer"] == synthesis(model_server, "in a worker")
    parts = [
        p
        async for p in client.runs.stream(
            tid, "moa", input={"task": "streamed"}, stream_mode=["updates", "values"]
        )
    ]
    assert parts[0].event == "metadata"
    assert any(p.event == "updates" and "L1_synthesizer" in p.data for p in parts)
    run_id = parts[0].data["run_id"]
    assert (await client.runs.get(tid, run_id))["status"] == "success"

    held = Held(model_server)  # the run is still going when its stream is left
    stream = client.runs.stream(
        tid, "moa", input={"task": "resumable"}, stream_mode="updates", stream_resumable=True
    )
    first = [await anext(stream), await anext(stream)]
    await stream.aclose()  # type: ignore[attr-defined]
    held.release()
    rest = [
        p
        async for p in client.runs.join_stream(
            tid, first[0].data["run_id"], last_event_id=first[-1].id
        )
    ]
    assert any(p.event == "updates" and "L1_synthesizer" in p.data for p in rest)
    ids = [int(p.id) for p in first + rest]
    assert ids == sorted(set(ids))

    held = Held(model_server)
    run = await client.runs.create(tid, "moa", input={"task": "cancel me"})
    await held.arrived()
    # the run in flight is owned by the worker process, not by the server
    async with RunRegistry.from_url(pg_url) as registry:
        record = await registry.get_run(run["run_id"])
        thread_row = await registry.get_thread(tid)
    assert record is not None and record.status == "running"
    assert served.proc is not None and served.proc.pid != worker.pid
    assert record.owner_pid == worker.pid, (record.owner_pid, worker.pid, served.proc.pid)
    assert thread_row is not None and thread_row.lease_pid == worker.pid
    await client.runs.cancel(tid, run["run_id"])
    await client.runs.join(tid, run["run_id"])
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    runs = await client.runs.list(tid)
    assert [r["status"] for r in runs] == ["interrupted", "success", "success", "success"]
