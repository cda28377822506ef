"""Long-term memory: LangGraph's ``BaseStore`` on SQLite, PostgreSQL and MySQL/MariaDB.

::

    with SQLAlchemyStore.from_url("sqlite:///moa.sqlite") as store:
        store.put(("memory", "alice"), "likes", {"food": "pizza"})
        store.get(("memory", "alice"), "likes").value          # {"food": "pizza"}
        store.search(("memory",), filter={"food": "pizza"})
    graph = builder.compile(checkpointer=saver, store=store)  # nodes take `store`

    async with AsyncSQLAlchemyStore.from_url(url, index={"dims": 1536,
            "embed": OpenAIEmbeddings(), "fields": ["text"]}) as store: ...

Same semantics as LangGraph's official stores: ``get``/``put``/``delete``; ``search``
over a namespace prefix with ``filter`` (equality on JSON values, nested dicts, and
``$eq $ne $gt $gte $lt $lte``), ``limit``/``offset``, most recently updated first;
``list_namespaces`` with ``prefix``/``suffix`` (``*`` wildcards), ``max_depth``,
``limit``/``offset``; TTL (``ttl={"default_ttl": minutes, "refresh_on_read": True,
"omit_expired": False, "sweep_interval_minutes": N}``), :meth:`sweep_ttl` and a
background sweeper (``start_ttl_sweeper``).

Semantic search (``search(..., query="...")`` with ``index=``) embeds the configured
``fields`` of each value at ``put`` (LangChain ``Embeddings`` or a function) and ranks
by cosine similarity computed in Python, on every database: it considers at most
``max_scan`` (default 10,000) of the most recently updated items under the namespace
prefix that match the filter; older items beyond that are not scored. (pgvector is not
used: it is not installed on the PostgreSQL this was built against.)

Tables ``moa_store`` and ``moa_store_vectors`` belong to the migration component
``store``; values are JSON text (never pickled), engines come from :mod:`.engines`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    validate_op_namespace,
)
from langgraph.store.base.batch import AsyncBatchedBaseStore
from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from langgraph_moa.persistence import _store_sql as q
from langgraph_moa.persistence import migrations
from langgraph_moa.persistence.engines import (
    get_async_engine,
    get_engine,
    release_async_engine,
    release_engine,
)

__all__ = ["AsyncSQLAlchemyStore", "SQLAlchemyStore", "TenantView", "tenant_label"]

MAX_SCAN = 10_000
log = logging.getLogger("langgraph_moa.persistence.store")

migrations.STEPS.setdefault(
    "store",
    [
        migrations.Step(
            "create moa_store and moa_store_vectors",
            q.create_tables,
        ),
        migrations.Step(
            "moa_store.ttl_minutes: FLOAT columns as DOUBLE on MySQL/MariaDB",
            migrations.double_columns(
                "moa_store", "ttl_minutes", module="langgraph_moa.persistence._store_sql"
            ),
        ),
    ],
)

_Embedded = dict[tuple[str, str], list[tuple[str, list[float]]]]
_Put = tuple[str, str, dict[str, Any] | None, float | None]


class _Core:
    """What the sync and async stores share: op planning and the SQL pass."""

    supports_ttl = True

    def _init(self, index: IndexConfig | None, ttl: TTLConfig | None, max_scan: int) -> None:
        self.ttl_config = ttl
        self.max_scan = max_scan
        self.index_config: dict[str, Any] | None = None
        self.embeddings = None
        if index is not None:
            fields = list(index.get("fields") or ["$"])
            self.index_config = {
                **index,
                "fields": fields,
            }
            self.embeddings = ensure_embeddings(index.get("embed"))
        self._omit = bool((ttl or {}).get("omit_expired", False))

    # -- planning ---------------------------------------------------------------------

    @staticmethod
    def _puts(ops: Sequence[Op]) -> dict[tuple[str, str], PutOp]:
        """The puts of a batch, the last one per item winning."""
        puts: dict[tuple[str, str], PutOp] = {}
        for op in ops:
            validate_op_namespace(op)
            if isinstance(op, PutOp):
                if not op.namespace:
                    raise ValueError("a put needs a non-empty namespace")
                joined = q.join_ns(op.namespace)
                if len(joined) > q.PREFIX_MAX or len(op.key) > q.KEY_MAX:
                    raise ValueError(
                        f"namespace {op.namespace!r} ({len(joined)} characters joined) or key "
                        f"{op.key[:40]!r}... ({len(op.key)}) too long: the store keeps "
                        f"namespaces up to {q.PREFIX_MAX} and keys up to {q.KEY_MAX} characters"
                    )
                puts[(q.join_ns(op.namespace), op.key)] = op
        return puts

    def _texts(self, puts: dict[tuple[str, str], PutOp]) -> list[tuple[str, str, str, str]]:
        """``(prefix, key, field, text)`` to embed for ``puts``."""
        if self.index_config is None:
            return []
        out: list[tuple[str, str, str, str]] = []
        default = self.index_config["fields"]
        for (prefix, key), op in puts.items():
            if op.value is None or op.index is False:
                continue
            for field in default if op.index is None else op.index:
                for j, text in enumerate(get_text_at_path(op.value, field)):
                    out.append((prefix, key, field if j == 0 else f"{field}#{j}", text))
        return out

    @staticmethod
    def _embedded(texts: list[tuple[str, str, str, str]], vecs: list[list[float]]) -> _Embedded:
        out: _Embedded = {}
        for (prefix, key, field, _), vec in zip(texts, vecs, strict=True):
            out.setdefault((prefix, key), []).append((field, vec))
        return out

    def _queries(self, ops: Sequence[Op]) -> list[str]:
        if self.embeddings is None:
            return []
        return sorted({op.query for op in ops if isinstance(op, SearchOp) and op.query})

    # -- the SQL pass (sync connection) -------------------------------------------------

    def _run(
        self,
        conn: Connection,
        ops: Sequence[Op],
        puts: dict[tuple[str, str], PutOp],
        embedded: _Embedded,
        qvecs: dict[str, list[float]],
    ) -> list[Result]:
        results: list[Result] = [None] * len(ops)
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            rows = q.get_rows(
                conn, [(q.join_ns(op.namespace), op.key) for _, op in gets], self._omit
            )
            fresh = []
            for i, op in gets:
                row = rows.get((q.join_ns(op.namespace), op.key))
                results[i] = None if row is None else _item(row, q.loads(row.value))
                if row is not None and op.refresh_ttl:
                    fresh.append(row)
            q.refresh(conn, {(r.prefix, r.key): r for r in fresh}.values())
        for i, any_op in enumerate(ops):
            if isinstance(any_op, SearchOp):
                results[i] = self._search(conn, any_op, qvecs)
            elif isinstance(any_op, ListNamespacesOp):
                results[i] = _list_namespaces(conn, any_op, self._omit)
        if puts:
            rows_ = [
                (prefix, key, None if op.value is None else dict(op.value), _ttl(op))
                for (prefix, key), op in puts.items()
            ]
            q.put_rows(conn, rows_, embedded)
        return results

    def _search(
        self, conn: Connection, op: SearchOp, qvecs: dict[str, list[float]]
    ) -> list[SearchItem]:
        flt = op.filter or {}
        q.check_filter(flt)
        hits: list[tuple[Any, dict[str, Any]]] = []
        vector = qvecs.get(op.query) if op.query else None
        want = self.max_scan if vector is not None else op.offset + op.limit
        for row in q.scan(conn, op.namespace_prefix, self._omit):
            value = q.loads(row.value)
            if flt and not q.matches(value, flt):
                continue
            hits.append((row, value))
            if len(hits) >= want:
                break
        if vector is None:
            kept: list[tuple[float | None, Any, dict[str, Any]]] = [
                (None, r, v) for r, v in hits[op.offset : op.offset + op.limit]
            ]
        else:
            kept = self._rank(conn, vector, hits, op.offset, op.limit)
        if op.refresh_ttl:
            q.refresh(conn, (r for _, r, _ in kept))
        return [_item(r, v, score=s, search=True) for s, r, v in kept]

    @staticmethod
    def _rank(
        conn: Connection,
        vector: list[float],
        hits: list[tuple[Any, dict[str, Any]]],
        offset: int,
        limit: int,
    ) -> list[tuple[float | None, Any, dict[str, Any]]]:
        found = q.vectors_of(conn, [(r.prefix, r.key) for r, _ in hits])
        qnorm = sum(a * a for a in vector) ** 0.5
        scored: list[tuple[float, Any, dict[str, Any]]] = []
        scoreless: list[tuple[None, Any, dict[str, Any]]] = []
        for row, value in hits:
            raws = found.get((row.prefix, row.key))
            if not raws:
                scoreless.append((None, row, value))
                continue
            best = max(q.cosine(vector, q.unpack(raw), qnorm) for raw in raws)
            scored.append((best, row, value))
        scored.sort(key=lambda t: t[0], reverse=True)
        kept: list[tuple[float | None, Any, dict[str, Any]]] = list(scored[offset : offset + limit])
        if len(kept) < limit:  # like the official stores: fill up with unindexed items
            skip = max(0, offset - len(scored))
            kept.extend(scoreless[skip : skip + limit - len(kept)])
        return kept


def _ttl(op: PutOp) -> float | None:
    return None if op.ttl is None else float(op.ttl)


def _item(
    row: Any, value: dict[str, Any], *, score: float | None = None, search: bool = False
) -> Any:
    kw = {
        "value": value,
        "key": row.key,
        "namespace": q.split_ns(row.prefix),
        "created_at": q.aware(row.created_at),
        "updated_at": q.aware(row.updated_at),
    }
    return SearchItem(**kw, score=score) if search else Item(**kw)


def _matches(cond: MatchCondition, ns: tuple[str, ...]) -> bool:
    path = tuple(cond.path)
    if len(ns) < len(path):
        return False
    pairs = (
        zip(ns, path, strict=False)
        if cond.match_type == "prefix"
        else zip(reversed(ns), reversed(path), strict=False)
    )
    return all(p == "*" or k == p for k, p in pairs)


def _list_namespaces(conn: Connection, op: ListNamespacesOp, omit: bool) -> list[tuple[str, ...]]:
    conds = op.match_conditions or ()
    narrow: list[str] = []
    for cond in conds:
        if cond.match_type == "prefix":
            for label in cond.path:
                if label == "*":
                    break
                narrow.append(label)
            break
    found: set[tuple[str, ...]] = set()
    for prefix in q.prefixes(conn, narrow, omit):
        ns = q.split_ns(prefix)
        if all(_matches(c, ns) for c in conds):
            found.add(ns[: op.max_depth] if op.max_depth is not None else ns)
    return sorted(found)[op.offset : op.offset + op.limit]


class SQLAlchemyStore(_Core, BaseStore):
    """A synchronous store on a SQLAlchemy engine (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        max_scan: int = MAX_SCAN,
    ) -> None:
        self.engine = engine
        self._init(index, ttl, max_scan)
        self._ready = False
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    @contextmanager
    def from_url(cls, url: str, **kwargs: Any) -> Iterator[SQLAlchemyStore]:
        """A set-up store on the process's shared engine of ``url``."""
        engine = get_engine(url)
        store = cls(engine, **kwargs)
        try:
            store.setup()
            yield store
        finally:
            store.stop_ttl_sweeper()
            release_engine(engine)

    def setup(self) -> None:
        """Create or upgrade the tables (idempotent; also done on first use)."""
        with self.engine.connect() as conn:
            migrations.upgrade(conn, "store")
        self._ready = True

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        puts = self._puts(ops)
        texts = self._texts(puts)
        embedded: _Embedded = {}
        qvecs: dict[str, list[float]] = {}
        if self.embeddings is not None:
            if texts:
                vecs = self.embeddings.embed_documents([t[3] for t in texts])
                embedded = self._embedded(texts, vecs)
            qvecs = {s: self.embeddings.embed_query(s) for s in self._queries(ops)}
        if not self._ready:
            self.setup()
        with self.engine.begin() as conn:
            return self._run(conn, ops, puts, embedded, qvecs)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.get_running_loop().run_in_executor(None, self.batch, list(ops))

    def sweep_ttl(self) -> int:
        """Delete the expired items now; returns how many were deleted."""
        if not self._ready:
            self.setup()
        with self.engine.begin() as conn:
            return q.sweep(conn)

    def start_ttl_sweeper(self, interval_minutes: float | None = None) -> threading.Thread:
        """Sweep every ``interval_minutes`` (default: ``ttl["sweep_interval_minutes"]``,
        else 5) in a daemon thread until :meth:`stop_ttl_sweeper`."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return self._sweeper
        every = 60 * float(
            interval_minutes or (self.ttl_config or {}).get("sweep_interval_minutes") or 5
        )
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.sweep_ttl()
                except Exception:  # the database may be back at the next round
                    log.warning("sweeping expired store items failed", exc_info=True)

        self._sweeper = threading.Thread(target=loop, name="moa-store-ttl", daemon=True)
        self._sweeper.start()
        return self._sweeper

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the background sweeper; True if it is stopped."""
        self._stop.set()
        if self._sweeper is None:
            return True
        self._sweeper.join(timeout)
        stopped = not self._sweeper.is_alive()
        if stopped:
            self._sweeper = None
        return stopped


