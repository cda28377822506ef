"""One model call as every node makes it: in-flight limit, budget reservation, usage."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import BaseModel

from langgraph_moa.nodes._context import NodeContext, usage_of
from langgraph_moa.nodes.budget import Budget, Ledger
from langgraph_moa.state import Usage

__all__ = ["Reply", "call_model", "call_seed", "invocation_id", "seeded", "spec_budget"]


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
    ``defaults.seed`` set, the call samples with :func:`call_seed`."""
    spec = ctx.models.spec(model_name)
    model = ctx.models.get(model_name, temperature=temperature, max_tokens=max_tokens)
    model = seeded(model, call_seed(ctx.spec.defaults.seed, node, messages))
    limiter = ctx.models.limiter(model_name)
    slot: AbstractAsyncContextManager[Any] = limiter.slot() if limiter else nullcontext()
    async with slot:
        prompt = count_tokens_approximately(messages)
        reply_max = spec.max_tokens or max_tokens
        cost = (prompt * spec.input_cost_per_mtok + reply_max * spec.output_cost_per_mtok) / 1e6
        reservation = await ledger.reserve(prompt + reply_max, cost, node, budget=budget)
        usage: Usage | None = None
        try:
            if schema is None:
                runnable: Any = model.bind_tools(tools, tool_choice=tool_choice) if tools else model
                message = await runnable.ainvoke(messages, config)
                assert isinstance(message, AIMessage)
                usage = usage_of(message, spec)
                return Reply(message, usage)
            out = await model.with_structured_output(schema, include_raw=True).ainvoke(
                messages, config
            )
            assert isinstance(out, dict) and isinstance(out["raw"], AIMessage)
            usage = usage_of(out["raw"], spec)
            return Reply(out["raw"], usage, out.get("parsed"), out.get("parsing_error"))
        finally:
            ledger.settle(reservation, usage)


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
