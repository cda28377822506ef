"""Run LangGraph's own test suite against our four savers and the official ones; compare.

    python tests/langgraph_suite/run.py [--kinds moa_sqlite,sqlite] [-n 2] [--failures FILE]

1. Downloads the ``langgraph`` sdist of the installed version from the package index
   (``pip download --no-binary :all:``; cached in ``.cache/langgraph-suite/``, gitignored),
   unpacks it and moves its own ``langgraph/`` package aside so the installed one runs.
2. Appends one import line to the unpacked copy's ``tests/conftest.py`` (never to a
   committed file): the ``sync_checkpointer``/``async_checkpointer`` fixtures of
   ``lgsuite_plugin.py``, which add our kinds next to the official ones.
3. Runs the checkpointer-parametrized files (``FILES``) with pytest-xdist and a junit xml,
   keeping only the tests on the selected kinds.
4. Compares: a test that fails on one of our savers while the official saver of the same
   database (same test, same other params) does not fail is a regression. Prints a table
   per kind and the regressions; exits 1 if there are any (2 if pytest itself broke).

Needs PostgreSQL (``$MOA_LGSUITE_PG``, default ``postgresql://postgres@127.0.0.1:5432/
postgres``, allowed to create databases) and the ``dev`` extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("MOA_LGSUITE_CACHE", REPO / ".cache" / "langgraph-suite"))
FILES = [
    "test_pregel*.py",
    "test_time_travel*.py",
    "test_interrupt*.py",
    "test_checkpoint_migration.py",
    "test_delta_channel_*.py",
    "test_large_cases*.py",
    "test_pydantic.py",
    "test_strict_resume.py",
    "test_subgraph_persistence*.py",
]
# our kind -> the official saver of the same database and API
OURS = {
    "moa_sqlite": "sqlite",
    "moa_sqlite_aio": "sqlite_aio",
    "moa_postgres": "postgres",
    "moa_postgres_aio": "postgres_aio",
}
ALL_KINDS = [k for pair in OURS.items() for k in pair]
MARK = "# --- added at run time by langgraph-moa tests/langgraph_suite/run.py ---"
PATCH = f"\n{MARK}\nfrom lgsuite_plugin import async_checkpointer, sync_checkpointer  # noqa\n"


def say(msg: str) -> None:
    print(f"[langgraph-suite] {msg}", flush=True)


def unpack_sdist(package: str, ver: str, dest: Path, patch: str | None = None) -> Path:
    """``package==ver``'s sdist unpacked at ``dest`` (downloaded once into ``CACHE/sdist``),
    its own ``langgraph/`` moved aside so the installed one is what runs, and ``patch``
    appended to its ``tests/conftest.py``."""
    if (dest / ".ready").exists():
        return dest
    dl = CACHE / "sdist"
    stem = f"{package.replace('-', '_')}-{ver}"
    archive = dl / f"{stem}.tar.gz"
    if not archive.exists():
        say(f"downloading the {package} {ver} sdist from the package index")
        dl.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary"]
        subprocess.run([*pip, ":all:", f"{package}=={ver}", "-d", str(dl)], check=True)
    tmp = CACHE / f"unpack-{dest.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / stem).rename(dest)
    shutil.rmtree(tmp)
    if not (dest / "tests").is_dir() or (patch and not (dest / "tests" / "conftest.py").exists()):
        raise SystemExit(f"{archive} has no tests/ (or conftest.py): cannot run its tests")
    (dest / "langgraph").rename(dest / "_langgraph_from_sdist")
    if patch:
        with (dest / "tests" / "conftest.py").open("a") as f:
            f.write(patch)
    (dest / ".ready").touch()
    return dest


def fetch(ver: str) -> Path:
    """The unpacked, patched sdist of ``langgraph==ver`` (downloaded once)."""
    return unpack_sdist("langgraph", ver, CACHE / f"langgraph-{ver}", PATCH)


def pythonpath() -> str:
    """``PYTHONPATH`` for the suite: langgraph_moa (not this repo's own ``tests`` package)
    and the plugins beside this file."""
    pypath = CACHE / "pypath"
    pypath.mkdir(parents=True, exist_ok=True)
    link = pypath / "langgraph_moa"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(REPO / "langgraph_moa", target_is_directory=True)
    return os.pathsep.join([str(pypath), str(HERE)])


def run_pytest(src: Path, kinds: list[str], workers: int, junit: Path, extra: list[str]) -> int:
    env = dict(os.environ)
    env.update(
        NO_DOCKER="true",  # caches and stores in memory; the checkpointers are ours to pick
        MOA_LGSUITE_KINDS=",".join(kinds),
        PYTHONPATH=pythonpath(),
    )
    files = sorted({p.name for pattern in FILES for p in (src / "tests").glob(pattern)})
    cmd = [sys.executable, "-m", "pytest", "-p", "lgsuite_plugin", "-p", "no:cacheprovider"]
    cmd += ["-o", "addopts=--strict-markers --snapshot-warn-unused", "-o", "junit_family=xunit1"]
    cmd += ["-o", "asyncio_default_fixture_loop_scope=function"]
    cmd += ["-q", "--tb=short", "-rN", "--timeout=300", f"--junitxml={junit}"]
    cmd += ["--reruns", "2"]  # the same for every saver: a failure must reproduce
    if workers > 0:
        cmd += ["-n", str(workers)]
    cmd += [f"tests/{f}" for f in files] + extra
    say(f"running {len(files)} files on {', '.join(kinds)} ({workers or 'no'} xdist workers)")
    return subprocess.run(cmd, cwd=src, env=env).returncode


@dataclass
class Outcomes:
    """Per kind: test key -> 'passed' | 'failed' | 'skipped'."""

    by_kind: dict[str, dict[str, str]] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)


def parse_junit(path: Path) -> Outcomes:
    out = Outcomes()
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        kind, key = props.get("lg_kind"), props.get("lg_key")
        if not kind or not key:
            continue
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        seen = out.by_kind.setdefault(kind, {})
        if seen.get(key) != "failed":  # a teardown error after a pass is a failure
            seen[key] = outcome
        out.names[(kind, key)] = f"{case.get('classname')}::{case.get('name')}"
    return out


def regressions(res: Outcomes) -> dict[str, list[str]]:
    """Per kind of ours: tests failing on it but not on the official saver of its database."""
    found: dict[str, list[str]] = {}
    for ours, official in OURS.items():
        if ours not in res.by_kind:
            continue
        theirs = res.by_kind.get(official, {})
        found[ours] = sorted(
            res.names[(ours, key)]
            for key, outcome in res.by_kind[ours].items()
            if outcome == "failed" and theirs.get(key) != "failed"
        )
    return found


def table(res: Outcomes, regs: dict[str, list[str]]) -> str:
    rows = [("saver", "passed", "failed", "skipped", "failures the official saver lacks")]
    for kind in ALL_KINDS:
        if kind not in res.by_kind:
            continue
        c = Counter(res.by_kind[kind].values())
        extra = str(len(regs[kind])) if kind in regs else "-"
        rows.append((kind, str(c["passed"]), str(c["failed"]), str(c["skipped"]), extra))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kinds", default=",".join(ALL_KINDS), help="checkpointer kinds to run")
    ap.add_argument("-n", "--workers", type=int, default=2, help="pytest-xdist workers (0: none)")
    ap.add_argument("--failures", type=Path, help="also write the regressions to this file")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest after --, e.g. -k pydantic")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(ALL_KINDS))
    if unknown:
        ap.error(f"unknown kinds {unknown}; choose from {ALL_KINDS}")
    for ours, official in OURS.items():
        if ours in kinds and official not in kinds:
            say(f"note: {official} is not selected, so every failure of {ours} counts")

    ver = version("langgraph")
    src = fetch(ver)
    junit = CACHE / f"junit-{ver}.xml"
    junit.unlink(missing_ok=True)
    t0 = time.monotonic()
    code = run_pytest(src, kinds, args.workers, junit, args.pytest_args)
    say(f"pytest exited {code} after {time.monotonic() - t0:.0f} s; junit: {junit}")
    if not junit.exists():
        say("no junit report: pytest did not run (see its output above)")
        return 2
    res = parse_junit(junit)
    if not res.by_kind:
        say("no test ran on the selected kinds")
        return 2
    regs = regressions(res)
    print(f"\nLangGraph {ver} suite, {', '.join(FILES)}\n")
    print(table(res, regs))
    lines = [f"{kind}\t{name}" for kind, names in regs.items() for name in names]
    if args.failures:
        args.failures.write_text("".join(line + "\n" for line in lines))
    if lines:
        print("\nFailing on our saver but not on the official one:")
        print("\n".join(lines))
        return 1
    if code not in (0, 1):  # 1 = some tests failed, judged above; else pytest broke
        say(f"pytest itself failed (exit {code})")
        return 2
    print("\nno failure that the official savers do not have")
    return 0


if __name__ == "__main__":
    sys.exit(main())
