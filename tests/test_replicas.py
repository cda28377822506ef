"""Two ``moa serve`` replicas on one store (one SQLite file, one PostgreSQL database).

The model server lives in this process; a held call (a reply that waits on an event)
keeps a run busy for as long as a test needs. The replicas beat and sweep every 0.5 s; a
killed replica on this host is dead at once (its pid is gone), so the takeover does not
wait for the 30 s silence that marks a replica on another host dead (that path is tested
on the registry with a zero threshold; a short one here would take a live but starved
replica of a busy machine for dead).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError

from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.testing import ModelServer
from tests.durable_helpers import moa
from tests.test_server_support import Served, moa_spec, synthesis
from tests.test_workers_support import Workers

pytestmark = pytest.mark.slow

WAIT = 90.0  # a bound on waits only
TIMINGS = ["--owner-heartbeat", "0.5", "--stale-after", "30"]


class Hold:
    """The first call of ``model`` waits until released; later calls answer at once."""

    def __init__(self, srv: ModelServer, model: str = "synth") -> None:
        self.arrived, self.gate = threading.Event(), threading.Event()
        self.calls: list[float] = []
        self.model = model

        def reply(req: Any) -> str:
            self.calls.append(time.monotonic())
            if len(self.calls) == 1:
                self.arrived.set()
                self.gate.wait(WAIT)
            return f"{model} answer {len(self.calls)} to {req.last_user[-40:]}"

        srv.add_rule(model=model, reply=reply)

    async def wait_arrival(self) -> None:
        assert await asyncio.to_thread(self.arrived.wait, WAIT), "the held call never came"


@pytest.fixture
def srv() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'moa.sqlite'}"
    request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def layer() -> dict[str, Any]:
    """Extra keys of the replicas' one layer (a test parametrizes ``layer`` to change it)."""
    return {}


@pytest.fixture
def replicas(
    tmp_path: Path, srv: ModelServer, store: str, layer: dict[str, Any]
) -> Iterator[tuple[Served, Served]]:
    specs = [moa_spec(srv, **layer)]
    a = Served(tmp_path, specs, store, extra=TIMINGS).start()
    b = Served(tmp_path, specs, store, extra=TIMINGS)
    try:
        b.start()
        yield a, b
    finally:
        for s in (a, b):
            if s.proc is not None:
                s.stop()


def status(served: Served, thread_id: str, run_id: str) -> str:
    return str(
        httpx.get(f"{served.url}/threads/{thread_id}/runs/{run_id}", timeout=WAIT).json()["status"]
    )


async def test_second_run_through_the_other_replica_waits_or_is_rejected(
    replicas: tuple[Served, Served], srv: ModelServer
) -> None:
    a, b = replicas
    hold = Hold(srv)
    agents_while_held: list[bool] = []
    srv.add_rule(model="p1", reply=lambda r: agents_while_held.append(hold.gate.is_set()) or "p1")
    ca, cb = get_client(url=a.url), get_client(url=b.url)
    tid = (await ca.threads.create())["thread_id"]
    first = await ca.runs.create(tid, "moa", input={"task": "first"})
    await hold.wait_arrival()
    with pytest.raises(ConflictError):
        await cb.runs.create(tid, "moa", input={"task": "no"}, multitask_strategy="reject")
    queued = await cb.runs.create(tid, "moa", input={"task": "second"})  # enqueue
    assert status(b, tid, queued["run_id"]) == "pending"
    hold.gate.set()
    second = await cb.runs.join(tid, queued["run_id"])
    assert second["answer"] == "synth answer 2 to " + second["answer"].split(" to ", 1)[1]
    assert status(a, tid, first["run_id"]) == "success"
    assert status(a, tid, queued["run_id"]) == "success"
    assert agents_while_held == [False, True], a.output() + b.output()
    state = (await ca.threads.get_state(tid))["values"]
    assert state["answer"] == second["answer"]  # the newer run's answer is the thread's


