"""Tool calling in plain text, for chat models without a tools API (the embedded model).

A model bound to tools (:meth:`TextToolCalling.bind_tools`) is told, in its system prompt,
which tools exist and to call one by writing ``<tool_call>{"name": ..., "arguments": {...}}
</tool_call>``; the reply is parsed back into ``AIMessage.tool_calls``, and earlier calls and
their results are written into the conversation as text. With exactly one offered tool that
takes a single ``code`` argument (the sandboxed ``python`` tool), a fenced block tagged
``python`` in the reply is a call of it too: small models write code far more reliably than
JSON. Call ids are derived from the call, so the same reply always gives the same messages
(replay, ledgers).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import ToolCall
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

__all__ = ["TextToolCalling", "decode_reply", "encode_messages"]

_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*(?:</tool_call>|$)", re.DOTALL)
_CODE = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)


def _functions(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t["function"] for t in tools if t.get("type") == "function" and "function" in t]


def _code_tool(functions: list[dict[str, Any]]) -> str | None:
    """The one offered tool that takes just ``code`` (the python tool), if there is one."""
    if len(functions) != 1:
        return None
    props = functions[0].get("parameters", {}).get("properties", {})
    return functions[0]["name"] if list(props) == ["code"] else None


def _instructions(functions: list[dict[str, Any]]) -> str:
    lines = [
        "You can use tools. To call one, reply with only:",
        '<tool_call>{"name": "TOOL", "arguments": {...}}</tool_call>',
        "You will get its result, then answer. Tools:",
    ]
    for fn in functions:
        params = fn.get("parameters", {}).get("properties", {})
        args = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in params.items())
        lines.append(f"- {fn['name']}({args}): {fn.get('description', '').strip()}")
    code = _code_tool(functions)
    if code is not None:
        lines.append(f"To run Python with {code}, you may also write a ```python block.")
    lines.append("When you know the answer, reply with the answer and no tool call.")
    return "\n".join(lines)


def _call_text(call: ToolCall) -> str:
    body = json.dumps({"name": call["name"], "arguments": call["args"]}, ensure_ascii=False)
    return f"<tool_call>{body}</tool_call>"


def encode_messages(
    messages: Sequence[BaseMessage], tools: Sequence[dict[str, Any]] | None, tool_choice: Any
) -> list[BaseMessage]:
    """The conversation as plain text: tool calls and results written out, and (unless
    ``tool_choice`` is ``"none"``) the tools described in the system prompt."""
    out: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage) and message.tool_calls:
            text = "\n".join([message.text, *map(_call_text, message.tool_calls)]).strip()
            out.append(AIMessage(text, id=message.id))
        elif isinstance(message, ToolMessage):
            name = message.name or "the tool"
            out.append(HumanMessage(f"Result of {name}:\n{message.text}"))
        else:
            out.append(message)
    functions = _functions(tools or ())
    if functions and tool_choice != "none":
        guide = _instructions(functions)
        if out and isinstance(out[0], SystemMessage):
            out[0] = SystemMessage(f"{out[0].text}\n\n{guide}")
        else:
            out.insert(0, SystemMessage(guide))
    return out


def _call_id(index: int, name: str, args: dict[str, Any]) -> str:
    raw = json.dumps([index, name, args], sort_keys=True, ensure_ascii=False)
    return "call_" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def parse_calls(text: str, functions: list[dict[str, Any]]) -> tuple[str, list[ToolCall]]:
    """The calls of known tools written in ``text``, and the text without them."""
    names = {fn["name"] for fn in functions}
    calls: list[ToolCall] = []
    for match in _CALL.finditer(text):
        try:
            body = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(body, dict) or body.get("name") not in names:
            continue
        args = body.get("arguments", body.get("args", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = {}
        args = args if isinstance(args, dict) else {}
        calls.append(ToolCall(name=body["name"], args=args, id=None, type="tool_call"))
    rest = _CALL.sub("", text).strip() if calls else text
    code_tool = _code_tool(functions)
    if not calls and code_tool is not None:
        blocks = [b.strip() for b in _CODE.findall(text) if b.strip()]
        if blocks:
            code = "\n\n".join(blocks)
            calls.append(ToolCall(name=code_tool, args={"code": code}, id=None, type="tool_call"))
    for i, call in enumerate(calls):
        call["id"] = _call_id(i, call["name"], call["args"])
    return rest, calls


def decode_reply(
    result: ChatResult, tools: Sequence[dict[str, Any]] | None, tool_choice: Any
) -> ChatResult:
    """``result`` with the tool calls written in its text turned into ``tool_calls``."""
    functions = _functions(tools or ())
    if not functions or tool_choice == "none" or not result.generations:
        return result
    generation = result.generations[0]
    message = generation.message
    text, calls = parse_calls(message.text, functions)
    if not calls:
        return result
    generation.message = AIMessage(
        content=text,
        tool_calls=calls,
        id=message.id,
        usage_metadata=getattr(message, "usage_metadata", None),
        response_metadata=message.response_metadata,
    )
    return result


class TextToolCalling(BaseChatModel):
    """Mix-in for a chat model without a tools API: ``bind_tools`` works through text.

    The subclass passes its messages through :func:`encode_messages` and its result through
    :func:`decode_reply` (with ``kwargs["tools"]`` and ``kwargs["tool_choice"]``); a call
    with tools is never streamed, so its reply is parsed whole."""

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` (``tool_choice="none"``: described nowhere, never parsed)."""
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> bool:
        if kwargs.get("tools") and kwargs.get("tool_choice") != "none":
            return False
        return super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)
