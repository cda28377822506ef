"""The model calls of an evaluation: every call recorded in the call ledger of the eval
store (``moa_calls``), and with ``moa eval --reuse`` unchanged calls answered from a ledger.

A call is unchanged when its request is: the request hash (model, parameters with the
temperature and the call's seed, the canonical messages, tools, schema) and the server it
goes to (``params["endpoint"]``; the embedded model's GGUF file and thread count). Thread
and run ids play no part, so the calls of any earlier run of any spec can answer. Only calls
whose reply the request decides are answered so
(:attr:`~langgraph_moa.nodes._calls.CallRequest.deterministic`: temperature 0, or a seed the
model samples with; not the embedded model decoding in batches, ``MOA_LOCAL_PARALLEL`` > 1,
or on the threads its tuner picks, ``MOA_LOCAL_THREADS`` unset);
a sampled call without a seed always goes to the model, so N draws of
one prompt stay N draws. Within one evaluation, identical deterministic requests go out once:
the MoA closed by synthesize, vote and select asks its proposers the same seeded requests, and
a request made while an identical one is in flight waits for that one's reply.

Calls that go to the model are recorded (the eval's ``--db``), whether or not ``--reuse`` is
on, so the next ``--reuse`` finds them; calls answered from the ledger are not recorded again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from langgraph_moa.nodes._calls import CallRequest
from langgraph_moa.persistence.calls import CallLedger, CallRow

__all__ = ["EvalCalls", "ItemCalls"]

log = logging.getLogger(__name__)

Key = tuple[str, str | None]
"""(request hash, endpoint)."""


class EvalCalls:
    """The calls of one evaluation: written to ``writer``; with ``reuse``, answered from that
    ledger when unchanged (and from the calls this evaluation made)."""

    def __init__(
        self, writer: CallLedger | None, reuse: CallLedger | None = None, run_id: str = ""
    ) -> None:
        self.writer, self.reuse = writer, reuse
        self.run_id = run_id or f"eval-{uuid.uuid4().hex}"
        """The ``run_id`` of this evaluation's rows: ``moa calls RUN_ID`` lists them."""
        self._known: dict[Key, Mapping[str, Any]] = {}
        self._flying: dict[Key, asyncio.Future[Mapping[str, Any] | None]] = {}
        self._pending: set[asyncio.Future[None]] = set()
        self.live = 0
        """Calls that went to a model."""
        self.reused = 0
        """Calls answered from the ledger (or from an identical call of this evaluation)."""
        self.sampled = 0
        """Calls that went to a model with ``reuse`` on because their reply is not decided
        by the request (sampled without a seed, or by the embedded model in a batch)."""

    def for_item(self, thread_id: str) -> ItemCalls:
        """The call source of one (spec, item) run, on thread ``thread_id``."""
        return ItemCalls(self, thread_id)

    async def flush(self) -> None:
        """Wait until every call recorded so far is written."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _answer(self, request: CallRequest, thread: ItemCalls) -> Mapping[str, Any] | None:
        """The reply to answer ``request`` with, or None: the caller makes the call (and
        leads: identical requests wait for its reply, :meth:`_done`)."""
        key: Key = (request.hash, request.endpoint)
        while True:
            if key in self._known:
                return self._known[key]
            flying = self._flying.get(key)
            if flying is None:
                break
            reply = await asyncio.shield(flying)
            if reply is None:  # the call failed or was never made: make it too
                return None
        future: asyncio.Future[Mapping[str, Any] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._flying[key] = future
        thread.leading.add(key)
        assert self.reuse is not None
        try:
            row = await self.reuse.reusable(request.hash, request.endpoint)
        except Exception:  # an unreadable ledger costs a call, never the evaluation
            log.warning("cannot read the call ledger to reuse a call", exc_info=True)
            row = None
        except BaseException:  # cancelled while reading (a layer gate cut the agent):
            thread.leading.discard(key)  # no call follows, whoever waits makes it
            self._done(key, None)
            raise
        if row is None or row.response is None:
            return None
        self._done(key, row.response)
        thread.leading.discard(key)
        return row.response

    def _done(self, key: Key, reply: Mapping[str, Any] | None) -> None:
        """The call of ``key`` is over: keep its reply, wake who waits for it."""
        if reply is not None:
            self._known[key] = reply
        future = self._flying.pop(key, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _write(self, row: CallRow) -> None:
        if self.writer is None:
            return
        task = asyncio.ensure_future(self._insert(self.writer, row))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _insert(self, writer: CallLedger, row: CallRow) -> None:
        try:
            await writer.record(row)
        except Exception:  # a lost row costs a call of a later --reuse, never this run
            log.exception("could not record a model call of evaluation run %s", self.run_id)


class ItemCalls:
    """The call source (:class:`langgraph_moa.nodes._calls.CallSource`) of one run of an
    evaluation: counts its calls that went to a model and those answered from the ledger."""

    def __init__(self, calls: EvalCalls, thread_id: str) -> None:
        self.calls, self.thread_id = calls, thread_id
        self.live = 0
        self.reused = 0
        self.leading: set[Key] = set()
        self._seen: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return f"<calls of evaluation run {self.calls.run_id}, thread {self.thread_id}>"

    async def lookup(
        self, node: str, task_id: str, request_hash: str, *, request: CallRequest | None = None
    ) -> tuple[int, Mapping[str, Any] | None]:
        seq = self._seen.get((task_id, request_hash), 0)
        self._seen[(task_id, request_hash)] = seq + 1
        if self.calls.reuse is None or request is None:
            return seq, None
        if not request.deterministic:
            self.calls.sampled += 1
            return seq, None
        reply = await self.calls._answer(request, self)
        if reply is not None:
            self.reused += 1
            self.calls.reused += 1
        return seq, reply

    async def record(self, **fields: Any) -> None:
        self.live += 1
        self.calls.live += 1
        row = CallRow(run_id=self.calls.run_id, thread_id=self.thread_id, attempt=1, **fields)
        key: Key = (row.request_hash, row.params.get("endpoint"))
        if key in self.leading:
            self.leading.discard(key)
            self.calls._done(key, row.response if row.answerable else None)
        self.calls._write(row)

    def finished(self, request: CallRequest) -> None:
        key: Key = (request.hash, request.endpoint)
        if key in self.leading:  # never recorded: whoever waits makes the call
            self.leading.discard(key)
            self.calls._done(key, None)
