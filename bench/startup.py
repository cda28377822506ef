"""Start-up: wall time and peak memory of `moa` commands, next to `langgraph --help`.

Each command runs as a fresh subprocess, N rounds, the commands alternating within a round so
that they all see the same background load; the table gives the median wall time, the median
CPU time (user + system: on a busy machine closer to what the command costs than its wall
time) and the median peak RSS (``ru_maxrss`` of the child; this script imports nothing heavy
before it forks, so the child's figure is its own). `moa runs` lists a SQLite store that a
child process filled with ``--store-runs`` finished runs (20) before the rounds. The children
may write ``.pyc`` files (``PYTHONDONTWRITEBYTECODE`` is dropped from their environment), as an
installed package has them; the warm-up round writes them. ``--hyperfine`` also times the same
commands with hyperfine (``apt-get install hyperfine``; each command's runs back to back, not
alternating) and adds its mean, min and CPU figures. Prints a table and writes
bench/results/startup.json.

    python bench/startup.py [--rounds 9] [--only "moa --help,moa runs"] [--hyperfine]
    python bench/startup.py --importtime "spec validate examples/specs/team.yaml"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SPEC = "examples/specs/team.yaml"
GOALS = {"moa --help": 0.3, "moa runs": 0.5, "moa spec validate": 0.5}


def moa() -> list[str]:
    """How to start `moa`: the venv's console script, else ``python -m langgraph_moa.cli``."""
    script = Path(sys.executable).parent / "moa"
    return [str(script)] if script.exists() else [sys.executable, "-m", "langgraph_moa.cli"]


def commands(db: str) -> dict[str, list[str]]:
    """Label -> argv of every command measured."""
    cmds = {
        "moa --help": [*moa(), "--help"],
        "moa runs": [*moa(), "runs", "--db", db],
        "moa spec validate": [*moa(), "spec", "validate", SPEC],
        "moa run --help": [*moa(), "run", "--help"],
        "moa serve --help": [*moa(), "serve", "--help"],
        "moa models": [*moa(), "models"],
        "moa graph": [*moa(), "graph", "--preset", "layered"],
    }
    langgraph = shutil.which("langgraph") or str(Path(sys.executable).parent / "langgraph")
    if Path(langgraph).exists():
        cmds["langgraph --help"] = [langgraph, "--help"]
    return cmds


