"""Kill `moa run` (and some `moa resume`) with SIGKILL at random moments, resume until done.

Each round starts `moa run` on a new thread (2 layers x 4 agents whose calls take
different times, on the test model server), waits for its first model call, sleeps a
random time within the run's length and SIGKILLs it; then `moa resume THREAD` until the
run succeeds, killing a resume too with probability ``--kill-resume``. At the end every
thread is checked (registry status ``success``, both layers' 4 proposals ``ok``, usage
counting each of the 10 calls once, readable checkpoint history) and every model call is
classified by (thread, layer, node):

* repeated: a call made after the same node had already been answered (HTTP 200 sent)
  in an earlier, killed process. ``lost after save`` counts those whose proposal was
  answered more than 0.25 s before the kill (a bug if not 0); the rest were answered in the few
  milliseconds between the answer and its checkpoint write (no engine can close that
  window without the provider's help), reported with the largest gap seen.
* rerun in flight: calls that were in flight at a kill and were made again (expected).

Prints a table and writes bench/results/resume.json.

    python bench/resume.py [--kills 20] [--db URL] [--seed 1] [--kill-resume 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from langgraph_moa.persistence.registry import RunRegistry  # noqa: E402
from langgraph_moa.runtime import MoA  # noqa: E402
from langgraph_moa.runtime.store import open_checkpointer  # noqa: E402
from langgraph_moa.testing import ModelServer  # noqa: E402
from tests.durable_helpers import MODELS, durable_spec, moa_cmd, write_spec  # noqa: E402

LATENCY = {"m1": 0.3, "m2": 0.6, "m3": 1.0, "m4": 1.4, "synth": 0.4}
RUN_SECONDS = 2 * (max(v for k, v in LATENCY.items() if k != "synth") + LATENCY["synth"])


def start(*args: str) -> subprocess.Popen[str]:
    from tests.durable_helpers import _env

    return subprocess.Popen(
        moa_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )


def first_call_of(srv: ModelServer, task: str, after: int) -> bool:
    return any(task in r.last_user for r in srv.requests[after:])


def run_and_maybe_kill(
    srv: ModelServer, args: list[str], task: str, kill: bool, rng: random.Random
) -> dict[str, Any]:
    """Start ``moa ARGS``; if ``kill``, SIGKILL it a random time after its first model call."""
    seen = len(srv.requests)
    t0 = time.monotonic()
    proc = start(*args)
    killed_at: float | None = None
    if kill:
        while proc.poll() is None and not first_call_of(srv, task, seen):
            time.sleep(0.01)
        delay = rng.uniform(0, RUN_SECONDS)
        deadline = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.kill()
            killed_at = time.time()
    out, err = proc.communicate()
    return {
        "seconds": time.monotonic() - t0,
        "killed_at": killed_at,
        "returncode": proc.returncode,
        "stdout": out,
        "stderr": err,
    }


def classify(srv: ModelServer, kills: dict[str, list[float]]) -> dict[str, Any]:
    """Group the calls by (thread, layer, node) and count the repeats."""
    by_task: dict[str, list[Any]] = defaultdict(list)
    for req in srv.requests:
        for task in kills:
            if task in req.last_user:
                by_task[task].append(req)
    repeated = rerun_in_flight = lost_after_save = 0
    gaps: list[float] = []
    for task, reqs in by_task.items():
        layer1_replies = {
            f"{r.model} answer {r.digest}"
            for r in reqs
            if r.model != "synth" and "previous round" not in r.system
        }
        groups: dict[tuple[int, str], list[Any]] = defaultdict(list)
        for r in reqs:
            if r.model == "synth":
                layer = 1 if any(reply in r.system for reply in layer1_replies) else 2
            else:
                layer = 2 if "previous round" in r.system else 1
            groups[(layer, r.model)].append(r)
        for calls in groups.values():
            calls.sort(key=lambda r: r.started)
            answered: float | None = None
            for r in calls:
                if answered is not None:
                    repeated += 1
                    kill = min((k for k in kills[task] if k >= answered), default=None)
                    gap = (kill - answered) if kill is not None else float("inf")
                    gaps.append(gap)
                    if gap > 0.25:
                        lost_after_save += 1
                elif r is not calls[0]:
                    rerun_in_flight += 1
                delivered = (
                    r.status == 200
                    and r.finished is not None
                    and not any(r.started <= k <= r.finished for k in kills[task])
                )  # an answer sent after its client was killed reached no one
                if delivered and answered is None:
                    answered = r.finished
    return {
        "repeated_calls": repeated,
        "lost_after_save": lost_after_save,
        "max_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
        "rerun_in_flight": rerun_in_flight,
    }


async def check_threads(db_url: str, spec: dict[str, Any], threads: list[str]) -> list[str]:
    """Problems found in the finished threads (empty when none is corrupted)."""
    problems: list[str] = []
    async with (
        open_checkpointer(db_url) as saver,
        RunRegistry.from_url(db_url) as registry,
        MoA(spec, checkpointer=saver, registry=False) as app,
    ):
        for thread in threads:
            run = await registry.latest_run(thread)
            if run is None or run.status != "success":
                problems.append(f"{thread}: registry status {run and run.status}")
                continue
            result = await app.aresult(thread)
            props = result.values.get("proposals") or {}
            for layer in ("1", "2"):
                ok = sorted(a for a, p in (props.get(layer) or {}).items() if p["status"] == "ok")
                if ok != sorted(MODELS):
                    problems.append(f"{thread}: layer {layer} proposals {ok}")
            if result.status != "success" or not result.answer:
                problems.append(f"{thread}: state {result.status}, answer {result.answer!r}")
            if result.usage.get("calls") != 10:
                problems.append(f"{thread}: usage counts {result.usage.get('calls')} calls")
            if run.answer != result.answer:
                problems.append(f"{thread}: registry answer differs from the state's")
            history = [s async for s in app.graph.aget_state_history(app.config(thread))]
            steps = [s.metadata.get("step") for s in reversed(history) if s.metadata]
            if steps != sorted(steps):
                problems.append(f"{thread}: checkpoint steps out of order {steps}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="kill at least this many processes")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh SQLite file)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kill-resume", type=float, default=0.3, help="chance to kill a resume")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "resume.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, ModelServer(model_latency=LATENCY) as srv:
        db_url = args.db or f"sqlite:///{tmp}/resume.sqlite"
        spec = durable_spec(srv)
        spec_file = write_spec(Path(tmp) / "spec.json", spec)
        kills: dict[str, list[float]] = {}
        threads: list[str] = []
        resume_seconds: list[float] = []
        total_kills = resumes = successes = not_killed = 0
        i = 0
        while total_kills < args.kills:
            i += 1
            thread, task = f"bench-{args.seed}-{i}", f"Task {args.seed}-{i}: compare two designs."
            threads.append(thread)
            kills[task] = []
            first = run_and_maybe_kill(
                srv,
                ["run", task, "-s", str(spec_file), "--db", db_url, "-t", thread, "--json"],
                task,
                True,
                rng,
            )
            if first["killed_at"] is None:
                not_killed += 1
            else:
                total_kills += 1
                kills[task].append(first["killed_at"])
            status = json.loads(first["stdout"])["status"] if first["returncode"] == 0 else None
            while status != "success":
                kill = rng.random() < args.kill_resume
                res = run_and_maybe_kill(
                    srv, ["resume", thread, "--db", db_url, "--json"], task, kill, rng
                )
                resumes += 1
                if res["killed_at"] is not None:
                    total_kills += 1
                    kills[task].append(res["killed_at"])
                    continue
                if res["returncode"] != 0 and "already finished (success)" in res["stderr"]:
                    break  # the killed process had recorded success just before the kill
                if res["returncode"] != 0:
                    raise SystemExit(f"resume of {thread} failed:\n{res['stderr']}")
                resume_seconds.append(res["seconds"])
                status = json.loads(res["stdout"])["status"]
            successes += 1
            print(f"  {thread}: kills {len(kills[task])}, done", file=sys.stderr)
        problems = asyncio.run(check_threads(db_url, spec, threads))
        calls = classify(srv, kills)
    startup = _startup_seconds(db_url if args.db else None)
    result = {
        "db": db_url.split("://")[0],
        "runs": len(threads),
        "kills": total_kills,
        "runs_finished_before_kill": not_killed,
        "resumes": resumes,
        "success": successes,
        "corrupted": len(problems),
        "problems": problems,
        **calls,
        "resume_seconds_median": round(statistics.median(resume_seconds), 2),
        "resume_seconds_max": round(max(resume_seconds), 2),
        "cli_startup_seconds": round(startup, 2),
        "latency": LATENCY,
        "seed": args.seed,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key not in ("problems", "latency"):
            print(f"{key:<{width}}  {value}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems or successes != len(threads) or calls["lost_after_save"]:
        raise SystemExit(1)


def _startup_seconds(db: str | None) -> float:
    """Wall time of `moa runs` on an empty store: the CLI's import and start-up cost."""
    with tempfile.TemporaryDirectory() as tmp:
        url = db or f"sqlite:///{tmp}/empty.sqlite"
        t0 = time.monotonic()
        subprocess.run(moa_cmd("runs", "--db", url, "--limit", "1"), capture_output=True)
        return time.monotonic() - t0


if __name__ == "__main__":
    main()