async def test_cancel_through_the_other_replica(
    replicas: tuple[Served, Served], srv: ModelServer
) -> None:
    a, b = replicas
    hold = Hold(srv)
    ca, cb = get_client(url=a.url), get_client(url=b.url)
    tid = (await ca.threads.create())["thread_id"]
    running = await ca.runs.create(tid, "moa", input={"task": "stop me"})
    await hold.wait_arrival()
    queued = await ca.runs.create(tid, "moa", input={"task": "never"})
    await cb.runs.cancel(tid, queued["run_id"], wait=True)  # queued on A: A drops it
    assert status(b, tid, queued["run_id"]) == "interrupted"
    try:
        await cb.runs.cancel(tid, running["run_id"], wait=True)  # returns once it stopped
        assert status(b, tid, running["run_id"]) == "interrupted"
    finally:
        hold.gate.set()
    await ca.runs.join(tid, running["run_id"])
    assert status(a, tid, running["run_id"]) == "interrupted"
    assert srv.calls("synth") == 1 and srv.calls("p1") == 1, "nothing ran after the cancel"
    thread = await cb.threads.get(tid)
    assert thread["status"] == "idle"
    # the thread is free again for either replica
    done = await cb.runs.wait(tid, "moa", input={"task": "after"}, multitask_strategy="reject")
    assert done["answer"].startswith("synth answer 2")


