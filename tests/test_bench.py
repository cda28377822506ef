"""The bench scripts still run: each with tiny arguments, checking its table and JSON, not
its timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=900,  # a last guard: at load 13 (two suites at once) 240 s was too short
        cwd=BENCH.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_overhead_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    done = _bench(
        "overhead.py", "--repeat", "2", "--latency", "0.01", "--stores", "memory,sqlite",
        "--out", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    rows = {(r["graph"], r["impl"], r["store"]) for r in report["rows"]}
    assert len(rows) == 2 * 2 * 2 and not report["skipped"]
    # both implementations make the same model calls
    assert {r["calls_per_run"] for r in report["rows"]} == {7}
    assert {r["ideal_s"] for r in report["rows"] if r["graph"] == "team"} == {0.05}
    assert "raw-langgraph" in done.stdout and "SQLite (ours)" in done.stdout


@pytest.mark.slow
def test_concurrency_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "concurrency.json"
    done = _bench(
        "concurrency.py", "--levels", "1,5", "--db-levels", "3", "--latency", "0.01",
        "--stores", "memory,sqlite", "--out", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert [(r["store"], r["runs"], r["impl"]) for r in report["rows"]] == [
        ("InMemorySaver", 1, "langgraph-moa"),
        ("InMemorySaver", 1, "raw-langgraph"),
        ("InMemorySaver", 5, "langgraph-moa"),
        ("InMemorySaver", 5, "raw-langgraph"),
        ("SQLite (ours)", 3, "langgraph-moa"),
        ("SQLite (ours)", 3, "raw-langgraph"),
    ]
    assert all(r["peak_rss_mb"] >= r["rss_before_mb"] > 0 for r in report["rows"])
    assert all(0 < r["loop_cpu_ms_per_run"] <= r["cpu_ms_per_run"] for r in report["rows"])
    for r in report["rows"]:  # cores kept busy = CPU over wall time
        busy = r["cpu_ms_per_run"] * r["runs"] / 1000 / r["wall_s"]
        assert r["cores_used"] == pytest.approx(busy, rel=0.25, abs=0.02)
        assert r["server_cpu_ms_per_run"] >= 0
    # each row is compared with the raw row of its level
    assert {r["vs_raw_runs_per_s"] for r in report["rows"] if r["impl"] == "raw-langgraph"} == {1.0}
    assert "runs/s" in done.stdout and "x raw" in done.stdout


@pytest.mark.slow
def test_concurrency_bench_splits_a_level_over_processes(tmp_path: Path) -> None:
    out = tmp_path / "concurrency.json"
    done = _bench(
        "concurrency.py", "--levels", "5", "--latency", "0.01", "--stores", "memory",
        "--procs", "2", "--out", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert [(r["impl"], r["procs"], r["runs"]) for r in report["rows"]] == [
        ("langgraph-moa", 2, 5),
        ("raw-langgraph", 2, 5),
    ]
    for r in report["rows"]:  # the figures of the two children add up
        parts = r["per_proc"]
        assert sorted(p["runs"] for p in parts) == [2, 3]
        assert r["cpu_ms_per_run"] * 5 / 1000 == pytest.approx(
            sum(p["cpu_s"] for p in parts), abs=0.02
        )
        assert r["peak_rss_mb"] == pytest.approx(sum(p["peak_rss_mb"] for p in parts), abs=2)
        assert all(0 < p["peak_rss_mb"] < r["peak_rss_mb"] for p in parts)
        assert r["wall_s"] == max(p["wall_s"] for p in parts)  # go to the last child's end
        assert r["runs_per_s"] == pytest.approx(5 / r["wall_s"], rel=0.1)
        assert 0 < r["p50_s"] <= r["p99_s"] <= r["wall_s"]
    assert "procs" in done.stdout and "2 processes" in done.stdout


def test_startup_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    done = _bench(
        "startup.py", "--rounds", "1", "--only", "moa --help,moa spec validate,moa runs",
        "--out", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert [r["command"] for r in report["rows"]] == ["moa --help", "moa runs", "moa spec validate"]
    assert all(r["median_s"] > 0 and r["peak_rss_mb"] > 0 for r in report["rows"])
    assert "moa spec validate" in done.stdout and report["load_average"]["before"]


@pytest.mark.slow
def test_suite_load_counts_each_copy_and_round(tmp_path: Path) -> None:
    """Two copies of a small selection at once, twice: a test failing in every copy makes
    every round red (its reason kept); the same copies without it are green in a row."""
    failing = tmp_path / "test_outside.py"
    failing.write_text("def test_wrong():\n    assert 1 + 1 == 3, 'the sum is off'\n")
    one = "tests/test_eval_stats.py::test_mcnemar_rejects_negative_counts"
    red, green = tmp_path / "red.json", tmp_path / "green.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "suite_load.py"), "--copies", "2", "--rounds", "2",
         "--json", str(red), "--", one, str(failing)],
        capture_output=True, text=True, timeout=900, cwd=BENCH.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(red.read_text())
    assert [(r["round"], r["copy"]) for r in report["rows"]] == [
        (1, "copy1"), (1, "copy2"), (2, "copy1"), (2, "copy2")
    ]  # fmt: skip
    assert {(r["rc"], r["passed"], r["failed"], r["errors"]) for r in report["rows"]} == {
        (1, 1, 1, 0)
    }
    # (a file outside the copy has no class name in the JUnit report)
    assert [list(r["reasons"].items()) for r in report["rows"]] == [
        [("::test_wrong", "AssertionError: the sum is off")]
    ] * 4
    assert report["green_in_a_row"] == 0 and report["copies"] == 2

    done = _bench(
        "suite_load.py", "--copies", "2", "--rounds", "2", "--json", str(green), "--", one
    )
    report = json.loads(green.read_text())
    assert [(r["rc"], r["passed"], r["failed"]) for r in report["rows"]] == [(0, 1, 0)] * 4
    assert report["green_in_a_row"] == 2 and "green in a row at the end: 2 of 2" in done.stdout
