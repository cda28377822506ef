"""What the scripted server answers: requests as rules see them, replies, rules, and the
default reply (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "FAILURES",
    "TEMPLATE_FIELDS",
    "ChatRequest",
    "Reply",
    "Rule",
    "count_tokens",
    "default_reply",
    "finish_reply",
    "sample_json",
    "usage_of",
]

FAILURES = ("stall", "bad_json", "truncated")
"""Non-HTTP-status failure modes of a rule (an HTTP status 400-599 is the other kind)."""

TEMPLATE_FIELDS = ("model", "last_user", "system", "prompt", "digest", "call")
"""The fields a rule's ``template`` may use, e.g. ``"{model} got: {last_user}"``."""


def count_tokens(text: str) -> int:
    """The server's token count: the number of whitespace-separated words of ``text``."""
    return len(text.split())


def _text(content: Any) -> str:
    """The text of a message's ``content`` (a string, a list of parts, or None)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") if isinstance(p, dict) else str(p)
            for p in content
            if not isinstance(p, dict) or p.get("type", "text") == "text"
        )
    return str(content)


@dataclass
class ChatRequest:
    """One chat-completions call as received and answered; what reply callables receive."""

    model: str
    messages: list[dict[str, Any]]
    body: dict[str, Any]
    call: int
    """1-based number of this call among the calls for ``model``."""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    status: int | None = None
    """HTTP status sent; None while in flight or when nothing was sent (a stall)."""
    failure: str | None = None
    """The scripted failure applied ("429", "stall", ...), or an error's description."""
    rule: int | None = None
    """Index of the matched rule; None for the default reply."""
    usage: dict[str, int] | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def last_user(self) -> str:
        """Text of the last user message ("" if none)."""
        users = [m for m in self.messages if m.get("role") == "user"]
        return _text(users[-1].get("content")) if users else ""

    @property
    def system(self) -> str:
        """Text of the system (and developer) messages, one per line."""
        roles = ("system", "developer")
        return "\n".join(_text(m.get("content")) for m in self.messages if m.get("role") in roles)

    @property
    def prompt(self) -> str:
        """Text of all messages, one per line."""
        return "\n".join(_text(m.get("content")) for m in self.messages)

    @property
    def digest(self) -> str:
        """First 8 hex digits of the SHA-256 of :attr:`prompt`."""
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:8]

    @property
    def seed(self) -> int | None:
        """The request's sampling ``seed`` (None if not sent)."""
        seed = self.body.get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    @property
    def temperature(self) -> float:
        """The request's ``temperature`` (OpenAI's default 1.0 if not sent)."""
        value = self.body.get("temperature")
        return float(value) if isinstance(value, int | float) else 1.0

    def sample(self, choices: list[str]) -> str:
        """One of ``choices`` as a sampling model would give it: the first at temperature
        0; else drawn from the request's seed and prompt (the same seed and prompt, the
        same draw), or at random when the request has no seed."""
        if self.temperature <= 0:
            return choices[0]
        if self.seed is None:
            return random.choice(choices)
        return random.Random(f"{self.seed}:{self.digest}").choice(choices)

    @property
    def max_tokens(self) -> int | None:
        caps = [self.body.get(k) for k in ("max_tokens", "max_completion_tokens")]
        ints = [c for c in caps if isinstance(c, int)]
        return min(ints) if ints else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``GET /_test/requests`` returns)."""
        keys = ("model", "messages", "call", "started", "finished", "status", "failure", "rule")
        return {k: getattr(self, k) for k in keys} | {"usage": self.usage, "stream": self.stream}


@dataclass
class Reply:
    """A scripted answer: text content and/or tool calls.

    Tool calls are ``{"name": ..., "arguments": dict | str}`` (``"id"`` optional).
    """

    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None

    @classmethod
    def of(cls, value: str | Reply | Mapping[str, Any]) -> Reply:
        """Coerce what a reply callable returned."""
        if isinstance(value, Reply):
            return value
        if isinstance(value, str):
            return cls(content=value)
        if isinstance(value, Mapping):
            return cls(**value)
        raise TypeError(f"a reply callable returned {type(value).__name__}; return str or Reply")


ReplyFn = Callable[[ChatRequest], "str | Reply | Mapping[str, Any]"]


@dataclass
class Rule:
    """A scripted behaviour, applied to the calls it matches (all given matchers must match).

    Matchers: ``model`` (exact name or regex, full match), ``last_user`` / ``prompt`` /
    ``system`` (regexes searched in the last user message, all messages, the system prompt).
    Answer (at most one of ``reply``/``template``/``json``/``choices``, plus ``tool_calls``):
    ``reply`` fixed text, a :class:`Reply` or a callable taking the :class:`ChatRequest`;
    ``template`` a ``str.format`` string over :data:`TEMPLATE_FIELDS`; ``json`` a value sent
    as JSON content; ``choices`` texts sampled per call (:meth:`ChatRequest.sample`: seeded
    by the request's ``seed``, the first one at temperature 0). ``delay`` seconds before
    answering (overrides the model latency).
    ``fail``: an HTTP status (with ``Retry-After: retry_after`` if set), ``"stall"``
    (no response for ``stall`` seconds, then the connection is closed), ``"bad_json"``
    (invalid JSON body or SSE event) or ``"truncated"`` (the body is cut off mid-way).
    ``times``: the rule applies to its first N matching calls only, then stops matching.
    """

    model: str | None = None
    last_user: str | None = None
    prompt: str | None = None
    system: str | None = None
    reply: str | Reply | ReplyFn | None = None
    template: str | None = None
    json: Any = None
    choices: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    delay: float | None = None
    fail: int | str | None = None
    retry_after: float | None = None
    stall: float = 30.0
    times: int | None = None
    _patterns: dict[str, re.Pattern[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("model", "last_user", "prompt", "system"):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                self._patterns[name] = re.compile(pattern, re.DOTALL)
            except re.error as exc:
                raise ValueError(f"rule {name}={pattern!r} is not a valid regex: {exc}") from None
        if isinstance(self.reply, Mapping):
            try:
                self.reply = Reply.of(self.reply)
            except TypeError as exc:
                raise ValueError(f"rule reply mapping: {exc}; use content/tool_calls") from None
        if not (self.reply is None or isinstance(self.reply, str | Reply) or callable(self.reply)):
            raise ValueError(f"rule reply={self.reply!r}: give text, a Reply or a callable")
        for key in ("delay", "retry_after", "stall"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ValueError(f"rule {key}={value!r}: must be a number of seconds >= 0")
        if self.choices is not None and (
            not self.choices or not all(isinstance(c, str) for c in self.choices)
        ):
            raise ValueError(f"rule choices={self.choices!r}: give a non-empty list of texts")
        answers = [
            k for k in ("reply", "template", "json", "choices") if getattr(self, k) is not None
        ]
        if len(answers) > 1:
            raise ValueError(f"a rule gives {' and '.join(answers)}; give at most one of them")
        if isinstance(self.fail, str) and self.fail.isdigit():
            self.fail = int(self.fail)
        if isinstance(self.fail, int) and not 400 <= self.fail <= 599:
            raise ValueError(f"rule fail={self.fail}: an HTTP status must be 400-599")
        if isinstance(self.fail, str) and self.fail not in FAILURES:
            raise ValueError(f"rule fail={self.fail!r}: use an HTTP status or one of {FAILURES}")
        if self.template is not None:
            for _, fname, _, _ in string.Formatter().parse(self.template):
                if fname is not None and re.split(r"[.\[]", fname)[0] not in TEMPLATE_FIELDS:
                    raise ValueError(
                        f"rule template {self.template!r} uses unknown field {{{fname}}}; "
                        f"available: {', '.join(TEMPLATE_FIELDS)} (double braces for literal ones)"
                    )
        if self.times is not None and self.times < 1:
            raise ValueError(f"rule times={self.times}: must be at least 1 (or omitted: always)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "rule") -> Rule:
        """Build a rule from a script-file mapping; errors name ``where``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping of rule fields, got {data!r}")
        allowed = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def matches(self, req: ChatRequest) -> bool:
        """Whether every matcher given accepts ``req``."""
        p = self._patterns
        return (
            ("model" not in p or p["model"].fullmatch(req.model) is not None)
            and ("last_user" not in p or p["last_user"].search(req.last_user) is not None)
            and ("prompt" not in p or p["prompt"].search(req.prompt) is not None)
            and ("system" not in p or p["system"].search(req.system) is not None)
        )

    def answer(self, req: ChatRequest) -> Reply:
        """The reply for ``req`` (the default reply if the rule gives no answer)."""
        if callable(self.reply):
            reply = Reply.of(self.reply(req))
        elif isinstance(self.reply, Reply):
            reply = self.reply
        elif isinstance(self.reply, str):
            reply = Reply(content=self.reply)
        elif self.template is not None:
            values = {k: getattr(req, k) for k in TEMPLATE_FIELDS}
            reply = Reply(content=self.template.format_map(values))
        elif self.json is not None:
            reply = Reply(content=json.dumps(self.json))
        elif self.choices is not None:
            reply = Reply(content=req.sample(self.choices))
        elif self.tool_calls is None:
            return default_reply(req)
        else:
            reply = Reply()
        if self.tool_calls:
            reply = Reply(reply.content, [*reply.tool_calls, *self.tool_calls], reply.finish_reason)
        return reply


def sample_json(schema: Mapping[str, Any], text: str, defs: Mapping[str, Any] | None = None) -> Any:
    """A deterministic value valid for a plain JSON schema; strings are ``text``."""
    defs = (
        defs if defs is not None else {**schema.get("definitions", {}), **schema.get("$defs", {})}
    )
    if "$ref" in schema:
        return sample_json(defs[schema["$ref"].rsplit("/", 1)[-1]], text, defs)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return sample_json(options[0], text, defs)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: sample_json(v, text, defs) for k, v in props.items()}
    if kind == "array":
        item = schema.get("items", {})
        return [sample_json(item, text, defs) for _ in range(schema.get("minItems", 1))]
    return {"string": text, "integer": 0, "number": 0.0, "boolean": False}.get(kind)


