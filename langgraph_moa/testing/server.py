"""The scripted OpenAI-compatible chat-completions server (see the package docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import string
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = [
    "FAILURES",
    "TEMPLATE_FIELDS",
    "ChatRequest",
    "ModelServer",
    "ModelServerClient",
    "Reply",
    "Rule",
    "count_tokens",
    "sample_json",
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
    Answer (at most one of ``reply``/``template``/``json``, plus optional ``tool_calls``):
    ``reply`` fixed text, a :class:`Reply` or a callable taking the :class:`ChatRequest`;
    ``template`` a ``str.format`` string over :data:`TEMPLATE_FIELDS`; ``json`` a value sent
    as JSON content. ``delay`` seconds before answering (overrides the model latency).
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
        answers = [k for k in ("reply", "template", "json") if getattr(self, k) is not None]
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


def _finish(req: ChatRequest, reply: Reply) -> tuple[str | None, list[dict[str, Any]], str]:
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


def _usage(req: ChatRequest, content: str | None, calls: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(count_tokens(_text(m.get("content"))) for m in req.messages)
    completion = count_tokens(content or "") + sum(
        count_tokens(c["function"]["arguments"]) for c in calls
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog; the default 5 resets bursts of connections

    def __init__(self, address: tuple[str, int], owner: ModelServer) -> None:
        self.owner = owner
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut the connections still open (idle keep-alive ones), ending their threads."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that drop their connection; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError) or self.owner.log:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY: no 40 ms delayed-ACK stall per reply
    server: _HTTPServer
    _req: ChatRequest | None = None

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.log:
            super().log_message(format, *args)

    # -- plumbing -------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self._record(status)
        self.wfile.write(body)

    def _record(self, status: int) -> None:
        """Close the current call's record before its last bytes go out (clients may look)."""
        if self._req is not None:
            self.server.owner._end(self._req, status)

    def _json(self, status: int, obj: Any, headers: Mapping[str, str] = {}) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: Mapping[str, str] = {}) -> None:
        kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}
        err = {"message": message, "type": kind.get(status, "server_error"), "param": None}
        self._json(status, {"error": err | {"code": None}}, headers)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw.strip() else None

    # -- routes ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        owner, path = self.server.owner, urlsplit(self.path).path.rstrip("/")
        if path == "/v1/models":
            models = sorted(owner.stats()["calls"]) or ["test-model"]
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in models]
            self._json(200, {"object": "list", "data": data})
        elif path == "/_test/calls":
            self._json(200, owner.stats())
        elif path == "/_test/requests":
            self._json(200, [r.to_dict() for r in owner.requests])
        else:
            self._error(404, f"no route GET {path}; see langgraph_moa.testing")

    def do_POST(self) -> None:
        owner, path = self.server.owner, urlsplit(self.path).path.rstrip("/")
        try:
            body = self._body()
        except ValueError as exc:
            self._error(400, f"request body is not JSON: {exc}")
            return
        try:
            if path == "/v1/chat/completions":
                self._chat(body)
                return
            if path == "/_test/rules":
                owner.configure(body, where="POST /_test/rules")
            elif path == "/_test/reset":
                owner.reset()
            elif path == "/_test/reset_counts":
                owner.reset_counts()
            else:
                self._error(404, f"no route POST {path}; see langgraph_moa.testing")
                return
        except ValueError as exc:
            self._error(400, str(exc))
            return
        self._json(200, {"ok": True, "rules": owner.rule_count()})

    # -- chat completions -----------------------------------------------------------------
    def _chat(self, body: Any) -> None:
        owner = self.server.owner
        req, rule = owner._begin(body)  # raises ValueError on a bad request
        self._req = req
        try:
            self._answer(req, rule)
        except (ConnectionError, TimeoutError) as exc:
            req.failure = req.failure or f"client went away: {exc!r}"
            self.close_connection = True
        finally:
            self._req = None
            owner._end(req, None)

    def _answer(self, req: ChatRequest, rule: Rule | None) -> None:
        owner = self.server.owner
        delay = rule.delay if rule is not None and rule.delay is not None else None
        delay = owner.latency_for(req.model) if delay is None else delay
        if delay > 0:
            owner._stopping.wait(delay)
        fail = rule.fail if rule is not None else None
        if isinstance(fail, int):
            req.failure = str(fail)
            headers = {}
            if rule is not None and rule.retry_after is not None:
                headers["Retry-After"] = f"{rule.retry_after:g}"
            self._error(fail, f"scripted failure {fail} (rule #{req.rule})", headers)
            return
        if fail == "stall":
            req.failure = "stall"
            owner._stopping.wait(rule.stall if rule is not None else 0)
            self.close_connection = True
            return
        try:
            reply = rule.answer(req) if rule is not None else default_reply(req)
            content, calls, reason = _finish(req, reply)
        except Exception as exc:
            req.failure = f"reply error: {exc!r}"
            self._error(500, f"rule #{req.rule} raised {exc!r}")
            return
        req.usage = _usage(req, content, calls)
        base = {
            "id": f"chatcmpl-{req.digest}{req.call}",
            "created": int(req.started),
            "model": req.model,
            "system_fingerprint": None,
        }
        if req.stream:
            self._stream(req, base, content, calls, reason, fail)
            return
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
        data = json.dumps(
            base | {"object": "chat.completion", "choices": [choice], "usage": req.usage}
        ).encode()
        if fail == "bad_json":
            req.failure = "bad_json"
            self._send(200, data[: len(data) // 2], "application/json")
        elif fail == "truncated":
            req.failure = "truncated"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self._record(200)
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        else:
            self._send(200, data, "application/json")

    def _stream(
        self,
        req: ChatRequest,
        base: dict[str, Any],
        content: str | None,
        calls: list[dict[str, Any]],
        reason: str,
        fail: str | None,
    ) -> None:
        """Send the reply as OpenAI SSE chunks over chunked transfer encoding."""
        opts = req.body.get("stream_options") or {}
        with_usage = bool(opts.get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            extra = {"usage": None} if with_usage else {}
            return base | {"object": "chat.completion.chunk", "choices": [choice]} | extra

        first: dict[str, Any] = {"role": "assistant", "content": "" if not calls else content}
        first["refusal"] = None
        chunks = [chunk(first)]
        chunks += [chunk({"content": piece}) for piece in re.findall(r"\S+\s*|\s+", content or "")]
        for i, call in enumerate(calls):
            fn = call["function"]
            head = {"index": i, "id": call["id"], "type": "function"}
            chunks.append(
                chunk({"tool_calls": [head | {"function": {"name": fn["name"], "arguments": ""}}]})
            )
            chunks.append(
                chunk({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
            )
        chunks.append(chunk({}, reason))
        if with_usage:
            chunks.append(
                base | {"object": "chat.completion.chunk", "choices": [], "usage": req.usage}
            )
        events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
        events.append(b"data: [DONE]\n\n")
        if fail == "bad_json":
            req.failure = "bad_json"
            events.insert(1, b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
        elif fail == "truncated":
            req.failure = "truncated"
            events = [*events[: len(events) // 2], events[len(events) // 2][:20]]

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, event in enumerate(events):
            if i == len(events) - 1:
                self._record(200)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if fail == "truncated":
            self.close_connection = True  # no terminating chunk: the client sees a cut stream
        else:
            self.wfile.write(b"0\r\n\r\n")


class ModelServer:
    """A scripted OpenAI-compatible server on 127.0.0.1, run in a background thread.

    Args:
        rules: initial rules (:class:`Rule` or script-file mappings), tried in order.
        port: 0 for an ephemeral port.
        latency: default seconds before each answer; ``model_latency`` per model name.
        script: a JSON/YAML script file to load (see :meth:`configure`).
        log: print one access-log line per request to stderr.
    """

    def __init__(
        self,
        rules: Iterable[Rule | Mapping[str, Any]] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        model_latency: Mapping[str, float] | None = None,
        script: str | Path | None = None,
        log: bool = False,
    ) -> None:
        self.host, self.port, self.log = host, port, log
        self.latency = latency
        self.model_latency: dict[str, float] = dict(model_latency or {})
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._rules: list[Rule] = []
        self._hits: list[int] = []
        self._requests: list[ChatRequest] = []
        self._calls: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._peak_total = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        if script is not None:
            self.load_script(script)
        for rule in rules:
            self.add_rule(rule)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> ModelServer:
        """Bind and serve in a daemon thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("ModelServer is already running")
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"ModelServer:{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; delayed and stalled requests are released at once."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        with self._idle:  # let released calls record their end (bounded)
            self._idle.wait_for(lambda: not +self._in_flight, timeout=5)
        self._httpd.close_connections()
        self._httpd = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` (the root, where ``/_test/...`` lives)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://host:port/v1``."""
        return f"{self.url}/v1"

    # -- scripting ------------------------------------------------------------------------
    def add_rule(self, rule: Rule | Mapping[str, Any] | None = None, /, **kwargs: Any) -> Rule:
        """Append a rule (a :class:`Rule`, a mapping, or :class:`Rule` keyword arguments)."""
        if rule is None:
            rule = Rule(**kwargs)
        elif kwargs:
            raise TypeError("give either a rule or keyword arguments, not both")
        elif not isinstance(rule, Rule):
            rule = Rule.from_dict(rule, where=f"rules[{self.rule_count()}]")
        with self._lock:
            self._rules.append(rule)
            self._hits.append(0)
        return rule

    def configure(self, data: Any, where: str = "script") -> None:
        """Apply a script: a list of rules, or a mapping with ``rules`` (list), ``latency``,
        ``model_latency`` (name -> seconds) and ``replace`` (drop the current rules first)."""
        if isinstance(data, list):
            data = {"rules": data}
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a list of rules or a mapping, got {data!r}")
        unknown = sorted(set(data) - {"rules", "latency", "model_latency", "replace"})
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {unknown}; use rules, latency, model_latency, replace"
            )
        raw_rules = data.get("rules") or []
        if not isinstance(raw_rules, list):
            raise ValueError(f"{where}: 'rules' must be a list of rule mappings")
        rules = [Rule.from_dict(r, where=f"{where}: rules[{i}]") for i, r in enumerate(raw_rules)]
        try:
            latency = float(data.get("latency", self.latency))
            model_latency = {str(k): float(v) for k, v in (data.get("model_latency") or {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: latency values must be numbers of seconds: {exc}") from None
        with self._lock:
            if data.get("replace"):
                self._rules, self._hits = [], []
            self.latency = latency
            self.model_latency.update(model_latency)
            self._rules += rules
            self._hits += [0] * len(rules)

    def load_script(self, path: str | Path) -> None:
        """Load a ``.json`` or ``.yaml``/``.yml`` script file (format: :meth:`configure`)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read script file {path}: {exc}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"script file {path} is not valid JSON/YAML: {exc}") from None
        self.configure(data, where=str(path))

    def set_latency(self, model: str | None, seconds: float) -> None:
        """Set the default latency of ``model`` (None: of every model)."""
        with self._lock:
            if model is None:
                self.latency = seconds
            else:
                self.model_latency[model] = seconds

    def latency_for(self, model: str) -> float:
        return self.model_latency.get(model, self.latency)

    def rule_count(self) -> int:
        with self._lock:
            return len(self._rules)

    def reset(self) -> None:
        """Drop all rules and per-model latencies, and reset the counts."""
        with self._lock:
            self._rules, self._hits = [], []
            self.model_latency.clear()
        self.reset_counts()

    def reset_counts(self) -> None:
        """Forget recorded requests, call counts and peaks (in-flight calls stay counted)."""
        with self._lock:
            self._requests.clear()
            self._calls.clear()
            self._peak = Counter(self._in_flight)
            self._peak_total = sum(self._in_flight.values())

    # -- introspection --------------------------------------------------------------------
    def calls(self, model: str | None = None) -> int:
        """Chat-completion calls received (for ``model``, or in total), failures included."""
        with self._lock:
            return self._calls[model] if model is not None else sum(self._calls.values())

    @property
    def requests(self) -> list[ChatRequest]:
        """A snapshot of the recorded calls, oldest first."""
        with self._lock:
            return list(self._requests)

    def in_flight(self, model: str | None = None) -> int:
        """Calls being answered now (for ``model``, or in total)."""
        with self._lock:
            return self._in_flight[model] if model is not None else sum(self._in_flight.values())

    def max_in_flight(self, model: str | None = None) -> int:
        """Peak number of concurrent calls (for ``model``, or in total)."""
        with self._lock:
            return self._peak[model] if model is not None else self._peak_total

    def stats(self) -> dict[str, Any]:
        """Counts as served by ``GET /_test/calls``."""
        with self._lock:
            return {
                "total": sum(self._calls.values()),
                "calls": dict(self._calls),
                "in_flight": {k: v for k, v in self._in_flight.items() if v},
                "max_in_flight": dict(self._peak),
                "max_in_flight_total": self._peak_total,
                "usage": {  # of the calls answered in full
                    key: sum((r.usage or {}).get(key, 0) for r in self._requests if not r.failure)
                    for key in ("prompt_tokens", "completion_tokens", "total_tokens")
                },
            }

    def chat_model(self, model: str = "m", **kwargs: Any) -> ChatOpenAI:
        """A ``ChatOpenAI`` for this server (api_key "test", ``max_retries=0``, stream usage on)."""
        from langchain_openai import ChatOpenAI

        params: dict[str, Any] = {
            "model": model,
            "base_url": self.base_url,
            "api_key": "test",
            "max_retries": 0,
            "stream_usage": True,
        }
        return ChatOpenAI(**(params | kwargs))

    # -- used by the handler --------------------------------------------------------------
    def _begin(self, body: Any) -> tuple[ChatRequest, Rule | None]:
        if not isinstance(body, dict):
            raise ValueError("chat completions need a JSON object body")
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise ValueError("'model' is required (a non-empty string)")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("'messages' is required (a list of message objects)")
        with self._lock:
            self._calls[model] += 1
            req = ChatRequest(model=model, messages=messages, body=body, call=self._calls[model])
            self._requests.append(req)
            self._in_flight[model] += 1
            self._peak[model] = max(self._peak[model], self._in_flight[model])
            self._peak_total = max(self._peak_total, sum(self._in_flight.values()))
            for i, rule in enumerate(self._rules):
                if (rule.times is None or self._hits[i] < rule.times) and rule.matches(req):
                    self._hits[i] += 1
                    req.rule = i
                    return req, rule
        return req, None

    def _end(self, req: ChatRequest, status: int | None) -> None:
        with self._lock:
            if req.finished is not None:
                return
            req.finished, req.status = time.time(), status
            self._in_flight[req.model] -= 1
            self._idle.notify_all()


class ModelServerClient:
    """Reads and scripts a :class:`ModelServer` run by another process, over its HTTP API.

    ``url`` is the server's root or base URL (``http://127.0.0.1:PORT[/v1]``).
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        resp = httpx.request(method, self.url + path, json=body, timeout=self.timeout)
        if resp.status_code != 200:
            raise ValueError(f"{method} {path}: HTTP {resp.status_code}: {resp.text}")
        return resp.json()

    def stats(self) -> dict[str, Any]:
        """What :meth:`ModelServer.stats` gives, from ``GET /_test/calls``."""
        return dict(self._call("GET", "/_test/calls"))

    def calls(self, model: str | None = None) -> int:
        stats = self.stats()
        return int(stats["total"] if model is None else stats["calls"].get(model, 0))

    def max_in_flight(self, model: str | None = None) -> int:
        stats = self.stats()
        peaks = stats["max_in_flight"]
        return int(stats["max_in_flight_total"] if model is None else peaks.get(model, 0))

    def requests(self) -> list[dict[str, Any]]:
        """The recorded calls as :meth:`ChatRequest.to_dict` summaries."""
        return list(self._call("GET", "/_test/requests"))

    def configure(self, script: Any) -> int:
        """Send a script (rules list or mapping, see :meth:`ModelServer.configure`)."""
        return int(self._call("POST", "/_test/rules", script)["rules"])

    def reset(self) -> None:
        self._call("POST", "/_test/reset")

    def reset_counts(self) -> None:
        self._call("POST", "/_test/reset_counts")
