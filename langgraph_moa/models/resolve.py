"""Turn a :class:`ModelSpec` into a LangChain chat model.

Resolution order for a spec entry:

1. ``base_url`` set: ``ChatOpenAI`` against that OpenAI-compatible endpoint.
2. ``model`` set: ``init_chat_model("provider:model")``.
3. Neither: the environment's default (``MOA_BASE_URL`` + ``MOA_MODEL``, or
   ``MOA_MODEL`` alone as a ``provider:model`` string), else the embedded local model.

Faults are the client's job: the entry's ``max_retries`` and ``timeout`` (per attempt,
default :data:`DEFAULT_TIMEOUT` seconds) go to the provider client, which retries 408, 409,
429, 5xx, timeouts and connection errors with exponential backoff and jitter, honours
``Retry-After`` (the OpenAI client up to two minutes), and does not retry other 4xx.
``requests_per_second`` becomes the model's ``rate_limiter`` and ``max_concurrency`` a
:class:`~langgraph_moa.models.limits.CallLimiter` (:meth:`ModelResolver.limiter`; by default
:data:`~langgraph_moa.models.limits.DEFAULT_MAX_CONCURRENCY`), both shared process-wide per
endpoint. The models of an OpenAI-compatible endpoint share one HTTP client per event loop,
on the OpenAI SDK's aiohttp transport (less CPU per call than its httpx one under load), its
connection pool as large as that limit, closed when the loop shuts down (``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections.abc import AsyncGenerator
from typing import Any

from langchain_core.language_models import BaseChatModel

from langgraph_moa.models.limits import (
    DEFAULT_MAX_CONCURRENCY,
    CallLimiter,
    call_limiter,
    max_concurrency,
    on_request,
    rate_limiter,
)
from langgraph_moa.models.settings import _env_default, describe_default
from langgraph_moa.spec import ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_TIMEOUT",
    "ModelConfigError",
    "ModelResolver",
    "describe_default",
    "resolve_model",
]

DEFAULT_CONTEXT_WINDOW = 8192
DEFAULT_TIMEOUT = 120.0
"""Seconds per call attempt when a model entry sets no ``timeout``."""


class ModelConfigError(ValueError):
    """A model entry that cannot be turned into a chat model."""


def resolve_model(
    spec: ModelSpec, *, temperature: float, max_tokens: int, name: str = "model"
) -> BaseChatModel:
    """Build the chat model for ``spec`` with the call's sampling settings."""
    if spec.is_local:
        env = _env_default()
        if env is None:
            from langgraph_moa.models.local import local_chat_model

            return local_chat_model(temperature=temperature, max_tokens=max_tokens)
        spec = env
    temperature = spec.temperature if spec.temperature is not None else temperature
    max_tokens = spec.max_tokens or max_tokens
    api_key: str | None = None
    if spec.api_key_env:
        api_key = os.environ.get(spec.api_key_env)
        if not api_key:
            raise ModelConfigError(
                f"model {name!r}: environment variable {spec.api_key_env} is not set; "
                f"export {spec.api_key_env}=<your key> or remove `api_key_env`"
            )
    common: dict[str, Any] = {
        "temperature": temperature,
        "max_tokens": max_tokens,
        "timeout": spec.timeout or DEFAULT_TIMEOUT,
        "max_retries": spec.max_retries,
        **spec.kwargs,
    }
    limiter = rate_limiter(spec)
    if limiter is not None:
        common["rate_limiter"] = limiter
    if spec.base_url or (spec.model and spec.model.startswith("openai:")):
        common.setdefault("http_async_client", _http_client(spec))
    if spec.base_url:
        from langchain_openai import ChatOpenAI

        # Servers such as llama.cpp and vLLM read `max_tokens`, not `max_completion_tokens`.
        extra_body = {"max_tokens": max_tokens, **common.pop("extra_body", {})}
        return ChatOpenAI(
            model=spec.model or "default",
            base_url=spec.base_url,
            api_key=api_key or "not-needed",  # type: ignore[arg-type]
            extra_body=extra_body,
            stream_usage=True,
            **common,
        )
    assert spec.model is not None
    if ":" not in spec.model:
        raise ModelConfigError(
            f"model {name!r}: {spec.model!r} needs a provider prefix such as 'openai:{spec.model}' "
            "or a `base_url` for an OpenAI-compatible server"
        )
    from langchain.chat_models import init_chat_model

    if api_key:
        common["api_key"] = api_key
    try:
        return init_chat_model(spec.model, **common)
    except ImportError as exc:
        raise ModelConfigError(f"model {name!r}: {exc}") from None
    except Exception as exc:  # provider packages raise on missing keys at construction time
        raise ModelConfigError(f"model {name!r} ({spec.model}): {exc}") from None


