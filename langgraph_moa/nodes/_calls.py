"""One model call as every node makes it: in-flight limit, budget reservation, usage, and
the run's call ledger (recorded there; answered from it when a resume finds it there)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import BaseModel

from langgraph_moa.models import ModelResolver
from langgraph_moa.models.limits import counting_attempts
from langgraph_moa.nodes._context import NodeContext, usage_of
from langgraph_moa.nodes.budget import Budget, Ledger
from langgraph_moa.persistence.keys import CALLS_KEY
from langgraph_moa.spec import ModelSpec
from langgraph_moa.state import Usage

__all__ = [
    "CALLS_KEY",
    "CallRequest",
    "CallSource",
    "Reply",
    "call_model",
    "call_request",
    "call_seed",
    "canonical_message",
    "invocation_id",
    "ledger_call",
    "model_request",
    "seeded",
    "spec_budget",
]


@dataclass
class Reply:
    """A model's reply, its usage, and the parsed object when a schema was asked for."""

    message: AIMessage
    usage: Usage
    parsed: Any = None
    parsing_error: BaseException | None = None


def spec_budget(ctx: NodeContext) -> Budget:
    """The budget the spec sets."""
    return Budget(ctx.spec.max_total_tokens, ctx.spec.max_cost)


class CallSource(Protocol):
    """Where a run's model calls are recorded and answered from: the call ledger of a run
    (:class:`langgraph_moa.persistence.calls.RunCalls`) or a replay."""

    async def lookup(
        self, node: str, task_id: str, request_hash: str, *, request: CallRequest | None = None
    ) -> tuple[int, Mapping[str, Any] | None]:
        """``(seq, response)``: the recorded response to answer with, or None to call."""
        ...

    async def record(self, **fields: Any) -> None:
        """Record a call that was made (the ``moa_calls`` columns of one call)."""
        ...

    def finished(self, request: CallRequest) -> None:
        """A call :meth:`lookup` left to the caller is over: recorded, or never made (a
        budget refused it, it was cancelled)."""
        ...


