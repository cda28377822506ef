"""Mutation score per package with mutmut: how many one-line changes of the code the tests
catch. Each target mutates its own files and runs only a fast, focused test selection
(mutmut then runs, per mutant, only the selected tests that reach the mutated function).

    python bench/mutation.py nodes              # one target (make mutate TARGETS=nodes)
    python bench/mutation.py                    # every target: nodes saver executor auth
    python bench/mutation.py nodes --children 2 --json out.json
    python bench/mutation.py nodes --only 'langgraph_moa.nodes._calls*'  # some mutants
    python bench/mutation.py saver --rerun      # the survivors again, with the current tests
    python bench/mutation.py --report bench/results/mutation.json   # the table again

Each target runs in a scratch copy of the project (``--workdir``, default
``/tmp/moa-mutate/<target>``), so the worktree is never modified. Prints a table:
target, mutants, killed (incl. timeouts), survived, not covered by the selection, score =
killed / (mutants - not covered). ``mutmut results`` in the scratch directory lists the
survivors; ``mutmut show NAME`` shows one. ``--only GLOB`` limits a run to the mutants whose
names match (a module or function at a time, on a busy machine); ``--rerun`` keeps the scratch
copy and its results, copies the current tests in, and judges the survivors, the mutants
not run, those that timed out and those no test reached again (after tests were added;
with ``--only``, those of them that match). Each run replaces its target's entry in the JSON
file, keeping the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = str(Path(sys.executable).with_name("mutmut"))

TARGETS: dict[str, dict[str, list[str]]] = {
    # the nodes: unit tests and in-process runs on fake chat models (no HTTP, no database;
    # two tests start an MCP stdio server: a few seconds per mutant), plus the pure tests of
    # aggregation, attribution and conversation from their HTTP test files
    "nodes": {
        "mutate": ["langgraph_moa/nodes/*.py"],
        "skip": ["langgraph_moa/nodes/sandbox.py", "langgraph_moa/nodes/filesearch.py"],
        "tests": [
            "tests/test_nodes_units.py",
            "tests/test_nodes_runs.py",
            "tests/test_nodes_tools.py",
            "tests/test_aggregation.py",
            "tests/test_attribution.py",
            "tests/test_conversation.py",
            "-k",
            "test_nodes_ or extracted_and_normalized or tally_counts or pick_is_read "
            "or citations_are_read or huge_citation or earlier_turns_and_fitting",
        ],
        # mutmut's default limit is 30x the CPU seconds of the tests that reach the function
        # plus 1 s: a mutant looping forever in fit_proposals' search held a shared core for
        # minutes; 6x plus 10 s (pytest's own start in each forked run) is enough for a
        # mutant that passes (measured: 3x plus 1 s cut passing runs short as "timeouts")
        "settings": ["timeout_multiplier = 3", "timeout_constant = 10"],
    },
    # the saver's put / get_tuple / list and their codec (on SQLite: the PostgreSQL-only
    # statements of put/put_writes are run by the full suite, not here)
    "saver": {
        "mutate": [
            "langgraph_moa/persistence/saver/_hot.py",
            "langgraph_moa/persistence/saver/_codec.py",
        ],
        "skip": [],
        "tests": [
            "tests/test_saver_hot.py",
            "tests/test_checkpointer.py",
            "tests/test_saver_lease.py",
            "-k",
            "(sqlite or driver_shape or vanish) and not process and not killed and not prune",
        ],
    },
    # the one run executor: its pieces, and whole runs through MoA, on SQLite (not the
    # PostgreSQL-only cancel listener, whose mutants hang its tests until their bound, nor
    # the `moa cancel` subprocess test: 26 s at load, and what it runs in-process the MoA
    # cancel test runs too)
    "executor": {
        "mutate": ["langgraph_moa/runtime/executor.py"],
        "skip": [],
        "tests": [
            "tests/test_executor_units.py",
            "tests/test_executor.py",
            "-k",
            "(sqlite or not (postgres or mysql)) and not command",
        ],
    },
    # API keys, tenants and request validation of the server (the `moa serve` subprocess of
    # the last two files runs the installed code, not the mutants: the first file drives
    # the same checks in-process)
    "auth": {
        "mutate": ["langgraph_moa/server/auth.py", "langgraph_moa/server/validation.py"],
        "skip": [],
        "tests": [
            "tests/test_server_auth_units.py",
            "tests/test_server_hostile.py",
            "tests/test_server_auth.py",
        ],
    },
}

COPY = ("langgraph_moa", "tests", "examples", "pyproject.toml", "langgraph.json")


def prepare(target: str, workdir: Path) -> None:
    """A scratch copy of the project with a setup.cfg [mutmut] section for ``target``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, workdir / name)
    write_config(target, workdir)


def write_config(target: str, workdir: Path) -> None:
    """The setup.cfg [mutmut] section of ``target``: what to mutate, which tests to run."""
    conf = TARGETS[target]
    lines = [
        "[mutmut]",
        "source_paths = langgraph_moa",
        "only_mutate =",
        *(f"    {p}" for p in conf["mutate"]),
    ]
    if conf["skip"]:
        lines += ["do_not_mutate =", *(f"    {p}" for p in conf["skip"])]
    lines += [
        "pytest_add_cli_args_test_selection =",
        *(f"    {a}" for a in conf["tests"]),
        "pytest_add_cli_args =",
        "    -p",
        "    no:cacheprovider",
        "    -m",
        "    not slow",
        *conf.get("settings", []),
    ]
    (workdir / "setup.cfg").write_text("\n".join(lines) + "\n")