class AsyncSQLAlchemyStore(_Core, AsyncBatchedBaseStore):
    """An asyncio store on a SQLAlchemy async engine (see the module docstring).

    Create it inside the event loop it will serve: as LangGraph's official async stores,
    it gathers the operations scheduled in one loop tick into one :meth:`abatch` (one
    connection, one transaction), and its sync methods work from other threads only.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        max_scan: int = MAX_SCAN,
    ) -> None:
        AsyncBatchedBaseStore.__init__(self)
        self.engine = engine
        self._init(index, ttl, max_scan)
        self._ready = False
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    @asynccontextmanager
    async def from_url(cls, url: str, **kwargs: Any) -> AsyncIterator[AsyncSQLAlchemyStore]:
        """A set-up store on the process's shared async engine of ``url``."""
        engine = get_async_engine(url)
        store = cls(engine, **kwargs)
        try:
            await store.setup()
            yield store
        finally:
            await store.stop_ttl_sweeper()
            await release_async_engine(engine)

    async def setup(self) -> None:
        """Create or upgrade the tables (idempotent; also done on first use)."""
        await migrations.aupgrade(self.engine, "store")
        self._ready = True

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        puts = self._puts(ops)
        texts = self._texts(puts)
        embedded: _Embedded = {}
        qvecs: dict[str, list[float]] = {}
        if self.embeddings is not None:
            if texts:
                vecs = await self.embeddings.aembed_documents([t[3] for t in texts])
                embedded = self._embedded(texts, vecs)
            queries = self._queries(ops)
            got = await asyncio.gather(*(self.embeddings.aembed_query(s) for s in queries))
            qvecs = dict(zip(queries, got, strict=True))
        if not self._ready:
            await self.setup()
        async with self.engine.begin() as conn:
            return await conn.run_sync(self._run, ops, puts, embedded, qvecs)

    async def sweep_ttl(self) -> int:
        """Delete the expired items now; returns how many were deleted."""
        if not self._ready:
            await self.setup()
        async with self.engine.begin() as conn:
            return await conn.run_sync(q.sweep)

    async def start_ttl_sweeper(self, interval_minutes: float | None = None) -> asyncio.Task[None]:
        """Sweep every ``interval_minutes`` (default: ``ttl["sweep_interval_minutes"]``,
        else 5) in a task of the running loop until :meth:`stop_ttl_sweeper`."""
        if self._sweeper is not None and not self._sweeper.done():
            return self._sweeper
        every = 60 * float(
            interval_minutes or (self.ttl_config or {}).get("sweep_interval_minutes") or 5
        )

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await self.sweep_ttl()
                except Exception:  # the database may be back at the next round
                    log.warning("sweeping expired store items failed", exc_info=True)

        self._sweeper = asyncio.create_task(loop(), name="moa-store-ttl")
        return self._sweeper

    async def stop_ttl_sweeper(self) -> None:
        """Stop the background sweeper."""
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def tenant_label(tenant: str | None) -> str:
    """The hidden first namespace label of a tenant's items: ``~`` plus its id (``~``
    alone for an open server)."""
    return "~" + (tenant or "")


