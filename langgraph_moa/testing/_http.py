"""The scripted server's HTTP side: a threading HTTP server that tracks its connections, and
the handler of the OpenAI routes and the ``/_test`` control routes.

The handler asks its :class:`~langgraph_moa.testing.server.ModelServer` (the ``owner``) which
rule answers a call and records the call there; it builds the wire format itself.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from langgraph_moa.testing.rules import ChatRequest, Rule, default_reply, finish_reply, usage_of

if TYPE_CHECKING:
    from langgraph_moa.testing.server import ModelServer

__all__ = ["ChatHandler", "ScriptedHTTPServer"]


class ScriptedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog; the default 5 resets bursts of connections

    def __init__(self, address: tuple[str, int], owner: ModelServer) -> None:
        self.owner = owner
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, ChatHandler)

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


class ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY: no 40 ms delayed-ACK stall per reply
    server: ScriptedHTTPServer
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
            content, calls, reason = finish_reply(req, reply)
        except Exception as exc:
            req.failure = f"reply error: {exc!r}"
            self._error(500, f"rule #{req.rule} raised {exc!r}")
            return
        req.usage = usage_of(req, content, calls)
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