def run(
    target: str, workdir: Path, children: int, only: list[str], rerun: bool
) -> dict[str, object]:
    """Run mutmut for ``target`` (``only``: mutant name globs; ``rerun``: the survivors of
    the last run in ``workdir`` again, with the current tests) and count its results."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    names = list(only)
    before: dict[str, str] = {}
    if rerun:
        if not (workdir / "mutants").is_dir():
            raise SystemExit(f"--rerun: no earlier run of {target} in {workdir}")
        before = verdicts(workdir, env)
        # "no tests": new tests may reach the function now
        again = ("survived", "not checked", "no tests", "timeout")
        names = [
            n
            for n, status in before.items()
            if status in again and (not only or any(fnmatch(n, g) for g in only))
        ]
        shutil.rmtree(workdir / "tests")
        shutil.copytree(
            ROOT / "tests", workdir / "tests", ignore=shutil.ignore_patterns("__pycache__")
        )
        # A new test selection makes mutmut forget every verdict; the earlier ones stand
        # (the selection only grows), the survivors are judged again below.
        write_config(target, workdir)
    else:
        prepare(target, workdir)
    load_before, started = os.getloadavg(), time.monotonic()
    if names or not rerun:
        subprocess.run(
            [MUTMUT, "run", "--max-children", str(children), *names], cwd=workdir, env=env
        )
    after = verdicts(workdir, env)
    merged = {**before, **{n: after[n] for n in names if n in after}} if rerun else after
    out = summary(merged)
    out.update(
        target=target,
        only=only,
        rerun=len(names) if rerun else None,
        seconds=round(time.monotonic() - started),
        loadavg=[round(x, 1) for x in (*load_before, *os.getloadavg())],
    )
    (workdir / "verdicts.json").write_text(json.dumps(merged, indent=1))
    return out


def verdicts(workdir: Path, env: dict[str, str]) -> dict[str, str]:
    """Mutant name -> mutmut's status, of the run in ``workdir`` (merged with the verdicts
    an earlier ``--rerun`` kept, if any)."""
    out = subprocess.run(
        [MUTMUT, "results", "--all", "true"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, str] = {}
    kept = workdir / "verdicts.json"
    if kept.exists():
        found.update(json.loads(kept.read_text()))
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if "__mutmut_" not in name:
            continue
        if status == "not checked":
            found.setdefault(name, status)  # a kept verdict stands
        else:
            found[name] = status
    return found


def summary(by_mutant: dict[str, str]) -> dict[str, object]:
    """Counts per status, in total and per module, the survivors and the score."""
    statuses: Counter[str] = Counter()
    by_module: dict[str, Counter[str]] = {}
    survivors = []
    for full, status in sorted(by_mutant.items()):
        name = full.replace("ǁ", ".").split("__mutmut_")[0]
        statuses[status] += 1
        module = ".".join(name.split(".")[:3])
        by_module.setdefault(module, Counter())[status] += 1
        if status == "survived":
            survivors.append(full)
    return {
        "statuses": dict(statuses),
        "by_module": {k: dict(v) for k, v in sorted(by_module.items())},
        "survivors": survivors,
        "score": score(statuses),
    }


def score(statuses: Counter[str] | dict[str, int]) -> float | None:
    killed = statuses.get("killed", 0) + statuses.get("timeout", 0)
    judged = killed + statuses.get("survived", 0)
    return None if judged == 0 else round(100 * killed / judged, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--children", type=int, default=2, help="parallel test processes")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/moa-mutate"))
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "bench" / "results" / "mutation.json",
        help="write the results here (default bench/results/mutation.json)",
    )
    parser.add_argument("--report", type=Path, help="print the table of a saved result file")
    parser.add_argument(
        "--only", action="append", default=[], metavar="GLOB", help="mutant names to run"
    )
    parser.add_argument("--rerun", action="store_true", help="judge the last run's survivors again")
    args = parser.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    if args.report:
        results = json.loads(args.report.read_text())
    else:
        targets = args.targets or list(TARGETS)
        new = [run(t, args.workdir / t, args.children, args.only, args.rerun) for t in targets]
        kept = json.loads(args.json.read_text()) if args.json.exists() else []
        results = [r for r in kept if r["target"] not in targets] + new
        results.sort(key=lambda r: list(TARGETS).index(r["target"]))
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\n{'target / module':44} {'mutants':>8} {'killed':>7} {'survived':>9} "
        f"{'no test':>8} {'not run':>8} {'score':>7}"
    )
    for r in results:
        rows = [(r["target"], r["statuses"])] + [
            (f"  {m}", s)
            for m, s in r["by_module"].items()  # type: ignore[union-attr]
        ]
        for label, s in rows:
            killed = s.get("killed", 0) + s.get("timeout", 0)
            sc = score(s)
            print(
                f"{label:44} {sum(s.values()):>8} {killed:>7} {s.get('survived', 0):>9} "
                f"{s.get('no tests', 0):>8} {s.get('not checked', 0):>8} "
                f"{'-' if sc is None else f'{sc:.1f}%':>7}"
            )


if __name__ == "__main__":
    main()