class _LoopScope:
    """What this module keeps for one event loop: its HTTP clients, and the resolvers whose
    models use them. All of it is closed and dropped when the loop shuts down."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, int], Any] = {}
        self.resolvers: weakref.WeakSet[ModelResolver] = weakref.WeakSet()
        self.closer = self._close_at_shutdown()
        # ``__anext__()`` calls the running loop's first-iteration hook, which adds the
        # generator to the loop's (weak) set of async generators, and ``send(None)`` runs it
        # to its ``yield`` (raising StopIteration): the loop's ``shutdown_asyncgens()`` will
        # close it. ``_scopes`` keeps it alive until then.
        with contextlib.suppress(StopIteration):
            self.closer.__anext__().send(None)

    async def _close_at_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            _scopes.pop(loop, None)
            for resolver in list(self.resolvers):
                resolver._by_loop.pop(loop, None)
            clients, self.clients = list(self.clients.values()), {}
            for client in clients:
                try:
                    await client.aclose()
                except Exception as exc:  # close the others anyway
                    log.warning("closing an HTTP client at the event loop's shutdown: %r", exc)


_scopes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopScope] = (
    weakref.WeakKeyDictionary()
)


def _loop_scope() -> _LoopScope | None:
    """The running event loop's scope (None without a running loop). A loop that runs
    ``shutdown_asyncgens()`` before it closes (``asyncio.run``, ``asyncio.Runner``, uvicorn,
    pytest-asyncio) closes its HTTP clients then; one closed without it leaves them open."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    scope = _scopes.get(loop)
    if scope is None:
        scope = _scopes[loop] = _LoopScope()
    return scope


def _http_client(spec: ModelSpec) -> Any:
    """The async HTTP client of ``spec``'s endpoint: one per URL and event loop, shared by
    every model of that endpoint, with a pool the size of its in-flight limit.

    langchain-openai's own cached client is process-wide, but pooled connections die with
    the event loop that opened them; hence one per loop (``ModelResolver`` keeps models
    per loop too). Without a running loop every model gets its own client. The transport is
    aiohttp (``openai[aiohttp]``), else the SDK's httpx one.
    """
    import httpx2

    limit = max_concurrency(spec) or DEFAULT_MAX_CONCURRENCY
    limits = httpx2.Limits(max_connections=limit, max_keepalive_connections=limit)
    scope = _loop_scope()
    if scope is None:
        return _new_http_client(limits)
    key = (spec.base_url or "openai", limit)
    if key not in scope.clients:
        scope.clients[key] = _new_http_client(limits)
    return scope.clients[key]


def _new_http_client(limits: Any) -> Any:
    import openai

    hooks = {"request": [on_request]}  # counts attempts for the call ledger (retries)
    try:
        return openai.DefaultAioHttpClient(limits=limits, event_hooks=hooks)
    except RuntimeError:  # openai installed without its aiohttp extra
        return openai.DefaultAsyncHttpxClient(limits=limits, event_hooks=hooks)


