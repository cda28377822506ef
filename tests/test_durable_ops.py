"""Durable runs from the command line: cancel (SIGINT/SIGTERM), fork, history, runs, stale
runs, spec drift, and the errors of resume."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.persistence.registry import RunRecord, RunRegistry
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
MODELS = ("m1", "m2", "m3", "m4", "synth")


def counts(srv: ModelServer) -> dict[str, int]:
    return {m: srv.calls(m) for m in MODELS}


def latest(db_url: str, thread_id: str) -> RunRecord:
    async def get() -> RunRecord:
        async with RunRegistry.from_url(db_url) as reg:
            await reg.setup()
            run = await reg.latest_run(thread_id)
            assert run is not None
            return run

    return asyncio.run(get())


def start_slow_run(
    srv: ModelServer, spec_file: Path, db_url: str, thread: str
) -> subprocess.Popen[str]:
    """`moa run` with a1, a2 done and saved, a3 and a4 in flight (they take 60 s)."""
    srv.set_latency("m1", 0.05)
    srv.set_latency("m2", 0.05)
    srv.set_latency("m3", 60)
    srv.set_latency("m4", 60)
    before = {m: finished(srv, m) for m in ("m1", "m2")}
    flying = {m: srv.in_flight(m) for m in ("m3", "m4")}
    proc = start_moa(
        "run", "Compare B-trees and LSM-trees", "-s", str(spec_file), "--db", db_url,
        "--thread", thread, "--json",
    )  # fmt: skip
    wait_for(
        "a1, a2 done and a3, a4 in flight",
        lambda: (
            all(finished(srv, m) > before[m] for m in ("m1", "m2"))
            and all(srv.in_flight(m) > flying[m] for m in ("m3", "m4"))
        ),
        proc,
    )
    wait_for(
        "a1's and a2's proposals saved", lambda: {"a1", "a2"} <= saved_agents(db_url, thread), proc
    )
    return proc


def fast(srv: ModelServer) -> None:
    for m in MODELS:
        srv.set_latency(m, 0.02)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cancel_marks_interrupted_and_resumes(
    signum: int, model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    srv = model_server
    spec_file = write_spec(tmp_path / "spec.json", durable_spec(srv))
    proc = start_slow_run(srv, spec_file, sqlite_url, "c1")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "continue it with `moa resume c1`" in err
    run = latest(sqlite_url, "c1")
    assert run.status == "interrupted" and run.owner_token is None
    assert run.error == "stopped before the end" and run.waiting_for is None
    assert run.usage["calls"] == 2  # a1 and a2 finished and were recorded
    assert counts(srv) == {"m1": 1, "m2": 1, "m3": 1, "m4": 1, "synth": 0}

    listed = json.loads(moa("runs", "--db", sqlite_url, "--status", "interrupted", "--json").stdout)
    assert [r["thread_id"] for r in listed] == ["c1"]

    fast(srv)
    done = json.loads(moa("resume", "c1", "--db", sqlite_url, "--json").stdout)
    assert done["status"] == "success"
    assert counts(srv) == {"m1": 2, "m2": 2, "m3": 3, "m4": 3, "synth": 2}
    run = latest(sqlite_url, "c1")
    assert run.attempts == 2 and run.status == "success" and run.error is None
    # What the stopped attempt left is kept, not overwritten.
    [log] = run.metadata["attempts_log"]
    assert log["attempt"] == 1 and log["status"] == "interrupted"
    assert log["error"] == "stopped before the end"


def test_second_ctrl_c_exits_at_once_and_the_run_stays_resumable(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    srv = model_server
    spec_file = write_spec(tmp_path / "spec.json", durable_spec(srv))
    proc = start_slow_run(srv, spec_file, sqlite_url, "c2")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    fast(srv)
    done = json.loads(moa("resume", "c2", "--db", sqlite_url, "--json").stdout)
    assert done["status"] == "success"
    assert counts(srv)["m1"] == 2 and counts(srv)["m2"] == 2  # a1, a2 were not called again


def test_fork_reruns_the_last_layer_with_another_model(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    srv = model_server
    fast(srv)
    spec = durable_spec(srv)
    spec["models"]["base"] = {"model": "base", "base_url": srv.base_url, "max_retries": 0}
    spec["defaults"] = {"model": "base"}
    for agent in spec["agents"]:
        agent.pop("model")
    for layer in spec["layers"]:
        layer.pop("synthesizer")
    spec_file = write_spec(tmp_path / "spec.json", spec)
    original = json.loads(
        moa(
            "run", "Pick a database", "-s", str(spec_file), "--db", sqlite_url, "-t", "f1", "--json"
        ).stdout
    )
    assert original["answer"].startswith("base answer") and srv.calls("base") == 10

    history = json.loads(moa("history", "f1", "--db", sqlite_url, "--json").stdout)
    assert [h["step"] for h in history] == list(range(-1, len(history) - 1))
    assert history[-1]["next"] == [] and history[0]["source"] == "input"
    before_l2 = next(h for h in history if h["next"] and h["next"][0].startswith("L2_a"))
    assert before_l2["after"] == ["L2_router"]
    table = moa("history", "f1", "--db", sqlite_url).stdout
    assert before_l2["checkpoint_id"] in table and "L2_router" in table

    forked = json.loads(
        moa(
            "fork", "f1", "--checkpoint", before_l2["checkpoint_id"], "--thread", "f2",
            "--model", "other", "--base-url", srv.base_url, "--db", sqlite_url, "--json",
        ).stdout
    )  # fmt: skip
    assert forked["thread_id"] == "f2" and forked["status"] == "success"
    assert forked["answer"].startswith("other answer")
    assert srv.calls("other") == 5 and srv.calls("base") == 10  # layer 2 only, nothing else
    run = latest(sqlite_url, "f2")
    assert run.checkpoint_id == before_l2["checkpoint_id"]
    assert run.parent_run_id == latest(sqlite_url, "f1").run_id
    # The source thread is unchanged.
    assert json.loads(moa("history", "f1", "--db", sqlite_url, "--json").stdout) == history
    unknown = moa("fork", "f1", "--checkpoint", "nope", "--db", sqlite_url, check=False)
    assert unknown.returncode == 1 and "has no checkpoint 'nope'" in unknown.stderr


def test_resume_errors_live_owner_and_stale(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    srv = model_server
    spec_file = write_spec(tmp_path / "spec.json", durable_spec(srv))

    unknown = moa("resume", "ghost", "--db", sqlite_url, check=False)
    assert unknown.returncode == 1 and "no run recorded for thread 'ghost'" in unknown.stderr
    neither = moa("resume", "--db", sqlite_url, check=False)
    assert neither.returncode == 2 and "--stale" in neither.stderr

    proc = start_slow_run(srv, spec_file, sqlite_url, "o1")
    try:
        owned = moa("resume", "o1", "--db", sqlite_url, check=False)
        assert owned.returncode == 1
        assert f"is being run by pid {proc.pid} on " in owned.stderr
        listed = moa("runs", "--db", sqlite_url).stdout
        assert "o1" in listed and f"{proc.pid}@" in listed and "running" in listed
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert latest(sqlite_url, "o1").status == "running"  # its owner is dead now

    fast(srv)
    resumed = json.loads(moa("resume", "--stale", "--db", sqlite_url, "--json").stdout)
    assert [(r["thread_id"], r["status"]) for r in resumed] == [("o1", "success")]
    assert counts(srv) == {"m1": 2, "m2": 2, "m3": 3, "m4": 3, "synth": 2}
    assert json.loads(moa("resume", "--stale", "--db", sqlite_url, "--json").stdout) == []

    done = moa("resume", "o1", "--db", sqlite_url, check=False)
    assert done.returncode == 1 and "already finished (success)" in done.stderr


def test_unreachable_database_is_a_clear_error() -> None:
    url = "postgresql+psycopg://postgres:secret@127.0.0.1:1/nowhere"
    for args in (("resume", "t1"), ("runs",), ("history", "t1"), ("resume", "--stale")):
        proc = moa(*args, "--db", url, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "cannot open the store postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere" in (
            proc.stderr
        )
        assert "nothing was changed" in proc.stderr and "secret" not in proc.stderr
        assert "Traceback" not in proc.stderr


def test_spec_drift_is_refused_unless_forced(
    model_server: ModelServer, sqlite_url: str, tmp_path: Path
) -> None:
    srv = model_server
    fast(srv)
    spec = durable_spec(srv)
    spec["layers"][0]["interrupt_before_synthesis"] = True
    spec_file = write_spec(tmp_path / "spec.json", spec)
    moa("run", "Plan a trip", "-s", str(spec_file), "--db", sqlite_url, "-t", "d1", "--json")
    stored: dict[str, Any] = latest(sqlite_url, "d1").spec  # type: ignore[assignment]

    spec["agents"][0]["role"] = "You are terse."
    spec["models"]["synth"]["temperature"] = 0.9
    write_spec(spec_file, spec)
    refused = moa("resume", "d1", "--db", sqlite_url, "--approve", check=False)
    assert refused.returncode == 1
    assert "the spec changed since run" in refused.stderr
    assert 'agents.0.role: null -> "You are terse."' in refused.stderr
    assert "models.synth.temperature: null -> 0.9" in refused.stderr
    assert "--force" in refused.stderr
    run = latest(sqlite_url, "d1")
    assert run.status == "interrupted" and run.attempts == 1 and run.spec == stored
    assert srv.calls("synth") == 0

    other = tmp_path / "other.json"
    write_spec(other, {**spec, "name": "renamed"})
    explicit = moa("resume", "d1", "--db", sqlite_url, "--approve", "-s", str(other), check=False)
    assert explicit.returncode == 1 and 'name: "durable" -> "renamed"' in explicit.stderr

    done = json.loads(
        moa("resume", "d1", "--db", sqlite_url, "--approve", "--force", "--json").stdout
    )
    assert done["status"] == "success"
    run = latest(sqlite_url, "d1")
    assert run.spec is not None and run.spec["agents"][0]["role"] == "You are terse."
    assert run.metadata["previous_specs"][0]["spec"] == stored  # nothing stored is lost
    assert "You are terse." in next(
        r.system for r in srv.requests if r.model == "m1" and "previous round" in r.system
    )