async def test_killed_replica_run_is_finished_by_the_other(
    replicas: tuple[Served, Served], srv: ModelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the replica running a run, with a newer run queued behind it on the other:
    the survivor continues the old run from its last checkpoint, then runs the newer
    one; the thread ends with the newer run's answer."""
    a, b = replicas
    hold = Hold(srv)
    ca, cb = get_client(url=a.url), get_client(url=b.url)
    tid = (await ca.threads.create())["thread_id"]
    old = await ca.runs.create(tid, "moa", input={"task": "old"}, durability="sync")
    await hold.wait_arrival()
    newer = await cb.runs.create(tid, "moa", input={"task": "newer"})
    killed_at = time.monotonic()
    a.kill()
    try:
        await asyncio.wait_for(cb.runs.join(tid, old["run_id"]), WAIT)
        taken_over = hold.calls[1] - killed_at  # the survivor's synthesizer call
        new_values = await asyncio.wait_for(cb.runs.join(tid, newer["run_id"]), WAIT)
    finally:
        hold.gate.set()
    with capsys.disabled():
        print(f"\n[{b.db_url.split(':')[0]}] takeover after SIGKILL: {taken_over:.2f}s")
    assert taken_over < 30  # one sweep (0.5 s) on an idle machine; a loose bound under load
    async with RunRegistry.from_url(b.db_url) as registry:  # join gives the thread's values
        recorded = await registry.get_run(old["run_id"])
    assert recorded is not None and recorded.answer is not None
    assert recorded.answer.startswith("synth answer 2 ")  # continued, not restarted
    assert recorded.answer.endswith("old")
    assert srv.calls("p1") == 2, "the old run's agent was not called again"
    assert new_values["answer"].startswith("synth answer 3 ")
    assert status(b, tid, old["run_id"]) == "success"
    assert status(b, tid, newer["run_id"]) == "success"
    state = (await cb.threads.get_state(tid))["values"]
    assert state["answer"] == new_values["answer"]
    # The killed replica comes back: nothing of the old run runs again.
    a.start()
    ca = get_client(url=a.url)
    assert (await ca.threads.get_state(tid))["values"]["answer"] == new_values["answer"]
    assert srv.calls("synth") == 3


REVIEWED_QUORUM = {"interrupt_before_synthesis": True, "min_proposals": 2}


@pytest.mark.parametrize("layer", [REVIEWED_QUORUM], ids=["reviewed-quorum"])
async def test_reviewed_quorum_retry_across_replicas(
    replicas: tuple[Served, Served], srv: ModelServer
) -> None:
    """A layer short of its quorum errs on A; the resume through B retries the failed agent
    before the review; the approval through A synthesizes what the reviewer saw, with the
    retry's checkpointed result (the agent is not asked a third time)."""
    a, b = replicas
    srv.add_rule(model="p2", fail=500, times=1)
    srv.add_rule(model="p2", reply="a2, retried", times=1)
    srv.add_rule(model="p2", reply="a2, asked a third time")
    ca, cb = get_client(url=a.url), get_client(url=b.url)
    tid = (await ca.threads.create())["thread_id"]

    failed = await ca.runs.wait(tid, "moa", input={"task": "Plan a trip"}, raise_error=False)
    assert failed["__error__"]["error"] == "QuorumError", a.output()
    assert "layer 1: 1 of 2 agents answered, 2 needed" in failed["__error__"]["message"]
    (errored,) = await cb.runs.list(tid)
    assert errored["status"] == "error"
    assert (await cb.threads.get(tid))["status"] == "error"
    assert (srv.calls("p1"), srv.calls("p2"), srv.calls("synth")) == (1, 1, 0)

    # the resume through B retries a2, then the reviewer is shown its new proposal
    paused = await cb.runs.wait(tid, "moa", input=None)
    (shown,) = paused["__interrupt__"]
    asked = shown["value"]
    assert asked["kind"] == "approve_synthesis" and sorted(asked["proposals"]) == ["a1", "a2"]
    assert asked["proposals"]["a2"] == "a2, retried"
    state = await ca.threads.get_state(tid)
    assert state["next"] == ["L1_synthesizer"]
    assert [i["id"] for i in state["interrupts"]] == [shown["id"]]
    assert (await ca.threads.get(tid))["status"] == "interrupted"
    assert (srv.calls("p1"), srv.calls("p2"), srv.calls("synth")) == (1, 2, 0)

    done = await ca.runs.wait(tid, "moa", command={"resume": True})
    assert done["answer"] == synthesis(srv), a.output() + b.output()
    assert (srv.calls("p1"), srv.calls("p2"), srv.calls("synth")) == (1, 2, 1)
    assert done["proposals"]["1"]["a2"]["content"] == "a2, retried"
    (sent,) = [r.system for r in srv.requests if r.model == "synth"]
    for agent, content in asked["proposals"].items():  # exactly what the reviewer saw
        assert f"] {agent}\n{content}\n" in sent + "\n"
    values = (await cb.threads.get_state(tid))["values"]
    assert values["proposals"]["1"]["a2"]["content"] == "a2, retried"
    assert values["answer"] == done["answer"]
    assert [r["status"] for r in await ca.runs.list(tid)] == ["success", "interrupted", "error"]
    assert (await cb.threads.get(tid))["status"] == "idle"


@pytest.mark.postgres
async def test_runs_show_one_usage_shape_for_cli_worker_and_server(
    pg_url: str, tmp_path: Path, srv: ModelServer
) -> None:
    """The same usage columns in `moa runs` whoever executed the run; a server run whose
    state holds an answer that is not text still ends (recorded as JSON text)."""
    spec = moa_spec(srv)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    moa("run", "from the cli", "--spec", str(spec_file), "--db", pg_url, "-t", "cli")
    workers = Workers(pg_url, tmp_path)
    try:
        workers.start()
        await workers.ready(1)
        moa("run", "from a worker", "--spec", str(spec_file), "--db", pg_url, "--submit", "--wait")
    finally:
        workers.stop()
    served = Served(tmp_path, [spec], pg_url, extra=TIMINGS).start()
    try:
        client = get_client(url=served.url)
        tid = (await client.threads.create())["thread_id"]
        await client.runs.wait(tid, "moa", input={"task": "from the server"})
        odd = (await client.threads.create())["thread_id"]
        update = {"update": {"answer": {"x": 1}}}
        await client.runs.wait(odd, "moa", command=update, raise_error=False)
        again = await client.runs.wait(
            odd, "moa", input={"task": "next"}, multitask_strategy="reject"
        )
        assert again["answer"].startswith("synth answer")
    finally:
        served.stop()
    listed = json.loads(moa("runs", "--db", pg_url, "--json").stdout)
    by_task = {(r["input"] or {}).get("task"): r for r in listed}
    shapes = {
        task: sorted(by_task[task]["usage"])
        for task in ("from the cli", "from a worker", "from the server")
    }
    assert len(set(map(tuple, shapes.values()))) == 1, shapes
    assert {"input_tokens", "output_tokens", "total_tokens", "calls"} <= set(shapes["from the cli"])
    assert all(by_task[t]["usage"]["total_tokens"] > 0 for t in shapes)
    assert all(by_task[t]["usage"]["calls"] == 3 for t in shapes)
    odd_runs = [r for r in listed if r["thread_id"] == odd]
    assert all(r["status"] in ("success", "error", "interrupted") for r in odd_runs), odd_runs
    table = moa("runs", "--db", pg_url).stdout
    for task in shapes:
        tokens = str(by_task[task]["usage"]["total_tokens"])
        assert any(
            by_task[task]["run_id"] in line and tokens in line for line in table.splitlines()
        )