class ModelResolver:
    """Caches one chat model per (model entry, temperature, max_tokens) and event loop
    for a graph (HTTP clients cannot outlive or cross event loops)."""

    def __init__(self, models: dict[str, ModelSpec], default: str | None = None) -> None:
        self._models = models
        self._default = default
        self._cache: dict[tuple[str | None, float, int], BaseChatModel] = {}
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str | None, float, int], BaseChatModel]
        ] = weakref.WeakKeyDictionary()

    def spec(self, name: str | None) -> ModelSpec:
        """The spec entry called ``name`` (or the default entry, or the local model)."""
        name = name or self._default
        return self._models[name] if name is not None else ModelSpec()

    def label(self, name: str | None) -> str:
        """A short human label for the model entry ``name``."""
        spec = self.spec(name)
        if spec.is_local:
            env = _env_default()
            return env.model or "default" if env else "local"
        return spec.model or "default"

    def endpoint(self, name: str | None) -> str | None:
        """Where entry ``name``'s calls go when its label does not say it: the URL of an
        OpenAI-compatible server (scheme, host, port and path; no credentials, query or
        fragment), the embedded model's GGUF file (``local:<file name>:<size>``, with
        ``:threads=N`` when fixed), None for a ``provider:model``."""
        spec = self.spec(name)
        if spec.is_local:
            env = _env_default()
            if env is None:
                from langgraph_moa.models.local import local_model_identity

                return local_model_identity()
            spec = env
        if not spec.base_url:
            return None
        from urllib.parse import urlsplit

        url = urlsplit(spec.base_url)
        host = url.hostname or ""
        if url.port is not None:
            host = f"{host}:{url.port}"
        return f"{url.scheme}://{host}{url.path.rstrip('/')}"

    def takes_seed(self, name: str | None) -> bool:
        """Whether entry ``name``'s chat model samples with a ``seed`` it is given: the
        embedded model and OpenAI-compatible clients do; other providers are not known to."""
        spec = self.spec(name)
        if spec.is_local:
            env = _env_default()
            if env is None:
                return True
            spec = env
        return bool(spec.base_url) or (spec.model or "").startswith("openai:")

    def repeatable(self, name: str | None) -> bool:
        """Whether entry ``name`` gives a request the reply its sampling settings decide,
        whatever runs beside it: not the embedded model decoding requests in a batch
        (``MOA_LOCAL_PARALLEL`` > 1, in-process), where the batch changes the reply, or on
        the threads its tuner picks from timings (``MOA_LOCAL_THREADS`` unset)."""
        if not self.spec(name).is_local or _env_default() is not None:
            return True
        from langgraph_moa.models.local import local_decodes_alone

        return local_decodes_alone()

    def get(self, name: str | None, *, temperature: float, max_tokens: int) -> BaseChatModel:
        """The chat model for entry ``name`` with these sampling settings."""
        key = (name or self._default, temperature, max_tokens)
        scope = _loop_scope()
        if scope is None:  # no running loop: a synchronous caller
            cache = self._cache
        else:
            cache = self._by_loop.setdefault(asyncio.get_running_loop(), {})
            scope.resolvers.add(self)
        if key not in cache:
            cache[key] = resolve_model(
                self.spec(name), temperature=temperature, max_tokens=max_tokens, name=str(key[0])
            )
        return cache[key]

    def limiter(self, name: str | None) -> CallLimiter | None:
        """The shared in-flight limit of entry ``name``'s endpoint (None: unlimited)."""
        return call_limiter(self.spec(name))

    def context_window(self, name: str | None) -> int:
        """The prompt budget of entry ``name`` in tokens."""
        spec = self.spec(name)
        if spec.context_window:
            return spec.context_window
        if spec.is_local and _env_default() is None:
            from langgraph_moa.models.local import LOCAL_CONTEXT_WINDOW

            return LOCAL_CONTEXT_WINDOW
        return DEFAULT_CONTEXT_WINDOW
