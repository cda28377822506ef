"""Run untrusted Python in a child process inside bubblewrap, within limits.

The child sees a read-only system (``--ro-bind / /``), a private empty ``/tmp`` that is its
working directory and the only writable place, fresh ``/proc`` and ``/dev``, and no network
(``--unshare-net``). Before ``exec`` it gets rlimits on CPU time, address space, processes,
file size and open files. The parent kills the whole process group at the wall-clock
timeout and keeps at most ``max_output`` characters of stdout and stderr each.

Started by root, the child drops to user ``nobody`` (root is exempt from the process
limit) and bubblewrap builds an unprivileged user namespace (``--unshare-user``), so it
needs unprivileged user namespaces (``kernel.unprivileged_userns_clone``) there.

On a machine without bubblewrap the tool refuses to run unless the spec says
``sandbox: none`` (then the same limits apply, without the filesystem and network walls).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailable", "bwrap_path", "run_python"]


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing and the spec did not allow running without it."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run; ``sandbox="none"`` drops the bubblewrap walls, not the rlimits."""

    timeout: float = 20.0
    memory_mb: int = 512
    cpu_seconds: int | None = None  # default: the timeout, rounded up
    processes: int = 64
    file_mb: int = 16
    open_files: int = 64
    max_output: int = 8000
    sandbox: str = "bwrap"


@dataclass
class SandboxResult:
    """What a run gave: its output (truncated with a note), exit status and time."""

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    seconds: float

    def render(self) -> str:
        """The tool result the model reads."""
        parts = []
        if self.timed_out:
            parts.append("status: killed after the time limit")
        else:
            parts.append(f"exit status: {self.exit_code}")
        parts.append(f"stdout:\n{self.stdout}" if self.stdout else "stdout: (empty)")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr}")
        return "\n".join(parts)


def bwrap_path() -> str | None:
    """The bubblewrap executable, if installed."""
    return shutil.which("bwrap")


NOBODY = 65534
"""The user a sandbox started by root runs as: root is exempt from the process limit."""


def _python() -> str:
    """The interpreter the sandbox runs: ours, or the system's when we are root (the child
    runs as nobody, who may not read root's home)."""
    if os.geteuid() == 0:
        return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    return sys.executable


def _command(code_file: str, workdir: str, limits: SandboxLimits) -> list[str]:
    python = _python()
    if limits.sandbox == "none":
        return [python, "-I", "-S", code_file]
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable(
            "the python tool needs bubblewrap (apt-get install bubblewrap); set "
            "`sandbox: none` on the tool to run code unconfined instead"
        )
    # The interpreter and its libraries come from the read-only root; the venv's site
    # packages are reachable read-only too (python -I ignores user site and env vars).
    return [
        bwrap,
        "--ro-bind", "/", "/",
        "--tmpfs", "/tmp",
        "--bind", workdir, "/tmp/work",
        "--dev", "/dev",
        "--proc", "/proc",
        "--chdir", "/tmp/work",
        "--unshare-user",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-pid",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--setenv", "HOME", "/tmp/work",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        python, "-I", "/tmp/work/main.py",
    ]  # fmt: skip


def _processes_of(uid: int) -> int:
    """How many processes ``uid`` runs now (RLIMIT_NPROC counts them all)."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry.path).st_uid == uid:
                    count += 1
    return count


def _limiter(limits: SandboxLimits) -> object:
    cpu = limits.cpu_seconds or int(limits.timeout) + 1
    memory = limits.memory_mb * 1024 * 1024
    # as root the child becomes nobody; otherwise the user's other processes count too
    uid = os.geteuid()
    processes = limits.processes + (0 if uid == 0 else _processes_of(uid))
    caps = [
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_NPROC, processes),
        (resource.RLIMIT_FSIZE, limits.file_mb * 1024 * 1024),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ]

    drop = os.geteuid() == 0

    def apply() -> None:  # in the child, before exec (bwrap and python inherit them)
        for what, value in caps:
            resource.setrlimit(what, (value, value))
        if drop:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    return apply


async def _read(stream: asyncio.StreamReader, keep: int) -> tuple[str, int]:
    """At most ``keep`` bytes of ``stream`` and the total size (the rest is drained)."""
    kept = bytearray()
    total = 0
    while chunk := await stream.read(65536):
        total += len(chunk)
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return kept.decode("utf-8", "replace"), total


def _note(text: str, total: int, keep: int) -> str:
    if total <= keep:
        return text
    return text + f"\n[output truncated: {total} bytes, the first {keep} shown]"


async def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` in the sandbox and return its output; never raises for what the code
    does (errors, limits, timeouts are in the result)."""
    limits = limits or SandboxLimits()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="moa-py-") as workdir:
        code_file = os.path.join(workdir, "main.py")
        with open(code_file, "w", encoding="utf-8") as handle:
            handle.write(code)
        if os.geteuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(code_file, NOBODY, NOBODY)
        command = _command(code_file, workdir, limits)
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=_limiter(limits),  # type: ignore[arg-type]
            env={"PATH": "/usr/bin:/bin", "HOME": workdir, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(
            _read(proc.stdout, limits.max_output), _read(proc.stderr, limits.max_output)
        )
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), limits.timeout)
        except TimeoutError:
            timed_out = True
        finally:
            with contextlib.suppress(ProcessLookupError):  # the whole group: forks too
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        try:
            (out, out_total), (err, err_total) = await asyncio.wait_for(readers, 5)
        except TimeoutError:  # a grandchild that left the group holds the pipe
            out, out_total, err, err_total = "", 0, "output not collected", 0
    return SandboxResult(
        stdout=_note(out, out_total, limits.max_output),
        stderr=_note(err, err_total, limits.max_output),
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        seconds=round(time.monotonic() - started, 3),
    )