def default_reply(req: ChatRequest) -> Reply:
    """``"<model> answer <digest>"``; a tool call when one is forced; JSON when asked for."""
    text = f"{req.model} answer {req.digest}"
    tools = [t["function"] for t in req.body.get("tools") or [] if t.get("type") == "function"]
    choice = req.body.get("tool_choice")
    forced = None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        forced = next((t for t in tools if t["name"] == name), None)
    elif choice == "required" and tools:
        forced = tools[0]
    if forced is not None:
        args = sample_json(forced.get("parameters") or {"type": "object"}, text)
        return Reply(tool_calls=[{"name": forced["name"], "arguments": args}])
    fmt = req.body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return Reply(content=json.dumps(sample_json(fmt["json_schema"].get("schema", {}), text)))
    if fmt.get("type") == "json_object":
        return Reply(content=json.dumps({"model": req.model, "answer": text}))
    return Reply(content=text)


def finish_reply(req: ChatRequest, reply: Reply) -> tuple[str | None, list[dict[str, Any]], str]:
    """Apply ``stop`` and the token cap; give content, wire tool calls and finish reason."""
    content, reason = reply.content, reply.finish_reason
    stops = req.body.get("stop")
    for stop in [stops] if isinstance(stops, str) else stops or []:
        if content is not None and stop and stop in content:
            content = content[: content.index(stop)]
    cap = req.max_tokens
    if content is not None and cap is not None and count_tokens(content) > cap:
        words = list(re.finditer(r"\S+", content))
        content = content[: words[cap - 1].end()] if cap > 0 else ""
        reason = reason or "length"
    calls = [
        {
            "id": tc.get("id") or f"call_{req.digest}_{i}",
            "type": "function",
            "function": {
                "name": tc["name"],
                "arguments": a if isinstance(a := tc.get("arguments", {}), str) else json.dumps(a),
            },
        }
        for i, tc in enumerate(reply.tool_calls)
    ]
    return content, calls, reason or ("tool_calls" if calls else "stop")


def usage_of(req: ChatRequest, content: str | None, calls: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(count_tokens(_text(m.get("content"))) for m in req.messages)
    completion = count_tokens(content or "") + sum(
        count_tokens(c["function"]["arguments"]) for c in calls
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
