"""Run the official SQLite store's own tests against our store on three databases; compare.

    python tests/langgraph_suite/run_stores.py [--kinds official,sqlite,postgres,mysql]

The ``langgraph`` sdist has no store semantics tests, only three graph tests that take a
``sync_store``/``async_store`` fixture (run here too, on an unpacked copy whose conftest
imports our fixtures; the official kind is LangGraph's ``InMemoryStore``), but
``langgraph-checkpoint-sqlite``'s sdist does: ``tests/test_store.py``,
``test_async_store.py``, ``test_ttl.py``, all opening stores through
``SqliteStore.from_conn_string`` / ``AsyncSqliteStore.from_conn_string``.

1. Downloads that sdist of the installed version (``pip download --no-binary :all:``,
   cached in ``.cache/langgraph-suite/``), moves its own ``langgraph/`` package aside.
2. Runs the three files once per kind: ``official`` (the official store, the baseline)
   and ``sqlite``/``postgres``/``mysql`` with ``-p lgsuite_stores``, which swaps in our
   ``SQLAlchemyStore``/``AsyncSQLAlchemyStore`` on that database (``lgsuite_stores.py``).
3. Compares (counting only the compared tests): a test failing on our store while
   passing on the official one is a regression, except the tests in ``INTERNALS``
   (they read the official store's private SQLite schema, migrations or SQL helpers)
   and ``DIFFERENCES`` (deliberate, each with its reason). Prints a table; exits 1 on regressions.

Needs PostgreSQL (``$MOA_LGSUITE_PG``) and MariaDB/MySQL (``$MOA_LGSUITE_MYSQL``)
allowed to create databases, and the ``dev`` extra.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from run import pythonpath, unpack_sdist  # the sibling script: one way to fetch an sdist

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("MOA_LGSUITE_CACHE", REPO / ".cache" / "langgraph-suite"))
PACKAGE = "langgraph-checkpoint-sqlite"
FILES = ["tests/test_store.py", "tests/test_async_store.py", "tests/test_ttl.py"]
# the `langgraph` sdist's graph tests that take a store fixture
GRAPH_FILES = ["tests/test_pregel.py", "tests/test_pregel_async.py"]
GRAPH_TESTS = "test_store_injected or test_overriding_injectable_args_with_tasks"
MARK = "# --- added at run time by langgraph-moa tests/langgraph_suite/run_stores.py ---"
PATCH = f"\n{MARK}\nfrom lgsuite_stores import async_store, sync_store  # noqa\n"
KINDS = ["official", "sqlite", "postgres", "mysql"]
# Tests about the official store's internals (its SQL text, schema, migrations list,
# connection object), not about BaseStore behaviour: not comparable.
INTERNALS = {
    "test_nonnull_migrations",
    "test_escape_glob_literal",
    "test_namespace_match_pattern",
    "test_list_namespaces_prefix_uses_indexable_condition",
    "test_vector_store_initialization",
}
# Deliberate differences, with the reason.
DIFFERENCES = {
    "test_ttl_override_default": "the official SQLite store refreshes a TTL on read only when "
    "the ttl config sets refresh_on_read; LangGraph's TTLConfig documents True as its default, "
    "which we follow (as the official PostgreSQL store does)",
}


def say(msg: str) -> None:
    print(f"[store-suite] {msg}", flush=True)


def fetch(ver: str) -> Path:
    """The unpacked sdist of ``langgraph-checkpoint-sqlite==ver`` (downloaded once)."""
    src = unpack_sdist(PACKAGE, ver, CACHE / f"langgraph_checkpoint_sqlite-{ver}")
    if not all((src / f).exists() for f in FILES):
        raise SystemExit(f"{src} lacks one of {FILES}: cannot run its store tests")
    return src


def fetch_graph_tests(ver: str) -> Path:
    """An unpacked copy of the ``langgraph==ver`` sdist whose ``sync_store``/``async_store``
    fixtures are ours (one import line appended to its ``tests/conftest.py``)."""
    return unpack_sdist("langgraph", ver, CACHE / f"langgraph-{ver}-stores", PATCH)


def run_kind(src: Path, kind: str, junit: Path, extra: list[str], files: list[str] = FILES) -> int:
    env = dict(os.environ, PYTHONPATH=pythonpath())
    env["MOA_LGSUITE_STORE"] = "" if kind == "official" else kind
    cmd = [sys.executable, "-m", "pytest", "-p", "lgsuite_stores", "-p", "no:cacheprovider"]
    cmd += ["-o", "addopts=", "-o", "junit_family=xunit1"]
    if files is FILES:  # the store tests are plain async tests; langgraph's run on anyio
        cmd += ["-o", "asyncio_mode=auto"]
    cmd += ["-o", "asyncio_default_fixture_loop_scope=function"]
    cmd += ["-W", "ignore::pytest.PytestUnknownMarkWarning"]  # flaky(retries=) without plugin
    env["NO_DOCKER"] = "true"  # the graph tests' checkpointers: in memory and SQLite
    cmd += ["--reruns", "2"]  # the same for every store: a failure must reproduce
    cmd += ["-q", "--tb=line", "-rN", "--timeout=300", f"--junitxml={junit}", *files, *extra]
    say(f"running {', '.join(files)} on {kind}")
    return subprocess.run(cmd, cwd=src, env=env).returncode


def _name(test_id: str) -> str:
    return test_id.split("::")[-1].split("[")[0]


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> 'passed' | 'failed' | 'skipped'."""
    out: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        key = f"{case.get('classname')}::{case.get('name')}"
        outcome = "failed" if tags & {"failure", "error"} else "passed"
        if "skipped" in tags:
            outcome = "skipped"
        if out.get(key) != "failed":
            out[key] = outcome
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kinds", default=",".join(KINDS), help="official and/or our databases")
    ap.add_argument("--reuse", action="store_true", help="report the last run's junit files")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest after --, e.g. -k ttl")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - set(KINDS):
        ap.error(f"unknown kinds {sorted(set(kinds) - set(KINDS))}; choose from {KINDS}")
    ver = version(PACKAGE)
    src = fetch(ver)
    graph_src = fetch_graph_tests(version("langgraph"))
    results: dict[str, dict[str, str]] = {}
    for kind in kinds:
        results[kind] = {}
        for part, where, files, extra in [
            ("store", src, FILES, args.pytest_args),
            ("graph", graph_src, GRAPH_FILES, ["-k", GRAPH_TESTS]),
        ]:
            junit = CACHE / f"junit-{part}-{kind}.xml"
            if not (args.reuse and junit.exists()):
                junit.unlink(missing_ok=True)
                code = run_kind(where, kind, junit, extra, files)
                if not junit.exists() or code not in (0, 1):
                    say(f"pytest on {kind} broke (exit {code}); see its output above")
                    return 2
            results[kind].update(outcomes(junit))
    base = results.get("official", {})
    rows = [("store", "passed", "failed", "skipped", "not compared", "failures official lacks")]
    regs: list[str] = []
    for kind, res in results.items():
        internal = [k for k in res if _name(k) in INTERNALS | set(DIFFERENCES)]
        c = Counter(o for k, o in res.items() if k not in internal)
        mine = [
            f"{kind}\t{k}"
            for k, o in sorted(res.items())
            if kind != "official"
            and o == "failed"
            and base.get(k) != "failed"
            and k not in internal
        ]
        regs += mine
        extra = "-" if kind == "official" or not base else str(len(mine))
        rows.append(
            (kind, str(c["passed"]), str(c["failed"]), str(c["skipped"]), str(len(internal)), extra)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\n{PACKAGE} {ver} store tests: {', '.join(FILES)}; langgraph {version('langgraph')}")
    print(f"{', '.join(GRAPH_FILES)} -k '{GRAPH_TESTS}' (the official kind: InMemoryStore)\n")
    print("\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows))
    print(
        "\nNot compared: the tests of the official store's internals ("
        + ", ".join(sorted(INTERNALS))
        + ") and deliberate differences:"
    )
    for name, why in DIFFERENCES.items():
        print(f"  {name}: {why}")
    if "official" not in results:
        say("note: the official store was not run, so every failure counts")
    if regs:
        print("\nFailing on our store but not on the official one:")
        print("\n".join(regs))
        return 1
    print("\nno failure that the official store does not have")
    return 0


if __name__ == "__main__":
    sys.exit(main())
