"""Durable runs: a `moa run` killed with SIGKILL mid-layer is resumed without paying twice
for the agents that had finished; on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.testing import ModelServer
from tests.durable_helpers import (
    durable_spec,
    finished,
    moa,
    saved_agents,
    start_moa,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.slow


def registry_run(db_url: str, thread_id: str) -> dict:
    async def get() -> dict:
        async with RunRegistry.from_url(db_url) as reg:
            await reg.setup()
            run = await reg.latest_run(thread_id)
            assert run is not None
            return run.to_json()

    return asyncio.run(get())


def shape(result: dict) -> dict:
    """What must be equal between an interrupted and an uninterrupted run."""
    return {
        "keys": sorted(result),
        "status": result["status"],
        # the scripted server is deterministic: "synth answer <digest of what it was sent>",
        # so an equal answer means the synthesizers saw the same proposals
        "answer": result["answer"],
        "by_agent": sorted(result["usage"]["by_agent"]),
        "calls": result["usage"]["total"]["calls"],
    }


@pytest.mark.parametrize("db", ["sqlite_url", "pg_url", "mysql_url"])
def test_sigkill_mid_layer_then_resume(
    db: str, request: pytest.FixtureRequest, model_server: ModelServer, tmp_path: Path
) -> None:
    db_url = str(request.getfixturevalue(db))
    srv = model_server
    srv.set_latency(None, 0.05)
    spec_file = write_spec(tmp_path / "spec.json", durable_spec(srv))

    # An uninterrupted run, for the shape of the result.
    clean = json.loads(
        moa(
            "run",
            "Compare B-trees and LSM-trees",
            "-s",
            str(spec_file),
            "--db",
            db_url,
            "--thread",
            "clean",
            "--json",
        ).stdout
    )
    assert clean["status"] == "success"
    srv.reset_counts()

    # a1 and a2 answer fast, a3 and a4 hang: kill while they are in flight.
    srv.set_latency("m1", 0.1)
    srv.set_latency("m2", 0.4)
    srv.set_latency("m3", 60)
    srv.set_latency("m4", 60)
    proc = start_moa(
        "run",
        "Compare B-trees and LSM-trees",
        "-s",
        str(spec_file),
        "--db",
        db_url,
        "--thread",
        "t1",
        "--json",
    )
    try:
        wait_for(
            "a1 and a2 to finish while a3 and a4 are in flight",
            lambda: (
                finished(srv, "m1") == 1
                and finished(srv, "m2") == 1
                and srv.in_flight("m3") == 1
                and srv.in_flight("m4") == 1
            ),
            proc,
        )
        # "Finished" means answered and saved: wait until both proposals are in the store.
        wait_for(
            "a1's and a2's proposals to be saved",
            lambda: {"a1", "a2"} <= saved_agents(db_url, "t1"),
            proc,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    at_kill = {m: srv.calls(m) for m in ("m1", "m2", "m3", "m4", "synth")}
    assert at_kill == {"m1": 1, "m2": 1, "m3": 1, "m4": 1, "synth": 0}
    killed = registry_run(db_url, "t1")
    assert killed["status"] == "running" and killed["attempts"] == 1  # its owner died

    for m in ("m3", "m4"):
        srv.set_latency(m, 0.05)
    resumed = json.loads(moa("resume", "t1", "--db", db_url, "--json").stdout)

    calls = {m: srv.calls(m) for m in ("m1", "m2", "m3", "m4", "synth")}
    # Layer 1: a1, a2 were not called again; a3, a4 (in flight) were. Layer 2: once each.
    assert calls == {"m1": 2, "m2": 2, "m3": 3, "m4": 3, "synth": 2}, calls
    layer1 = [r for r in srv.requests if "previous round" not in r.system and r.model != "synth"]
    assert sorted(r.model for r in layer1 if r.status == 200) == ["m1", "m2", "m3", "m4"]
    assert resumed["status"] == "success"
    assert shape(resumed) == shape(clean)
    row = registry_run(db_url, "t1")
    assert row["status"] == "success" and row["attempts"] == 2 and row["owner_token"] is None
    assert row["answer"] == resumed["answer"]
    assert row["usage"]["calls"] == resumed["usage"]["total"]["calls"]
