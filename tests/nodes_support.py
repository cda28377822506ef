"""In-process fake chat models for the node tests: every model entry of a spec answers from
a script (text, a message with tool calls, an exception, or a function of the call) and
records each call it gets (messages, sampling settings, tools offered), so the tests check
the exact prompts the nodes send, with no HTTP server and no sleeps.

The spec is real (``load_spec``), the graph is real (``compile_graph`` with LangGraph's
``InMemorySaver``); only :class:`ModelResolver.get` hands out :class:`FakeChat` models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.checkpoint.memory import InMemorySaver

from langgraph_moa.graphs import compile_graph
from langgraph_moa.models import ModelResolver
from langgraph_moa.nodes import NodeContext
from langgraph_moa.spec import GraphSpec, load_spec

URL = "http://127.0.0.1:9/v1"  # never contacted: the fake models answer in-process


@dataclass
class Call:
    """One call a fake model got."""

    model: str
    messages: list[BaseMessage]
    temperature: float
    max_tokens: int
    seed: int | None
    tools: list[str] | None
    tool_choice: str | None

    @property
    def system(self) -> str:
        return self.messages[0].text if self.messages[0].type == "system" else ""

    @property
    def human(self) -> str:
        return self.messages[-1].text

    @property
    def roles(self) -> list[str]:
        return [m.type for m in self.messages]


Answer = str | AIMessage | BaseException | Callable[[Call], Any]


def usage(tokens_in: int = 10, tokens_out: int = 5) -> dict[str, int]:
    return {
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
    }


@dataclass
class Script:
    """What each model entry answers: a queue of answers per model (the last one repeats),
    else ``default`` (a function of the call), else ``"<model> says"``."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    default: Callable[[Call], Any] | None = None
    usage: dict[str, int] = field(default_factory=usage)

    def on(self, model: str, *answers: Answer) -> Script:
        self.answers.setdefault(model, []).extend(answers)
        return self

    def of(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]

    async def answer(self, call: Call) -> AIMessage:
        queue = self.answers.get(call.model)
        if queue:
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        elif self.default is not None:
            answer = self.default
        else:
            answer = f"{call.model} says"
        if callable(answer) and not isinstance(answer, BaseException | AIMessage):
            answer = answer(call)
            if isinstance(answer, Awaitable):
                answer = await answer
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, AIMessage):
            if answer.usage_metadata is None:
                answer = answer.model_copy(update={"usage_metadata": dict(self.usage)})
            return answer
        return AIMessage(str(answer), usage_metadata=dict(self.usage))  # type: ignore[arg-type]


class FakeChat(BaseChatModel):
    """A chat model answering from a :class:`Script` (has a ``seed`` field, as ChatOpenAI)."""

    entry: str
    script: Any
    temperature: float = 0.0
    max_tokens: int = 0
    seed: int | None = None

    @property
    def _llm_type(self) -> str:
        return "fake-scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Any:
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        raise NotImplementedError("the nodes call models asynchronously")

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools = kwargs.get("tools")
        call = Call(
            model=self.entry,
            messages=list(messages),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            tools=None if tools is None else [t["function"]["name"] for t in tools],
            tool_choice=kwargs.get("tool_choice"),
        )
        self.script.calls.append(call)
        message = await self.script.answer(call)
        return ChatResult(generations=[ChatGeneration(message=message)])


class FakeModels(ModelResolver):
    """The spec's model entries (labels, prices, context windows, limits are real), each
    answering from ``script``."""

    def __init__(self, spec: GraphSpec, script: Script) -> None:
        super().__init__(spec.models, spec.defaults.model)
        self.script = script

    def get(self, name: str | None, *, temperature: float, max_tokens: int) -> BaseChatModel:
        return FakeChat(
            entry=name or "default",
            script=self.script,
            temperature=temperature,
            max_tokens=max_tokens,
        )


def models(*names: str, **settings: Any) -> dict[str, Any]:
    """Spec ``models`` entries, one per name."""
    return {n: {"model": n, "base_url": URL, "max_retries": 0, **settings} for n in names}


def spec_of(
    names: Sequence[str] = ("a", "b", "c"),
    layers: int = 1,
    *,
    synth: dict[str, Any] | None = None,
    layer: dict[str, Any] | None = None,
    **top: Any,
) -> GraphSpec:
    """Agents with a model each (named like the agent), ``layers`` broadcast layers closed
    by the model ``synth``."""
    data: dict[str, Any] = {
        "name": "units",
        "models": models(*names, "synth", "router"),
        "agents": [{"name": a, "model": a} for a in names],
        "layers": [
            {
                "agents": list(names),
                "synthesizer": {"model": "synth", **(synth or {})},
                **(layer or {}),
            }
            for _ in range(layers)
        ],
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return load_spec(data)


def context(spec: GraphSpec, script: Script | None = None) -> NodeContext:
    return NodeContext(spec=spec, models=FakeModels(spec, script or Script()))


def graph_of(spec: GraphSpec, script: Script, checkpointer: Any = None) -> Any:
    return compile_graph(
        spec, checkpointer=checkpointer or InMemorySaver(), models=FakeModels(spec, script)
    )


def thread(name: str = "t") -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}