def call_seed(base: int | None, node: str, messages: Sequence[BaseMessage]) -> int | None:
    """The sampling seed of one call: a hash of the spec's seed, the node (so two copies of
    an agent sample differently) and the messages (so it does not depend on the order in
    which concurrent calls run). None when the spec sets no seed."""
    if base is None:
        return None
    sent = [[m.type, m.content, getattr(m, "tool_calls", None) or []] for m in messages]
    text = json.dumps([base, node, sent], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


def seeded(model: BaseChatModel, seed: int | None) -> BaseChatModel:
    """``model`` sampling with ``seed``; unchanged for a model class without a seed field."""
    if seed is None or "seed" not in type(model).model_fields:
        return model
    return model.model_copy(update={"seed": seed})


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data (pydantic objects dumped, anything else unknown as text)."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "model_dump") and not isinstance(obj, type):
            return obj.model_dump(mode="json")
        return repr(obj)

    return orjson.loads(orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS))


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def canonical_message(message: BaseMessage) -> dict[str, Any]:
    """What of a message a model sees: role, content, name, tool calls (never ids of the
    message itself, which differ between processes)."""
    data: dict[str, Any] = {"role": message.type, "content": _jsonable(message.content)}
    if message.name:
        data["name"] = message.name
    if isinstance(message, AIMessage) and message.tool_calls:
        data["tool_calls"] = [
            {"name": c["name"], "args": _jsonable(c["args"]), "id": c.get("id")}
            for c in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        data["tool_call_id"], data["status"] = message.tool_call_id, message.status
    return data


@dataclass
class CallRequest:
    """A model call as the ledger sees it: canonical messages, parameters and their hash."""

    node: str
    kind: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    endpoint: str | None = None
    """The URL of the model's server, or the embedded model's GGUF file (``None``: a
    provider's model); kept beside the parameters, outside the hash (a replay may point at a
    moved server)."""
    deterministic: bool = False
    """Whether the same request gets the same reply: greedy decoding (temperature 0), or
    a seed the model samples with, and not the embedded model decoding in batches or on the
    threads its tuner picks. Only such calls are answered from another run's."""

    @property
    def hash(self) -> str:
        """sha256 of the canonical messages and parameters (stable across processes)."""
        return _digest({"messages": self.messages, "params": self.params})

    @property
    def recorded_params(self) -> dict[str, Any]:
        """The parameters as the ledger keeps them: with the endpoint, when there is one."""
        if self.endpoint is None:
            return self.params
        return {**self.params, "endpoint": self.endpoint}


def call_request(
    ctx: NodeContext,
    model_name: str | None,
    messages: list[BaseMessage],
    *,
    node: str,
    temperature: float,
    max_tokens: int,
    schema: type[BaseModel] | None = None,
    tools: Sequence[BaseTool] = (),
    tool_choice: str | None = None,
) -> CallRequest:
    """The ledger's view of a call (the settings the model really gets)."""
    return model_request(
        ctx.models,
        model_name,
        messages,
        node=node,
        temperature=temperature,
        max_tokens=max_tokens,
        seed=call_seed(ctx.spec.defaults.seed, node, messages),
        schema=schema,
        tools=tools,
        tool_choice=tool_choice,
    )


def model_request(
    models: ModelResolver,
    model_name: str | None,
    messages: list[BaseMessage],
    *,
    node: str,
    temperature: float,
    max_tokens: int,
    seed: int | None = None,
    kind: str | None = None,
    schema: type[BaseModel] | None = None,
    tools: Sequence[BaseTool] = (),
    tool_choice: str | None = None,
) -> CallRequest:
    """The ledger's view of a call of model entry ``model_name`` of ``models`` sampled with
    ``seed``; ``kind`` defaults to what the node's name says (router, synthesizer, agent or
    tool step)."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    spec = models.spec(model_name)
    label = models.label(model_name)
    params: dict[str, Any] = {
        "model": label,
        "temperature": spec.temperature if spec.temperature is not None else temperature,
        "max_tokens": spec.max_tokens or max_tokens,
    }
    if spec.kwargs:
        params["kwargs"] = _jsonable(spec.kwargs)
    if seed is not None:
        params["seed"] = seed
    if tools:
        params["tools"] = [_jsonable(convert_to_openai_tool(t)) for t in tools]
        params["tool_choice"] = tool_choice
    if schema is not None:
        params["schema"] = schema.model_json_schema()
    if kind is None and node.endswith("_router"):
        kind = "router"
    elif kind is None and node.endswith("_synthesizer"):
        kind = "synthesizer"
    elif kind is None:
        kind = "tool_step" if tools else "agent"
    deterministic = models.repeatable(model_name) and (
        params["temperature"] == 0 or (seed is not None and models.takes_seed(model_name))
    )
    return CallRequest(
        node,
        kind,
        label,
        [canonical_message(m) for m in messages],
        params,
        endpoint=models.endpoint(model_name),
        deterministic=deterministic,
    )


def _response(reply: Reply) -> dict[str, Any]:
    """A reply as the ledger keeps it (enough to answer the same call again)."""
    parsed = reply.parsed
    return {
        "message": _jsonable(message_to_dict(reply.message)),
        "parsed": _jsonable(parsed) if parsed is not None else None,
        "parsing_error": None if reply.parsing_error is None else str(reply.parsing_error),
    }


def _hashed(request: CallRequest, response: dict[str, Any] | None) -> tuple[Any, Any]:
    """Messages and response as hashes only (``ledger: hashes``)."""
    messages = [{"role": m["role"], "hash": _digest(m)} for m in request.messages]
    if response is None:
        return messages, None
    message = response["message"]["data"]
    return messages, {
        "hash": _digest(canonical_message(messages_from_dict([response["message"]])[0])),
        "tool_calls": len(message.get("tool_calls") or []),
    }


def _from_ledger(
    recorded: Mapping[str, Any], model: ModelSpec, schema: type[BaseModel] | None
) -> Reply:
    message = messages_from_dict([recorded["message"]])[0]
    assert isinstance(message, AIMessage)
    parsed: Any = recorded.get("parsed")
    if schema is not None and parsed is not None:
        parsed = schema.model_validate(parsed)
    error = recorded.get("parsing_error")
    return Reply(message, usage_of(message, model), parsed, ValueError(error) if error else None)


def _task_id() -> str:
    from langgraph.runtime import get_runtime

    try:
        info = get_runtime().execution_info
    except Exception:  # outside a graph
        info = None
    return info.task_id if info is not None and info.task_id else ""


async def call_model(
    ctx: NodeContext,
    model_name: str | None,
    messages: list[BaseMessage],
    config: RunnableConfig,
    *,
    temperature: float,
    max_tokens: int,
    ledger: Ledger,
    node: str,
    schema: type[BaseModel] | None = None,
    budget: Budget | None = None,
    tools: Sequence[BaseTool] = (),
    tool_choice: str | None = None,
) -> Reply:
    """Call model entry ``model_name`` within its endpoint's in-flight limit, after
    reserving the call's worst case in ``ledger`` (raises ``BudgetExceeded``). ``tools`` are
    offered to the model (``tool_choice="none"``: it may not call them). With the spec's
    ``defaults.seed`` set, the call samples with :func:`call_seed`.

    With a call ledger in ``config`` (:data:`CALLS_KEY`) the call is recorded there, and a
    call the ledger already answered for this task (a resume) is answered from it."""
    spec = ctx.models.spec(model_name)
    source: CallSource | None = (config.get("configurable") or {}).get(CALLS_KEY)
    request = seq = task_id = None
    recorded: Mapping[str, Any] | None = None
    if source is not None:
        request = call_request(
            ctx,
            model_name,
            messages,
            node=node,
            temperature=temperature,
            max_tokens=max_tokens,
            schema=schema,
            tools=tools,
            tool_choice=tool_choice,
        )
        task_id = _task_id()
        seq, recorded = await source.lookup(node, task_id, request.hash, request=request)
    try:
        limiter = ctx.models.limiter(model_name) if recorded is None else None
        slot: AbstractAsyncContextManager[Any] = limiter.slot() if limiter else nullcontext()
        made: _Made | None = None
        async with slot:
            prompt = count_tokens_approximately(messages)
            reply_max = spec.max_tokens or max_tokens
            cost = (prompt * spec.input_cost_per_mtok + reply_max * spec.output_cost_per_mtok) / 1e6
            reservation = await ledger.reserve(prompt + reply_max, cost, node, budget=budget)
            usage: Usage | None = None
            try:
                if recorded is not None:
                    reply = _from_ledger(recorded, spec, schema)
                    usage = reply.usage
                    return reply
                model = ctx.models.get(model_name, temperature=temperature, max_tokens=max_tokens)
                model = seeded(model, call_seed(ctx.spec.defaults.seed, node, messages))
                call = _invoke(model, messages, config, spec, schema, tools, tool_choice)
                if source is None:
                    reply = await call
                    usage = reply.usage
                    return reply
                made = await _Made.of(call)
                usage = made.reply.usage if made.reply is not None else None
            finally:
                ledger.settle(reservation, usage)
        # recorded once the endpoint's slot is free again
        assert request is not None and seq is not None and task_id is not None
        await _record(source, request, task_id, seq, ctx.spec.ledger == "hashes", made)
    finally:
        if source is not None and request is not None and recorded is None:
            source.finished(request)
    if made.reply is None:
        assert made.error is not None
        raise made.error
    return made.reply


async def _invoke(
    model: Any,
    messages: list[BaseMessage],
    config: RunnableConfig,
    spec: ModelSpec,
    schema: type[BaseModel] | None,
    tools: Sequence[BaseTool],
    tool_choice: str | None,
) -> Reply:
    if schema is None:
        runnable: Any = model.bind_tools(tools, tool_choice=tool_choice) if tools else model
        message = await runnable.ainvoke(messages, config)
        assert isinstance(message, AIMessage)
        return Reply(message, usage_of(message, spec))
    out = await model.with_structured_output(schema, include_raw=True).ainvoke(messages, config)
    assert isinstance(out, dict) and isinstance(out["raw"], AIMessage)
    usage = usage_of(out["raw"], spec)
    return Reply(out["raw"], usage, out.get("parsed"), out.get("parsing_error"))


@dataclass
class _Made:
    """A call that went out: its reply or its error, latency and retries."""

    reply: Reply | None
    error: Exception | None
    latency_ms: float
    retries: int

    @classmethod
    async def of(cls, call: Awaitable[Reply]) -> _Made:
        started = time.monotonic()
        with counting_attempts() as attempts:
            try:
                reply: Reply | None = await call
                error: Exception | None = None
            except Exception as exc:
                reply, error = None, exc
        latency = round((time.monotonic() - started) * 1000, 3)
        return cls(reply, error, latency, max(attempts[0] - 1, 0))


async def _record(
    source: CallSource,
    request: CallRequest,
    task_id: str,
    seq: int,
    hashes_only: bool,
    made: _Made,
) -> None:
    """Record a call that went out (its error too) in the run's call ledger."""
    response = _response(made.reply) if made.reply is not None else None
    messages: Any = request.messages
    if hashes_only:
        messages, response = _hashed(request, response)
    error = None if made.error is None else f"{type(made.error).__name__}: {made.error}"
    await source.record(
        node=request.node,
        kind=request.kind,
        task_id=task_id,
        seq=seq,
        model=request.model,
        params=request.recorded_params,
        request_hash=request.hash,
        messages=messages,
        response=response,
        usage=dict(made.reply.usage) if made.reply is not None else None,
        latency_ms=made.latency_ms,
        retries=made.retries,
        status="ok" if made.error is None else "error",
        error=None if error is None else error[:2000],
    )


async def ledger_call(
    source: CallSource,
    request: CallRequest,
    model: BaseChatModel,
    messages: list[BaseMessage],
    spec: ModelSpec,
) -> Reply:
    """Call ``model`` outside a graph (no task, no budget) through a call source: answered
    from it when it has the reply, else made and recorded there (its error too)."""
    seq, recorded = await source.lookup(request.node, "", request.hash, request=request)
    if recorded is not None:
        return _from_ledger(recorded, spec, None)
    try:
        made = await _Made.of(_invoke(model, messages, {}, spec, None, (), None))
        await _record(source, request, "", seq, False, made)
    finally:
        source.finished(request)
    if made.reply is None:
        assert made.error is not None
        raise made.error
    return made.reply


_invocations: OrderedDict[object, str] = OrderedDict()
_invocations_lock = threading.Lock()
_MAX_INVOCATIONS = 4096


def invocation_id(config: RunnableConfig) -> str:
    """An id of the current graph invocation; a resume is a new invocation (even when it
    keeps the run id, as a registry run does across its resumes).

    LangGraph gives every invocation a fresh run-scoped ``Runtime.control``; the id is a
    token kept for that object (strong references to the newest few thousand, so an
    object's address cannot be reused while its token lives)."""
    from langgraph.runtime import get_runtime

    try:
        control: object | None = get_runtime().control
    except Exception:  # outside a graph
        control = None
    if control is None:
        return uuid.uuid4().hex
    with _invocations_lock:
        token = _invocations.get(control)
        if token is None:
            token = _invocations[control] = uuid.uuid4().hex
            if len(_invocations) > _MAX_INVOCATIONS:
                _invocations.popitem(last=False)
        return token


def checkpoint_id() -> str:
    """The checkpoint the current superstep runs on ("" outside a graph)."""
    from langgraph.runtime import get_runtime

    try:
        info = get_runtime().execution_info
    except Exception:  # outside a graph
        info = None
    return info.checkpoint_id if info is not None else ""
