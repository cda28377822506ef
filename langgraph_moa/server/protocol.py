"""The thread-centric stream protocol of the current JS SDK (``client.threads.stream``,
``@langchain/protocol``), as langgraph-api serves it:

* ``POST /threads/{id}/commands`` takes one command ``{id, method, params}`` and answers
  ``{type: "success", id, result, meta}`` or ``{type: "error", id, error, message}``
  (HTTP 200 either way; 400 for a body that is not a command). ``run.start`` starts a run
  on the thread (creating the thread, or answering its pending interrupt);
  ``input.respond`` answers interrupts by id; ``subscription.*`` are accepted and
  forgotten (an HTTP subscription is the event stream itself); ``agent.getTree`` has no
  run bound to a stateless command (``no_such_run``), as in the reference.
* ``POST /threads/{id}/stream/events`` with ``{channels, namespaces?, depth?, since?}``
  answers an SSE stream of protocol events (``{type: "event", event_id, seq, method,
  params: {namespace, timestamp, data[, node]}}``) of every protocol run of the thread,
  oldest first, then of the runs started later, until the client disconnects.

Protocol runs are resumable runs (their events are in the event log), so every connection
replays the same events in the same order: ``seq`` (per connection) and ``event_id`` (per
event, stable across connections; the SDK deduplicates on it) agree between connections.
The events are made from the run's LangGraph stream modes (``values``, ``updates``,
``messages``, ``custom``, ``tasks``, ``checkpoints``), a ``lifecycle`` event when a run
starts and ends, and ``input.requested`` for each interrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from langgraph_moa.persistence.registry import RunRecord, ThreadRecord
from langgraph_moa.runtime.api import MoA
from langgraph_moa.server import serde
from langgraph_moa.server.core import ACTIVE, ApiError
from langgraph_moa.server.events import StreamEvent
from langgraph_moa.server.runs import RunService
from langgraph_moa.server.schemas import RunCreate

__all__ = [
    "CHANNELS",
    "RUN_STREAM_MODES",
    "CommandAnswer",
    "CommandError",
    "EventFilter",
    "EventStreamRequest",
    "ProtocolCommand",
    "ProtocolService",
    "RunTranslator",
]

CHANNELS = frozenset(
    {
        "values",
        "updates",
        "checkpoints",
        "messages",
        "tools",
        "custom",
        "lifecycle",
        "input",
        "tasks",
    }
)
"""The protocol's channels (plus ``custom:<name>``)."""
RUN_STREAM_MODES = ["values", "updates", "messages-tuple", "custom", "tasks", "checkpoints"]
"""The stream modes of a protocol run, from which its events are made."""
COMMANDS = frozenset(
    {
        "run.start",
        "input.respond",
        "agent.getTree",
        "subscription.subscribe",
        "subscription.unsubscribe",
        "subscription.reconnect",
    }
)
"""The commands the reference serves over HTTP; any other is ``unknown_command``."""
RESPOND_SETTLE = 30.0
"""Seconds ``input.respond`` waits for a thread's active runs before an interrupt id it
does not find is unknown (a pausing run writes its interrupt a moment after it streams it)."""

NEXT_RUN_POLL = 0.25
"""Seconds between looks for a newer run of a followed thread."""

RUN_CLOCK_SLACK = timedelta(seconds=30)
"""How far back a thread's follower looks, before the newest run it has seen, for runs it
has not seen: a run's ``created_at`` is the clock of the replica that made it, which may
be behind the one that made the previous run."""

RUNS_PAGE = 100
"""Runs read per query by a thread's follower."""


class ProtocolCommand(BaseModel):
    """A ``/commands`` body (documentation: the route reads the body leniently and answers
    a malformed one with a protocol error, as the reference does)."""

    id: int
    method: str = Field(examples=["run.start", "input.respond"])
    params: dict[str, Any] = Field(default_factory=dict)


class CommandAnswer(BaseModel):
    """A ``/commands`` answer: ``success`` with ``result`` and ``meta``, or ``error`` with
    ``error`` (a protocol error code) and ``message``."""

    type: str = Field(examples=["success", "error"])
    id: int | None
    result: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    error: str | None = None
    message: str | None = None


