"""The call ledger: every model call of a run, one row of ``moa_calls``.

The nodes record each call they make (agents, routers, synthesizers, the steps of a tool
loop) through :class:`RunCalls`, the ledger bound to one execution of a run, which the run
executor hands to the graph (``config["configurable"]["__moa_calls__"]``). Before a call
goes out, the ledger is asked for a row of the same thread, LangGraph task and request hash
(the n-th identical request of a task matches the n-th row): a resumed or handed-over run
answers from it instead of sending the call again.

Columns: ``id`` (ascending), ``run_id``, ``thread_id``, ``node`` (``L1_coder``), ``kind``
(``agent | tool_step | router | synthesizer``), ``task_id`` (LangGraph's task), ``seq`` (the
n-th identical request of that task, from 0), ``attempt`` (the run's attempt, as in
``moa_runs.attempts``), ``model``, ``params`` (JSON: temperature, max_tokens, seed,
tools, tool_choice, schema...; beside them ``endpoint``, the URL of the model's server,
which the hash leaves out), ``request_hash`` (sha256 of the canonical messages and params),
``messages`` (JSON; with ``ledger: hashes`` one hash per message), ``response`` (JSON: the
reply message, a structured output's parse; with ``ledger: hashes`` its hash only),
``usage`` (JSON), ``latency_ms``, ``retries`` (HTTP attempts after the first), ``status``
(``ok | error``), ``error``, ``created_at``.

```python
async with CallLedger.from_url(db_url) as ledger:      # table set up on enter
    for call in await ledger.list(thread_id="t1"):     # or run_id=...
        print(call.node, call.model, call.usage, call.latency_ms)
```
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence import migrations
from langgraph_moa.persistence.engines import READ_ONLY, get_async_engine, release_async_engine
from langgraph_moa.persistence.keys import CALLS_KEY

__all__ = ["CALLS_KEY", "CallLedger", "CallRow", "RunCalls", "calls"]

log = logging.getLogger(__name__)


metadata = sa.MetaData()
calls = sa.Table(
    "moa_calls",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("thread_id", sa.String(255), nullable=False),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("messages", sa.JSON, nullable=True),
    sa.Column("response", sa.JSON, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("latency_ms", sa.Double, nullable=False),
    sa.Column("retries", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column(
        "created_at",
        sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
        nullable=False,
    ),
    sa.Index("moa_calls_task_idx", "thread_id", "task_id", "request_hash"),
    sa.Index("moa_calls_run_idx", "run_id", "id"),
    sa.Index("moa_calls_request_idx", "request_hash"),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)


@dataclass
class CallRow:
    """One recorded model call (the columns of ``moa_calls``)."""

    run_id: str
    thread_id: str
    node: str
    kind: str
    task_id: str
    seq: int
    attempt: int
    model: str
    params: dict[str, Any]
    request_hash: str
    messages: list[Any] | None
    response: dict[str, Any] | None
    usage: dict[str, Any] | None
    latency_ms: float
    retries: int
    status: str = "ok"
    error: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON data (``created_at`` in ISO 8601, UTC)."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data

    @property
    def answerable(self) -> bool:
        """Whether the row holds a reply a call can be answered with (``ok``, kept whole)."""
        return self.status == "ok" and bool(self.response) and "message" in (self.response or {})


class CallLedger:
    """Write and read ``moa_calls`` (see the module docs)."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine

    @classmethod
    def from_url(cls, url: str | sa.URL) -> CallLedger:
        """A ledger on the process's engine of ``url`` (given back by :meth:`aclose`)."""
        return cls(get_async_engine(url), owns_engine=True)

    async def setup(self) -> int:
        """Create or upgrade the table (see :mod:`.migrations`); returns its version."""
        return await migrations.aupgrade(self.engine, "calls")

    async def aclose(self) -> None:
        """Give back the engine if :meth:`from_url` took it."""
        if self._owns_engine:
            self._owns_engine = False
            await release_async_engine(self.engine)

    async def __aenter__(self) -> CallLedger:
        try:
            await self.setup()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def record(self, row: CallRow) -> int:
        """Append ``row``; returns its id."""
        values = {k: v for k, v in asdict(row).items() if k != "id"}
        async with self.engine.begin() as conn:
            result = await conn.execute(calls.insert().values(**values))
        key = result.inserted_primary_key
        row.id = int(key[0]) if key else None
        return row.id or 0

    async def find(
        self, thread_id: str, task_id: str, request_hash: str, seq: int
    ) -> CallRow | None:
        """The ``seq``-th answerable row of this thread, task and request (0 first)."""
        query = (
            sa.select(calls)
            .where(
                calls.c.thread_id == thread_id,
                calls.c.task_id == task_id,
                calls.c.request_hash == request_hash,
                calls.c.status == "ok",
            )
            .order_by(calls.c.id)
        )
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            rows = [_row(r) for r in (await conn.execute(query)).mappings()]
        found = [r for r in rows if r.answerable]
        by_seq = {r.seq: r for r in reversed(found)}  # the first row of each seq
        return by_seq.get(seq)

    async def reusable(
        self, request_hash: str, endpoint: str | None = None, *, scan: int = 20
    ) -> CallRow | None:
        """The oldest answerable row of any run with this request hash, sent to
        ``endpoint`` (``params["endpoint"]``; None: no server URL): what ``moa eval
        --reuse`` answers an unchanged call with. Rows are read ``scan`` at a time."""
        after = 0
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            while True:
                query = (
                    sa.select(calls)
                    .where(
                        calls.c.request_hash == request_hash,
                        calls.c.status == "ok",
                        calls.c.id > after,
                    )
                    .order_by(calls.c.id)
                    .limit(scan)
                )
                rows = [_row(r) for r in (await conn.execute(query)).mappings()]
                for row in rows:
                    if row.answerable and row.params.get("endpoint") == endpoint:
                        return row
                if len(rows) < scan or rows[-1].id is None:
                    return None
                after = rows[-1].id

    async def keys(self, thread_id: str) -> set[tuple[str, str]]:
        """The (task id, request hash) of every answerable-looking row of a thread."""
        query = (
            sa.select(calls.c.task_id, calls.c.request_hash)
            .where(calls.c.thread_id == thread_id, calls.c.status == "ok")
            .distinct()
        )
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            return {(t, h) for t, h in await conn.execute(query)}

    async def list(
        self, *, run_id: str | None = None, thread_id: str | None = None
    ) -> list[CallRow]:
        """The calls of a run or of a thread, oldest first."""
        if (run_id is None) == (thread_id is None):
            raise ValueError("give a run_id or a thread_id (not both)")
        column = calls.c.run_id if run_id is not None else calls.c.thread_id
        query = (  # rows are written in the background, so ids need not follow the calls
            sa.select(calls)
            .where(column == (run_id or thread_id))
            .order_by(calls.c.created_at, calls.c.id)
        )
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            return [_row(r) for r in (await conn.execute(query)).mappings()]