class TenantView(BaseStore):
    """One tenant's items of ``store``: every namespace gets :func:`tenant_label` in
    front on the way in and loses it on the way out, so the view never reaches another
    tenant's items (what the server's ``/store`` routes and its runs' graphs use)."""

    def __init__(self, store: BaseStore, tenant: str | None) -> None:
        self.store = store
        self.root = tenant_label(tenant)
        self.supports_ttl = store.supports_ttl
        self.ttl_config = store.ttl_config

    def _in(self, op: Op) -> Op:
        root = (self.root,)
        if isinstance(op, GetOp | PutOp):
            return op._replace(namespace=root + tuple(op.namespace))
        if isinstance(op, SearchOp):
            return op._replace(namespace_prefix=root + tuple(op.namespace_prefix))
        if isinstance(op, ListNamespacesOp):
            conditions = [
                MatchCondition("prefix", root + tuple(c.path)) if c.match_type == "prefix" else c
                for c in op.match_conditions or ()
            ]
            if not any(c.match_type == "prefix" for c in conditions):
                conditions.insert(0, MatchCondition("prefix", root))
            depth = None if op.max_depth is None else op.max_depth + 1
            return op._replace(match_conditions=tuple(conditions), max_depth=depth)
        raise TypeError(f"unknown store operation {type(op).__name__}")

    def _strip(self, item: Item) -> Item:
        namespace = item.namespace[1:]
        if isinstance(item, SearchItem):
            return SearchItem(
                namespace, item.key, item.value, item.created_at, item.updated_at, item.score
            )
        return Item(
            value=item.value,
            key=item.key,
            namespace=namespace,
            created_at=item.created_at,
            updated_at=item.updated_at,
        )

    def _out(self, result: Result) -> Result:
        if isinstance(result, Item):
            return self._strip(result)
        if isinstance(result, list):
            stripped: list[Any] = [
                self._strip(r) if isinstance(r, Item) else tuple(r[1:]) for r in result
            ]
            return stripped
        return result

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """The inner store's ``batch`` of the tenant's operations."""
        return [self._out(r) for r in self.store.batch([self._in(op) for op in ops])]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """The inner store's ``abatch`` of the tenant's operations."""
        results = await self.store.abatch([self._in(op) for op in ops])
        return [self._out(r) for r in results]