class EventStreamRequest(BaseModel):
    """A ``/stream/events`` body: the channels, namespace prefixes and depth of the events
    wanted, and ``since`` (the last ``seq`` seen, to resume)."""

    channels: list[str] = Field(examples=[["lifecycle", "input", "values", "messages"]])
    namespaces: list[list[str]] | None = None
    depth: int | None = None
    since: int | None = None


class CommandError(Exception):
    """A command the protocol answers with ``{type: "error", error: code}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _channel_ok(name: object) -> bool:
    return isinstance(name, str) and (
        name in CHANNELS or (name.startswith("custom:") and len(name) > len("custom:"))
    )


@dataclass(frozen=True)
class EventFilter:
    """An event stream's filter: channels, namespace prefixes and depth below them,
    and ``since`` (the last ``seq`` a reconnecting client saw)."""

    channels: frozenset[str]
    namespaces: tuple[tuple[str, ...], ...] | None = None
    depth: int | None = None
    since: int | None = None

    @classmethod
    def parse(cls, body: Any) -> EventFilter:
        """The filter of a ``/stream/events`` body; 400 naming the bad field, as the
        reference answers."""
        if not isinstance(body, dict):
            raise ApiError(400, "body: a JSON object with `channels` is required")
        channels = body.get("channels")
        if not isinstance(channels, list) or not channels:
            raise ApiError(400, "channels is required and must be a non-empty array")
        bad = [c if isinstance(c, str) else repr(c) for c in channels if not _channel_ok(c)]
        if bad:
            raise ApiError(
                400,
                f"channels contains unsupported entries: {', '.join(bad[:5])}. Allowed: "
                f"{', '.join(sorted(CHANNELS))}, or any `custom:<name>`.",
            )
        raw_ns = body.get("namespaces")
        namespaces = None
        if isinstance(raw_ns, list):
            kept = tuple(
                tuple(ns)
                for ns in raw_ns
                if isinstance(ns, list) and all(isinstance(s, str) for s in ns)
            )
            namespaces = kept or None
        depth = body.get("depth")
        since = body.get("since")
        return cls(
            channels=frozenset(channels),
            namespaces=namespaces,
            depth=depth if _count(depth) else None,
            since=since if _count(since) else None,
        )

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` is for this stream (as the reference matches)."""
        method = str(event.get("method", ""))
        channel = "input" if method == "input.requested" else method
        params = event.get("params") or {}
        if channel == "custom":
            data = params.get("data")
            name = data.get("name") if isinstance(data, dict) else None
            if "custom" not in self.channels and f"custom:{name}" not in self.channels:
                return False
        elif channel not in self.channels:
            return False
        if not self.namespaces:
            return True
        ns = list(params.get("namespace") or [])
        return any(
            _prefix(ns, list(prefix))
            and (self.depth is None or len(ns) - len(prefix) <= self.depth)
            for prefix in self.namespaces
        )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _prefix(namespace: list[str], prefix: list[str]) -> bool:
    if len(prefix) > len(namespace):
        return False
    for want, have in zip(prefix, namespace, strict=False):
        if want != have and (":" in want or have.split(":")[0] != want):
            return False
    return True