def _index_requests(conn: sa.Connection) -> None:
    """Migration step 2: the index of request hashes (a table made by step 1 of this
    code has it already)."""
    index = next(i for i in calls.indexes if i.name == "moa_calls_request_idx")
    if index.name not in {i["name"] for i in sa.inspect(conn).get_indexes(calls.name)}:
        index.create(conn)


def _row(data: Mapping[Any, Any]) -> CallRow:
    values = dict(data)
    for key in ("params", "messages", "response", "usage"):
        if isinstance(values.get(key), str):  # MySQL may hand JSON back as text
            import json

            values[key] = json.loads(values[key])
    values["params"] = values.get("params") or {}
    return CallRow(**values)


class RunCalls:
    """The ledger bound to one execution of a run: what the nodes record their calls with.

    :meth:`lookup` gives each call its ``seq`` (the n-th identical request of its task in
    this execution) and the recorded row to answer it with, if any; :meth:`record` appends
    the calls that went out, in the background (the run executor :meth:`flush`-es them before
    it records the run's end). Recording failures are logged, never fail the run."""

    def __init__(self, ledger: CallLedger, run_id: str, thread_id: str, attempt: int = 1) -> None:
        self.ledger, self.run_id, self.thread_id, self.attempt = ledger, run_id, thread_id, attempt
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._earlier: asyncio.Future[set[tuple[str, str]]] | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self.answered = 0
        """Calls answered from the ledger in this execution."""

    def __repr__(self) -> str:  # what a `checkpoints`/`debug` stream shows of the config
        return f"<call ledger of run {self.run_id}>"

    def _next_seq(self, task_id: str, request_hash: str) -> int:
        with self._lock:
            seq = self._seen.get((task_id, request_hash), 0)
            self._seen[(task_id, request_hash)] = seq + 1
            return seq

    def prefetch(self) -> None:
        """Start reading which calls the thread recorded before this execution (in a
        running event loop), so the run's first call does not wait for that query."""
        if self._earlier is None and self.attempt > 1:
            self._earlier = asyncio.ensure_future(self.ledger.keys(self.thread_id))
            self._earlier.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _recorded_before(self) -> set[tuple[str, str]]:
        """The calls of the thread recorded before this execution's first call (read
        once, and only when the run was executed before: its first attempt cannot find
        any, as each claim of a run counts an attempt)."""
        if self.attempt <= 1:
            return set()
        self.prefetch()  # one query; every caller wakes when it is done
        assert self._earlier is not None
        return await asyncio.shield(self._earlier)

    async def lookup(
        self, node: str, task_id: str, request_hash: str, *, request: Any = None
    ) -> tuple[int, dict[str, Any] | None]:
        """``(seq, response)``: the recorded response of this call, or None to make it."""
        seq = self._next_seq(task_id, request_hash)
        if not task_id:
            return seq, None
        try:
            if (task_id, request_hash) not in await self._recorded_before():
                return seq, None
            found = await self.ledger.find(self.thread_id, task_id, request_hash, seq)
        except Exception:  # an unreadable ledger costs a re-sent call, never the run
            self._earlier = None  # asked again by the next call
            log.warning("cannot read the call ledger of run %s", self.run_id, exc_info=True)
            return seq, None
        if found is None:
            return seq, None
        self.answered += 1
        return seq, found.response

    async def record(self, **fields: Any) -> None:
        """Append a call of this run (``CallRow`` fields but run, thread and attempt) in the
        background: the node goes on at once; :meth:`flush` waits for the writes."""
        row = CallRow(run_id=self.run_id, thread_id=self.thread_id, attempt=self.attempt, **fields)
        task = asyncio.ensure_future(self._write(row))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, row: CallRow) -> None:
        try:
            await self.ledger.record(row)
        except Exception:  # a lost row costs a re-sent call on resume, never the run
            log.exception(
                "could not record a model call of run %s (node %s)", self.run_id, row.node
            )

    def finished(self, request: Any) -> None:
        """Nothing to do once a call is over (see ``CallSource`` in ``nodes/_calls.py``)."""

    async def flush(self) -> None:
        """Wait until every call recorded so far is written."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
