"""bench/checkpointer.py still runs: tiny arguments, SQLite only; checks its table and
JSON, not its timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_checkpointer_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "checkpointer.json"
    done = subprocess.run(
        [sys.executable, "bench/checkpointer.py", "--big", "30", "--runs", "5",
         "--budget", "0.01", "--backends", "sqlite", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [p["label"] for p in report["pairs"]] == ["sqlite sync", "sqlite async"]
    for pair in report["pairs"]:
        metrics = pair["metrics"]
        assert {"put", "put_writes", "get_tuple_by_id", "graph_runs", "bytes_per_step"} <= set(
            metrics
        )
        assert {"get_tuple_latest@10", "get_tuple_latest@30", "list_limit10@30"} <= set(metrics)
        assert {"put+lease", "put_writes+lease", "graph_runs+lease"} <= set(metrics)
        assert all(m["ours"] > 0 and m["official"] > 0 for m in metrics.values())
    assert "ratio" in done.stdout and "bytes_per_step" in done.stdout
