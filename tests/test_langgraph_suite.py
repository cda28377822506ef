"""The verdict of tests/langgraph_suite/run.py: which failures of ours fail CI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

RUN = Path(__file__).resolve().parent / "langgraph_suite" / "run.py"


def load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lgsuite_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def case(kind: str, test: str, *children: str) -> str:
    key = f"tests/test_x.py::{test}[sync_checkpointer:durability='sync']"
    body = "".join(f"<{c} message='m'/>" for c in children)
    return (
        f"<testcase classname='tests.test_x' name='{test}[{kind}-sync]'>"
        f"<properties><property name='lg_kind' value='{kind}'/>"
        f"<property name='lg_key' value=\"{key}\"/></properties>{body}</testcase>"
    )


def test_only_failures_the_official_saver_lacks_count(tmp_path: Path) -> None:
    run = load_run()
    cases = [
        case("moa_sqlite", "test_both_fail", "failure"),
        case("sqlite", "test_both_fail", "failure"),
        case("moa_sqlite", "test_ours_fail", "failure"),
        case("sqlite", "test_ours_fail"),
        case("moa_sqlite", "test_teardown_error"),
        case("moa_sqlite", "test_teardown_error", "error"),
        case("sqlite", "test_teardown_error"),
        case("moa_sqlite", "test_official_skips", "failure"),
        case("sqlite", "test_official_skips", "skipped"),
        case("moa_sqlite", "test_pass"),
        case("sqlite", "test_pass"),
        case("moa_sqlite", "test_skip", "skipped"),
        case("sqlite", "test_skip", "skipped"),
        case("moa_postgres", "test_no_official_run", "failure"),
        "<testcase classname='tests.test_x' name='test_no_kind'><failure/></testcase>",
    ]
    junit = tmp_path / "junit.xml"
    junit.write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")
    res = run.parse_junit(junit)
    regs = run.regressions(res)
    assert regs == {
        "moa_sqlite": [
            "tests.test_x::test_official_skips[moa_sqlite-sync]",
            "tests.test_x::test_ours_fail[moa_sqlite-sync]",
            "tests.test_x::test_teardown_error[moa_sqlite-sync]",
        ],
        "moa_postgres": ["tests.test_x::test_no_official_run[moa_postgres-sync]"],
    }
    lines = run.table(res, regs).splitlines()
    assert lines[1].split() == ["moa_sqlite", "1", "4", "1", "3"]
    assert lines[2].split() == ["sqlite", "3", "1", "2", "-"]