@dataclass
class _Message:
    """A model's message being streamed: its text so far, and whether it began its block."""

    text: str = ""
    block: bool = False
    finished: bool = False
    usage: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunTranslator:
    """Makes the protocol events (without ``seq``) of one run from its logged stream
    events. ``event_id`` is ``<run_id>:<log id>[.<n>]``, or ``synth:<run_id>:...`` for
    events that have no log row of their own, so it is the same on every connection."""

    run_id: str
    graph_name: str
    interrupts: dict[str, list[str]] = field(default_factory=dict)
    terminal: bool = False
    _messages: dict[str, _Message] = field(default_factory=dict)
    """Model messages by id."""
    _ids: dict[str, int] = field(default_factory=dict)

    def _event(
        self,
        method: str,
        data: Any,
        event_id: str,
        *,
        node: str | None = None,
        namespace: list[str] | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "namespace": namespace or [],
            "timestamp": int(time.time() * 1000),
            "data": data,
        }
        if node is not None:
            params["node"] = node
        return {"type": "event", "event_id": event_id, "method": method, "params": params}

    def _id(self, base: str) -> str:
        n = self._ids.get(base, 0)
        self._ids[base] = n + 1
        return base if n == 0 else f"{base}.{n}"

    def started(self) -> list[dict[str, Any]]:
        """The root ``lifecycle: running`` event."""
        data = {"event": "running", "graph_name": self.graph_name}
        return [self._event("lifecycle", data, f"synth:{self.run_id}:lc||running")]

    def translate(self, item: StreamEvent) -> list[dict[str, Any]]:
        """The protocol events of one logged stream event."""
        if item.event in ("metadata", "end"):
            return []
        base = f"{self.run_id}:{item.seq}"
        data = serde.loads(item.data)
        if item.event == "error":
            self.terminal = True
            message = data.get("message") if isinstance(data, dict) else str(data)
            out = self._finish_messages(base)
            lifecycle = {"event": "failed", "graph_name": self.graph_name, "error": message}
            return [*out, self._event("lifecycle", lifecycle, self._id(base))]
        if item.event == "values" and isinstance(data, dict):
            out = self._interrupted(base, data.get("__interrupt__"))
            values = {k: v for k, v in data.items() if k != "__interrupt__"}
            if values:
                out.insert(0, self._event("values", values, self._id(base)))
            return out
        if item.event == "updates" and isinstance(data, dict):
            return self._updates(base, data)
        if item.event == "messages" and isinstance(data, list) and data:
            return self._message(base, data[0], data[1] if len(data) > 1 else {})
        if item.event == "custom":
            return [self._event("custom", {"payload": data}, self._id(base))]
        if item.event == "tasks":
            return [self._event("tasks", data, self._id(base))]
        if item.event == "checkpoints" and isinstance(data, dict):
            return [self._event("checkpoints", _checkpoint(data), self._id(base))]
        return []

    def ended(self, status: str, error: str | None) -> list[dict[str, Any]]:
        """The root's terminal ``lifecycle`` event for a run that ended with ``status``
        (unless an interrupt or an error already said it)."""
        out = self._finish_messages(f"synth:{self.run_id}:end")
        if self.terminal:
            return out
        self.terminal = True
        event = {"success": "completed", "error": "failed"}.get(status, "interrupted")
        data: dict[str, Any] = {"event": event, "graph_name": self.graph_name}
        if error:
            data["error"] = error
        return [*out, self._event("lifecycle", data, f"synth:{self.run_id}:lc||{event}")]

    def _interrupted(self, base: str, interrupts: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in interrupts if isinstance(interrupts, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            if item["id"] in self.interrupts:
                continue
            self.interrupts[item["id"]] = []
            request = {"interrupt_id": item["id"], "payload": item.get("value")}
            event_id = f"synth:{self.run_id}:input||{item['id']}"
            out.append(self._event("input.requested", request, event_id))
        if out and not self.terminal:
            self.terminal = True
            data = {"event": "interrupted", "graph_name": self.graph_name}
            out.append(self._event("lifecycle", data, f"synth:{self.run_id}:lc||interrupted"))
        return out

    def _updates(self, base: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if "__interrupt__" in data:
            return self._interrupted(base, data["__interrupt__"])
        out: list[dict[str, Any]] = []
        for node, values in data.items():
            payload = values if isinstance(values, dict) else {"value": values}
            out.append(self._event("updates", payload, self._id(base), node=node))
        return out

    def _message(self, base: str, message: Any, meta: Any) -> list[dict[str, Any]]:
        """Content-block events of a model's message, as LangGraph's v2 messages
        handler makes them: ``message-start``, ``content-block-start`` with the first
        text, ``content-block-delta`` per chunk, ``content-block-finish`` and
        ``message-finish`` (with usage) at the last chunk. Messages a node writes to the
        state (not a model's output) are not on this channel, as in the reference."""
        provider = meta.get("ls_provider") if isinstance(meta, dict) else None
        if not isinstance(message, dict) or not provider:
            return []
        key = str(message.get("id") or base)
        chunk = str(message.get("type") or "").endswith("Chunk")
        content = message.get("content")
        text = content if isinstance(content, str) else _text_of(content)
        out: list[dict[str, Any]] = []
        state = self._messages.get(key)
        if state is None or state.finished:
            state = self._messages[key] = _Message()
            start = {
                "event": "message-start",
                "role": "ai",
                "id": key,
                "metadata": {"provider": provider},
            }
            out.append(self._event("messages", start, self._id(base)))
        delta = text if chunk else text[len(state.text) :]
        if delta and not state.block:
            state.block = True
            block = {
                "event": "content-block-start",
                "index": 0,
                "content": {"type": "text", "text": ""},
            }
            out.append(self._event("messages", block, self._id(base)))
        if delta:
            state.text += delta
            body = {
                "event": "content-block-delta",
                "index": 0,
                "delta": {"type": "text-delta", "text": delta},
            }
            out.append(self._event("messages", body, self._id(base)))
        usage = message.get("usage_metadata")
        if isinstance(usage, dict):
            state.usage = {
                k: usage[k] for k in ("input_tokens", "output_tokens", "total_tokens") if k in usage
            }
        response = message.get("response_metadata") or {}
        for name in ("model_provider", "finish_reason", "model_name"):
            if response.get(name) is not None:
                state.metadata[name] = response[name]
        if not chunk or message.get("chunk_position") == "last":
            out += self._finish(base, state)
        return out

    def _finish(self, base: str, state: _Message) -> list[dict[str, Any]]:
        state.finished = True
        out = []
        if state.block:
            content = {"type": "text", "text": state.text}
            block = {"event": "content-block-finish", "index": 0, "content": content}
            out.append(self._event("messages", block, self._id(base)))
        finish: dict[str, Any] = {"event": "message-finish", "metadata": state.metadata}
        if state.usage is not None:
            finish["usage"] = state.usage
        out.append(self._event("messages", finish, self._id(base)))
        return out

    def _finish_messages(self, base: str) -> list[dict[str, Any]]:
        """Finish the messages still streaming (a run that ended or failed mid-message)."""
        out: list[dict[str, Any]] = []
        for state in self._messages.values():
            if not state.finished:
                out += self._finish(base, state)
        return out


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(
            part if isinstance(part, str) else str(part.get("text", ""))
            for part in content
            if isinstance(part, str) or (isinstance(part, dict) and part.get("type") == "text")
        )
    return "" if content is None else str(content)


def _checkpoint(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A ``checkpoints`` stream chunk as the protocol's checkpoint envelope."""
    current = serde.checkpoint_of(payload.get("config")) or {}
    parent = serde.checkpoint_of(payload.get("parent_config")) or {}
    metadata = payload.get("metadata") or {}
    out: dict[str, Any] = {
        "id": current.get("checkpoint_id"),
        "step": metadata.get("step", 0),
        "source": metadata.get("source", "loop"),
    }
    if parent.get("checkpoint_id"):
        out["parent_id"] = parent["checkpoint_id"]
    return out


class ProtocolService(RunService):
    """The commands and the event streams of the protocol, for a tenant's threads. (Its
    methods are all named ``protocol_*``/``_protocol_*``: MoAServer mixes several
    services into one class, where a shared name would silently win over another.)"""

    async def protocol_command(
        self, tenant: str | None, thread_id: str, command: Any
    ) -> tuple[int, dict[str, Any]]:
        """The status and answer of one ``/commands`` request. A ``run.start`` on another
        tenant's thread is a 404 (:class:`ApiError`), as on every path; other refusals
        are in-band errors, the same for another tenant's thread as for a missing one."""
        if (
            not isinstance(command, dict)
            or isinstance(command.get("id"), bool)
            or not isinstance(command.get("id"), int)
            or not isinstance(command.get("method"), str)
        ):
            cid = command.get("id") if isinstance(command, dict) else None
            return 400, _error(
                cid,
                "invalid_argument",
                "Protocol commands must include an integer id and string method.",
            )
        cid, method = command["id"], command["method"]
        raw = command.get("params")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        try:
            if method not in COMMANDS:
                raise CommandError("unknown_command", f"Unknown protocol command: {method}")
            if method == "run.start":
                result = await self._protocol_start(tenant, thread_id, params)
            elif method == "input.respond":
                result = await self._protocol_respond(tenant, thread_id, params)
            elif method == "subscription.subscribe":
                result = _subscribe(params)
            elif method == "subscription.unsubscribe":
                raise CommandError(
                    "no_such_subscription", f"Unknown subscription: {params.get('subscription_id')}"
                )
            else:
                raise CommandError("no_such_run", "No active run is bound to this thread.")
        except CommandError as exc:
            return 200, _error(cid, exc.code, exc.message)
        except ApiError as exc:
            if exc.status == 404:  # e.g. run.start on another tenant's thread: as everywhere
                raise
            return 200, _error(cid, "invalid_argument", exc.detail)
        return 200, {
            "type": "success",
            "id": cid,
            "result": result,
            "meta": {"applied_through_seq": 0},
        }

    async def _protocol_start(
        self, tenant: str | None, thread_id: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        assistant_id = params.get("assistant_id")
        if not isinstance(assistant_id, str) or not assistant_id:
            raise CommandError("invalid_argument", "run.start requires an assistant_id.")
        raw_config = params.get("config")
        config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
        configurable = dict(config.get("configurable") or {})
        checkpoint_id = configurable.pop("checkpoint_id", None)
        pending = await self._protocol_interrupts(tenant, thread_id)
        value = params.get("input")
        body: dict[str, Any] = {
            "assistant_id": assistant_id,
            "metadata": params.get("metadata"),
            "config": {**config, "configurable": configurable} if config else None,
            "stream_mode": RUN_STREAM_MODES,
            "stream_resumable": True,
            "if_not_exists": "create",
            "checkpoint_id": checkpoint_id,
        }
        strategy = params.get("multitask_strategy") or params.get("multitaskStrategy")
        if strategy in ("reject", "interrupt", "enqueue"):
            body["multitask_strategy"] = strategy
        if pending and value is not None:
            body["command"] = {"resume": value}
        else:
            body["input"] = value
        run = await self._protocol_run(tenant, thread_id, body)
        return {"run_id": run.run_id}

    async def _protocol_respond(
        self, tenant: str | None, thread_id: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        entries = params.get("responses")
        if not isinstance(entries, list):
            entries = [params]
        if not entries:
            raise CommandError("invalid_argument", "input.respond requires at least one response.")
        answers: dict[str, Any] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("interrupt_id"), str):
                raise CommandError("invalid_argument", "input.respond requires an interrupt_id.")
            namespace = entry.get("namespace", [])
            if not isinstance(namespace, list) or not all(isinstance(s, str) for s in namespace):
                raise CommandError(
                    "invalid_argument", "input.respond requires namespace to be a list of strings."
                )
            answers[entry["interrupt_id"]] = entry.get("response")
        record = await self.thread(tenant, thread_id)  # another tenant's thread: 404
        pending = await self._protocol_interrupts(tenant, thread_id)
        if not answers.keys() <= pending:
            # the stream says "interrupted" as the run pauses, a moment before the run has
            # written the checkpoint that holds the interrupt: let the thread's runs end
            # (a bounded wait: an unknown id must not hold the request for a whole run)
            active = await self.registry.list_runs(
                thread_id=thread_id, status=list(ACTIVE), limit=100
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(self.wait_run(run.run_id) for run in active)),
                    RESPOND_SETTLE,
                )
            pending = await self._protocol_interrupts(tenant, thread_id)
        for interrupt_id in answers:
            if interrupt_id not in pending:
                raise CommandError(
                    "no_such_interrupt", f"Unknown or already-consumed interrupt: {interrupt_id}"
                )
        assistant_id = record.metadata.get("assistant_id") or record.spec_name
        if not isinstance(assistant_id, str):
            raise CommandError("no_such_run", "No interrupted run is bound to this thread.")
        command: dict[str, Any] = {"resume": answers}
        for key in ("update", "goto"):
            if params.get(key) is not None:
                command[key] = params[key]
        body = {
            "assistant_id": assistant_id,
            "command": command,
            "metadata": params.get("metadata"),
            "config": params.get("config"),
            "stream_mode": RUN_STREAM_MODES,
            "stream_resumable": True,
        }
        await self._protocol_run(tenant, thread_id, body)
        return {}

    async def _protocol_run(
        self, tenant: str | None, thread_id: str, body: dict[str, Any]
    ) -> RunRecord:
        try:
            request = RunCreate.model_validate({k: v for k, v in body.items() if v is not None})
        except ValueError as exc:
            raise CommandError("invalid_argument", str(exc).split("\n", 1)[-1].strip()) from None
        run, _ = await self.create_run(tenant, thread_id, request, subscribe=False, protocol=True)
        return run

    async def _protocol_interrupts(self, tenant: str | None, thread_id: str) -> set[str]:
        try:
            record = await self.thread(tenant, thread_id)
        except ApiError:
            return set()
        snapshot = await self._graph_of(record).aget_state(MoA.config(thread_id))
        return {i.id for i in snapshot.interrupts}

    async def protocol_events(
        self, tenant: str | None, thread_id: str, wanted: EventFilter
    ) -> AsyncIterator[dict[str, Any]]:
        """The thread's protocol events for ``wanted``, with ``seq``: those of its protocol
        runs so far, then of the runs that follow, until the caller stops iterating or the
        thread is deleted (also when a thread is created again under its id)."""
        record = await self.thread(tenant, thread_id)  # 404 before the stream starts
        return self._protocol_thread(record, wanted)

    async def _protocol_thread(
        self, record: ThreadRecord, wanted: EventFilter
    ) -> AsyncIterator[dict[str, Any]]:
        seq = 0
        seen: dict[str, datetime] = {}  # runs created within RUN_CLOCK_SLACK of the newest
        newest: datetime | None = None
        while True:
            todo = await self._protocol_new_runs(record.thread_id, seen, newest)
            if await self.thread_now(record) != "same":
                return  # the thread was deleted (its runs were, with it)
            if not todo:
                await asyncio.sleep(NEXT_RUN_POLL)
                continue
            for run in todo:
                newest = max(newest or run.created_at, run.created_at)
                if not run.options.get("protocol"):
                    continue
                async for event in self._protocol_run_events(run):
                    seq += 1
                    if wanted.matches(event) and (wanted.since is None or seq > wanted.since):
                        yield {**event, "seq": seq}

    async def _protocol_new_runs(
        self, thread_id: str, seen: dict[str, datetime], newest: datetime | None
    ) -> list[RunRecord]:
        """The thread's runs not in ``seen`` (which they are added to), oldest first: the
        runs created after ``newest`` less :data:`RUN_CLOCK_SLACK`, read page by page (a
        thread's older runs are not read again); ``seen`` keeps only that window."""
        after = None if newest is None else (newest - RUN_CLOCK_SLACK, "")
        found: list[RunRecord] = []
        while True:
            page = await self.registry.thread_runs_after(thread_id, after, limit=RUNS_PAGE)
            for run in page:
                if run.run_id not in seen:
                    seen[run.run_id] = run.created_at
                    found.append(run)
            if len(page) < RUNS_PAGE:
                break
            after = (page[-1].created_at, page[-1].run_id)
        latest = max([r.created_at for r in found] + ([newest] if newest else []), default=None)
        if latest is not None:
            for run_id, created in list(seen.items()):
                if created < latest - RUN_CLOCK_SLACK:
                    del seen[run_id]
        return found

    async def _protocol_run_events(self, run: RunRecord) -> AsyncIterator[dict[str, Any]]:
        translator = RunTranslator(run.run_id, str(run.options.get("graph_id") or "root"))
        for event in translator.started():
            yield event
        source = self.streams.subscribe(
            run.run_id, last_event_id=0, is_active=lambda: self._protocol_run_active(run.run_id)
        )
        try:
            async for item in source:
                for event in translator.translate(item):
                    yield event
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
        ended = await self.registry.get_run(run.run_id) or run
        while ended.status in ACTIVE:  # the stream closed a moment before the record
            await asyncio.sleep(NEXT_RUN_POLL)
            ended = await self.registry.get_run(run.run_id) or ended
        for event in translator.ended(ended.status, ended.error):
            yield event

    async def _protocol_run_active(self, run_id: str) -> bool:
        run = await self.registry.get_run(run_id)
        return run is not None and run.status in ACTIVE


def _subscribe(params: dict[str, Any]) -> dict[str, Any]:
    channels = params.get("channels")
    if not isinstance(channels, list) or not channels:
        raise CommandError(
            "invalid_argument", "subscription.subscribe requires a non-empty channels array."
        )
    if not all(_channel_ok(c) for c in channels):
        raise CommandError(
            "invalid_argument", "subscription.subscribe received an unsupported channel."
        )
    return {"subscription_id": str(uuid.uuid4()), "replayed_events": 0}


def _error(cid: Any, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": cid, "error": code, "message": message}