FILL_STORE = """
import asyncio, sys
from langgraph_moa.persistence.registry import RunRegistry

async def main(url, n):
    async with RunRegistry.from_url(url) as reg:
        await reg.setup()
        for i in range(n):
            run = await reg.create_run(f"thread-{i % 5}", spec_name="layered", input={"task": i})
            usage = {"total_tokens": 100 + i}
            await reg.update_run(run.run_id, status="success", answer="42", usage=usage)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def child_env() -> dict[str, str]:
    """The children's environment: this one, but free to write .pyc files."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def hyperfine(cmds: dict[str, list[str]], runs: int) -> dict[str, dict[str, float]]:
    """hyperfine's mean/min wall and mean user+system seconds per command ({} without it)."""
    exe = shutil.which("hyperfine")
    if exe is None:
        print("hyperfine is not installed (apt-get install hyperfine): skipped")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hyperfine.json"
        argv = [exe, "-N", "--style", "none", "--warmup", "1", "--runs", str(runs)]
        argv += ["--export-json", str(out)]
        for label, cmd in cmds.items():
            argv += ["-n", label, shlex.join(cmd)]
        subprocess.run(argv, cwd=ROOT, env=child_env(), check=True, stdout=subprocess.DEVNULL)
        results = json.loads(out.read_text())["results"]
    return {
        r["command"]: {"mean": r["mean"], "min": r["min"], "cpu": r["user"] + r["system"]}
        for r in results
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one run of ``argv``; raises if it
    fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {stderr[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def importtime(args: str) -> int:
    """Print the slowest imports (cumulative) of ``moa ARGS``."""
    argv = [sys.executable, "-X", "importtime", "-m", "langgraph_moa.cli", *args.split()]
    done = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = (p.strip() for p in line[len("import time:") :].split("|"))
            rows.append((int(cumulative), name))
    top = [r for r in sorted(rows, reverse=True) if not r[1].startswith(" " * 8)][:25]
    print(f"{len(rows)} modules imported by `moa {args}`; slowest (cumulative us):")
    for us, name in top:
        print(f"{us:>9}  {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="timed runs per command")
    ap.add_argument("--only", help="comma-separated labels, e.g. 'moa --help,moa runs'")
    ap.add_argument("--importtime", metavar="ARGS", help="show what `moa ARGS` imports")
    ap.add_argument("--store-runs", type=int, default=20, help="runs in the store `moa runs` lists")
    ap.add_argument("--hyperfine", action="store_true", help="also time them with hyperfine")
    ap.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = ap.parse_args(argv)
    if args.importtime:
        return importtime(args.importtime)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/moa.sqlite"
        measure([sys.executable, "-c", FILL_STORE, store, str(args.store_runs)])
        cmds = commands(store)
        if args.only:
            wanted = {w.strip() for w in args.only.split(",")}
            cmds = {k: v for k, v in cmds.items() if k in wanted}
        for argv_ in cmds.values():
            measure(argv_)  # warm-up: page cache, .pyc files
        samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in cmds}
        for _ in range(args.rounds):
            for label, argv_ in cmds.items():
                samples[label].append(measure(argv_))
        load_mid = load_average()
        fine = hyperfine(cmds, args.rounds) if args.hyperfine else {}
    load_after = load_average()
    from overhead import machine, print_table  # imports LangGraph: only after the children

    base = samples.get("langgraph --help")
    base_wall = statistics.median(w for w, _, _ in base) if base else None
    rows: list[dict[str, Any]] = []
    for label, runs in samples.items():
        wall = statistics.median(w for w, _, _ in runs)
        row: dict[str, Any] = {
            "command": label,
            "median_s": round(wall, 3),
            "min_s": round(min(w for w, _, _ in runs), 3),
            "cpu_s": round(statistics.median(c for _, c, _ in runs), 3),
            "peak_rss_mb": round(statistics.median(m for _, _, m in runs), 1),
            "vs_langgraph": f"{wall / base_wall:.2f}x" if base_wall else "",
            "goal_s": GOALS.get(label, ""),
        }
        if label in GOALS:
            row["met"] = "yes" if wall <= GOALS[label] else "no"
        if label in fine:
            row["hyperfine_mean_s"] = round(fine[label]["mean"], 3)
            row["hyperfine_min_s"] = round(fine[label]["min"], 3)
            row["hyperfine_cpu_s"] = round(fine[label]["cpu"], 3)
        rows.append(row)
    print_table(
        rows,
        [
            ("command", "command", 18),
            ("median_s", "median s", 9),
            ("min_s", "min s", 7),
            ("cpu_s", "CPU s", 7),
            ("peak_rss_mb", "peak MiB", 9),
            ("vs_langgraph", "vs langgraph", 12),
            ("goal_s", "goal s", 7),
            ("met", "met", 4),
        ]
        + (
            [
                ("hyperfine_mean_s", "hf mean s", 9),
                ("hyperfine_min_s", "hf min s", 8),
                ("hyperfine_cpu_s", "hf CPU s", 8),
            ]
            if fine
            else []
        ),
    )
    print(
        f"\n{args.rounds} rounds; load average before {load_before}, after the rounds "
        f"{load_mid}" + (f", after hyperfine {load_after}" if fine else "")
    )
    report = {
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_mid}
        | ({"after_hyperfine": load_after} if fine else {}),
        "rounds": args.rounds,
        "store_runs": args.store_runs,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
