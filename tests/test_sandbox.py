"""The python tool's sandbox (bubblewrap + rlimits + wall clock): hostile programs are
contained, and the host is untouched."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from langgraph_moa.nodes.sandbox import SandboxLimits, SandboxUnavailable, run_python

needs_bwrap = pytest.mark.usefixtures("bwrap")  # fails under MOA_REQUIRE_SERVICES=1
LIMITS = SandboxLimits(timeout=5, memory_mb=512, max_output=1000)


@needs_bwrap
async def test_runs_code_and_reports_status() -> None:
    result = await run_python("import sys\nprint(6 * 7)\nsys.exit(3)", LIMITS)
    assert (result.stdout, result.exit_code, result.timed_out) == ("42\n", 3, False)
    assert result.render() == "exit status: 3\nstdout:\n42\n"


@needs_bwrap
async def test_writes_outside_its_directory_fail(tmp_path: Path) -> None:
    inside = await run_python("open('f', 'w').write('ok')\nprint(open('f').read())", LIMITS)
    assert inside.stdout == "ok\n" and inside.exit_code == 0
    in_repo = Path.cwd() / "pwned-by-sandbox"  # the system is mounted read-only
    repo = await run_python(f"open({str(in_repo)!r}, 'w').write('x')", LIMITS)
    # a checkout under /tmp is hidden by the sandbox's own /tmp: then it is not even there
    hidden = Path.cwd().is_relative_to("/tmp")
    refused = "No such file or directory" if hidden else "Read-only file system"
    assert repo.exit_code == 1 and refused in repo.stderr, repo.stderr
    in_tmp = tmp_path / "pwned"  # the sandbox's /tmp is its own: the host's is not there
    tmp = await run_python(f"open({str(in_tmp)!r}, 'w').write('x')", LIMITS)
    assert tmp.exit_code == 1 and "No such file or directory" in tmp.stderr
    assert not in_repo.exists() and not in_tmp.exists()


@needs_bwrap
async def test_no_network() -> None:
    code = "import socket\nsocket.create_connection(('127.0.0.1', 5432), timeout=2)\nprint('open')"
    result = await run_python(code, LIMITS)
    assert result.exit_code == 1 and result.stdout == ""
    assert "OSError" in result.stderr or "ConnectionRefusedError" in result.stderr


@needs_bwrap
async def test_allocating_4_gb_fails() -> None:
    result = await run_python("b = bytearray(4 * 1024**3)\nprint('allocated')", LIMITS)
    assert result.exit_code == 1 and "MemoryError" in result.stderr and result.stdout == ""


@needs_bwrap
async def test_an_endless_loop_is_killed_at_the_timeout() -> None:
    started = time.monotonic()
    result = await run_python("while True:\n    pass\n", SandboxLimits(timeout=2))
    assert result.timed_out and result.exit_code is None
    assert result.render() == "status: killed after the time limit\nstdout: (empty)"
    assert time.monotonic() - started < 2 + 5  # killed, not waited for


@needs_bwrap
async def test_a_fork_bomb_hits_the_process_limit() -> None:
    code = "import os\nwhile True:\n    os.fork()\n"
    result = await run_python(code, SandboxLimits(timeout=5, processes=32))
    assert not result.timed_out and result.seconds < 5  # stopped by the limit, in time
    assert "BlockingIOError: [Errno 11] Resource temporarily unavailable" in result.stderr
    after = await run_python("print('fine')", LIMITS)  # no process left behind in the way
    assert after.stdout == "fine\n"


@needs_bwrap
async def test_huge_output_is_truncated_with_a_note() -> None:
    result = await run_python("print('x' * 10_000_000)", LIMITS)
    assert (
        result.stdout == "x" * 1000 + "\n[output truncated: 10000001 bytes, the first 1000 shown]"
    )


async def test_refuses_without_bwrap_unless_sandbox_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxUnavailable, match="sandbox: none"):
        await run_python("print(1)", LIMITS)
    unconfined = await run_python("print(1)", SandboxLimits(timeout=5, sandbox="none"))
    assert unconfined.stdout == "1\n"
