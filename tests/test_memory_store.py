"""Long-term memory (persistence/store.py) on SQLite, PostgreSQL and MySQL/MariaDB.

The semantics checks follow LangGraph's own store tests (langgraph-checkpoint's
tests/test_store.py for the in-memory store, the postgres/sqlite stores' tests): same
calls, same expected items, on real databases.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import TypedDict

import pytest
import sqlalchemy as sa
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import FakeListChatModel
from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    PutOp,
    SearchOp,
)

from langgraph_moa.persistence import AsyncSQLAlchemySaver
from langgraph_moa.persistence._store_sql import items, vectors
from langgraph_moa.persistence.store import AsyncSQLAlchemyStore, SQLAlchemyStore, TenantView
from langgraph_moa.runtime.api import MoA


class WordEmbeddings(Embeddings):
    """Deterministic embeddings: one dimension per known word (counts)."""

    WORDS = ["cat", "dog", "pizza", "pasta", "rain", "sun", "code", "python"]

    def _one(self, text: str) -> list[float]:
        low = text.lower()
        return [float(low.count(w)) for w in self.WORDS]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


DIMS = len(WordEmbeddings.WORDS)


def test_put_get_update_delete(db_url: str) -> None:
    with SQLAlchemyStore.from_url(db_url) as store:
        ns = ("memory", "alice")
        assert store.get(ns, "food") is None
        store.put(ns, "food", {"likes": "pizza", "n": 1})
        item = store.get(ns, "food")
        assert item is not None
        assert (item.namespace, item.key, item.value) == (ns, "food", {"likes": "pizza", "n": 1})
        created = item.created_at
        assert created.tzinfo is not None
        store.put(ns, "food", {"likes": "pasta", "n": 2})
        again = store.get(ns, "food")
        assert again is not None and again.value == {"likes": "pasta", "n": 2}
        assert again.created_at == created and again.updated_at >= created
        # keys and labels are case-sensitive on every database (MySQL's default is not)
        assert store.get(ns, "Food") is None
        assert store.get(("memory", "Alice"), "food") is None
        store.delete(ns, "food")
        assert store.get(ns, "food") is None
        with pytest.raises(InvalidNamespaceError):
            store.put(("a.b",), "k", {})
        with pytest.raises(InvalidNamespaceError):
            store.put(("langgraph", "x"), "k", {})
        with pytest.raises(ValueError, match="too long"):
            store.put(("n",), "k" * 257, {})
        with pytest.raises(ValueError, match="too long"):
            store.put(("n" * 200, "m" * 200), "k", {})


def test_search_filters_limit_offset(db_url: str) -> None:
    with SQLAlchemyStore.from_url(db_url) as store:
        docs = {
            "a": {"kind": "fruit", "price": 3, "tags": {"color": "red"}},
            "b": {"kind": "fruit", "price": 7, "tags": {"color": "yellow"}},
            "c": {"kind": "veg", "price": 5, "tags": {"color": "green"}},
            "d": {"kind": "fruit", "price": 10, "tags": {"color": "red"}},
        }
        for key, value in docs.items():
            store.put(("shop", "items"), key, value)
        store.put(("shop_other",), "x", {"kind": "fruit", "price": 1})  # not under ("shop",)
        store.put(("shop", "items", "deep"), "e", {"kind": "fruit", "price": 4})

        def keys(**kw: object) -> list[str]:
            return sorted(i.key for i in store.search(("shop",), limit=50, **kw))  # type: ignore[arg-type]

        assert keys() == ["a", "b", "c", "d", "e"]
        assert keys(filter={"kind": "fruit"}) == ["a", "b", "d", "e"]
        assert keys(filter={"kind": {"$ne": "fruit"}}) == ["c"]
        assert keys(filter={"price": {"$gt": 5}}) == ["b", "d"]
        assert keys(filter={"price": {"$gte": 5}}) == ["b", "c", "d"]
        assert keys(filter={"price": {"$lt": 5}}) == ["a", "e"]
        assert keys(filter={"price": {"$lte": 5, "$gt": 3}}) == ["c", "e"]
        assert keys(filter={"price": {"$eq": 7}}) == ["b"]
        assert keys(filter={"tags": {"color": "red"}}) == ["a", "d"]
        assert keys(filter={"kind": "fruit", "price": {"$gt": 3}}) == ["b", "d", "e"]
        assert keys(filter={"missing": "x"}) == []
        # most recently updated first; limit/offset page through that order
        order = [i.key for i in store.search(("shop", "items"), limit=10)]
        assert order == ["e", "d", "c", "b", "a"]
        assert [i.key for i in store.search(("shop", "items"), limit=2, offset=1)] == ["d", "c"]
        page = store.search(("shop", "items"), filter={"kind": "fruit"}, limit=2, offset=1)
        assert [i.key for i in page] == ["d", "b"]
        assert all(i.score is None for i in page)
        assert {i.key for i in store.search((), limit=50)} == {"a", "b", "c", "d", "e", "x"}


def test_list_namespaces(db_url: str) -> None:
    with SQLAlchemyStore.from_url(db_url) as store:
        for ns in [
            ("a", "b", "c"),
            ("a", "b", "d", "e"),
            ("a", "b", "d", "i"),
            ("a", "b", "f"),
            ("a", "c", "f"),
            ("b", "a", "f"),
            ("users", "123"),
            ("users", "456", "settings"),
            ("admin", "users", "789"),
        ]:
            store.put(ns, "k", {"v": 1})
        assert store.list_namespaces(prefix=("a", "b")) == [
            ("a", "b", "c"),
            ("a", "b", "d", "e"),
            ("a", "b", "d", "i"),
            ("a", "b", "f"),
        ]
        assert store.list_namespaces(suffix=("f",)) == [
            ("a", "b", "f"),
            ("a", "c", "f"),
            ("b", "a", "f"),
        ]
        assert store.list_namespaces(prefix=("a",), suffix=("f",)) == [
            ("a", "b", "f"),
            ("a", "c", "f"),
        ]
        assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
        assert store.list_namespaces(prefix=("*", "*", "f")) == [
            ("a", "b", "f"),
            ("a", "c", "f"),
            ("b", "a", "f"),
        ]
        assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [
            ("a", "b", "c"),
            ("a", "b", "d"),
            ("a", "b", "f"),
        ]
        assert store.list_namespaces(prefix=("users",)) == [
            ("users", "123"),
            ("users", "456", "settings"),
        ]
        everything = store.list_namespaces(limit=100)
        assert len(everything) == 9 and everything == sorted(everything)
        assert store.list_namespaces(limit=3, offset=2) == everything[2:5]
        assert store.list_namespaces(max_depth=1) == [("a",), ("admin",), ("b",), ("users",)]


def test_batch_order_and_dedup(db_url: str) -> None:
    with SQLAlchemyStore.from_url(db_url) as store:
        ns = ("batch",)
        results = store.batch(
            [
                PutOp(ns, "k", {"v": 1}),
                GetOp(ns, "k"),  # reads see the store before this batch's writes
                PutOp(ns, "k", {"v": 2}),
                SearchOp(ns),
            ]
        )
        assert results[0] is None and results[1] is None and results[3] == []
        item = store.get(ns, "k")
        assert item is not None and item.value == {"v": 2}  # last put wins


def test_ttl_refresh_and_sweep(db_url: str) -> None:
    ttl = {"default_ttl": 10.0, "refresh_on_read": True, "omit_expired": True}
    with SQLAlchemyStore.from_url(db_url, ttl=ttl) as store:  # type: ignore[arg-type]
        ns = ("ttl",)
        store.put(ns, "short", {"v": 1})  # default TTL
        store.put(ns, "forever", {"v": 2}, ttl=None)
        table = items

        def expires() -> dict[str, object]:
            with store.engine.connect() as conn:
                return dict(conn.execute(sa.select(table.c.key, table.c.expires_at)).all())  # type: ignore[arg-type]

        before = expires()
        assert before["forever"] is None and before["short"] is not None
        # move the expiry into the past; a refreshing read must not happen for expired rows
        past = before["short"] - timedelta(minutes=20)  # type: ignore[operator]
        with store.engine.begin() as conn:
            conn.execute(sa.update(table).where(table.c.key == "short").values(expires_at=past))
        assert store.get(ns, "short") is None  # omit_expired
        assert [i.key for i in store.search(ns)] == ["forever"]
        assert store.sweep_ttl() == 1
        assert set(expires()) == {"forever"}
        # refresh on read: a get pushes expires_at forward again
        store.put(ns, "again", {"v": 3}, ttl=5)
        near = expires()["again"]
        with store.engine.begin() as conn:
            old = near - timedelta(minutes=4)  # type: ignore[operator]
            conn.execute(sa.update(table).where(table.c.key == "again").values(expires_at=old))
        store.get(ns, "again", refresh_ttl=False)
        assert expires()["again"] == old
        store.get(ns, "again")
        assert expires()["again"] > old  # type: ignore[operator]
        assert store.sweep_ttl() == 0


def test_ttl_background_sweeper(sqlite_url: str) -> None:
    with SQLAlchemyStore.from_url(sqlite_url) as store:
        store.put(("t",), "gone", {"v": 1}, ttl=0.0)
        store.put(("t",), "kept", {"v": 1})
        store.start_ttl_sweeper(interval_minutes=0.001)
        swept = threading.Event()
        for _ in range(600):  # the sweeper runs every 60 ms; a generous last guard
            if store.search(("t",), refresh_ttl=False) == [] or len(store.search(("t",))) == 1:
                swept.set()
                break
            swept.wait(0.05)
        assert swept.is_set()
        assert [i.key for i in store.search(("t",))] == ["kept"]
        assert store.stop_ttl_sweeper(timeout=10)


def test_vector_search(db_url: str) -> None:
    index = {"dims": DIMS, "embed": WordEmbeddings(), "fields": ["text"]}
    with SQLAlchemyStore.from_url(db_url, index=index) as store:  # type: ignore[arg-type]
        ns = ("docs",)
        store.put(ns, "pets", {"text": "the cat and the dog", "kind": "a"})
        store.put(ns, "food", {"text": "pizza and pasta", "kind": "b"})
        store.put(ns, "weather", {"text": "rain then sun", "kind": "a"})
        store.put(ns, "raw", {"text": "cat cat cat"}, index=False)  # not embedded
        hits = store.search(ns, query="a cat", limit=10)
        assert hits[0].key == "pets" and hits[0].score is not None and hits[0].score > 0.5
        assert [h.key for h in hits if h.score is None] == ["raw"]  # unindexed come last
        assert store.search(ns, query="pizza", limit=1)[0].key == "food"
        assert [h.key for h in store.search(ns, query="sun", filter={"kind": "a"}, limit=1)] == [
            "weather"
        ]
        # re-put replaces the vectors: the item now ranks for its new text
        store.put(ns, "pets", {"text": "python code"})
        assert store.search(ns, query="python", limit=1)[0].key == "pets"
        scores = {h.key: h.score for h in store.search(ns, query="cat dog", limit=10)}
        assert scores["pets"] == 0.0  # its old "cat and dog" vector is gone
        # a per-put field list
        store.put(ns, "title", {"title": "dog", "text": "pizza"}, index=["title"])
        assert store.search(ns, query="dog", limit=1)[0].key == "title"
        store.delete(ns, "title")
        with store.engine.connect() as conn:
            left = conn.execute(sa.select(sa.func.count()).where(vectors.c.key == "title"))
            assert left.scalar() == 0


def test_max_scan_limits_semantic_search(sqlite_url: str) -> None:
    index = {"dims": DIMS, "embed": WordEmbeddings(), "fields": ["text"]}
    with SQLAlchemyStore.from_url(sqlite_url, index=index, max_scan=2) as store:  # type: ignore[arg-type]
        store.put(("s",), "old", {"text": "pizza"})
        store.put(("s",), "mid", {"text": "rain"})
        store.put(("s",), "new", {"text": "sun"})
        keys = [h.key for h in store.search(("s",), query="pizza", limit=5)]
        assert sorted(keys) == ["mid", "new"]  # the oldest item is beyond the scan limit


async def test_async_store(db_url: str) -> None:
    index = {"dims": DIMS, "embed": WordEmbeddings(), "fields": ["text"]}
    async with AsyncSQLAlchemyStore.from_url(db_url, index=index, ttl={"default_ttl": 1}) as store:  # type: ignore[arg-type]
        await store.aput(("m", "u1"), "a", {"text": "cat", "n": 1})
        await store.aput(("m", "u2"), "b", {"text": "pizza", "n": 2})
        item = await store.aget(("m", "u1"), "a")
        assert item is not None and item.value == {"text": "cat", "n": 1}
        assert [i.key for i in await store.asearch(("m",), filter={"n": {"$gt": 1}})] == ["b"]
        assert (await store.asearch(("m",), query="pizza", limit=1))[0].key == "b"
        assert await store.alist_namespaces(prefix=("m",)) == [("m", "u1"), ("m", "u2")]
        # a sync call from a worker thread (how LangGraph runs sync nodes) reaches the loop
        got = await asyncio.to_thread(store.get, ("m", "u2"), "b")
        assert got is not None and got.value["n"] == 2
        with pytest.raises(asyncio.InvalidStateError, match="main event loop"):
            store.get(("m", "u2"), "b")
        await store.adelete(("m", "u1"), "a")
        assert await store.aget(("m", "u1"), "a") is None
        assert await store.sweep_ttl() == 0


def test_values_are_json_text(sqlite_url: str) -> None:
    with SQLAlchemyStore.from_url(sqlite_url) as store:
        store.put(("j",), "k", {"s": "é", "n": [1, 2.5, None, True]})
        with store.engine.connect() as conn:
            raw = conn.execute(sa.text("SELECT value FROM moa_store")).scalar()
        assert raw == '{"s":"é","n":[1,2.5,null,true]}'
        with pytest.raises(TypeError):
            store.put(("j",), "bad", {"obj": object()})


class Chat(TypedDict, total=False):
    user: str
    text: str
    context: list[str]
    answer: str


async def test_one_threads_agent_remembers_what_anothers_wrote(db_url: str) -> None:
    """Thread t1's agent stores a memory (via ``get_store()``); thread t2's agent, a new
    conversation, gets the store injected, finds the memory and puts it in its prompt."""
    prompts: list[str] = []

    async def agent(state: Chat, *, store: BaseStore) -> Chat:
        user = state["user"]
        if state["text"].startswith("remember:"):
            note = state["text"].removeprefix("remember:").strip()
            await get_store().aput(("memory", user), "note-1", {"text": note})
            return {"answer": "noted", "context": []}
        found = await store.asearch(("memory", user), limit=5)
        context = [item.value["text"] for item in found]
        prompt = f"Known about {user}: {'; '.join(context)}\nQuestion: {state['text']}"
        prompts.append(prompt)
        reply = await model.ainvoke(prompt)
        return {"answer": str(reply.content), "context": context}

    model = FakeListChatModel(responses=["Your favourite colour is blue."])
    builder = StateGraph(Chat)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    builder.add_edge("agent", END)
    async with (
        AsyncSQLAlchemySaver.from_url(db_url) as saver,
        AsyncSQLAlchemyStore.from_url(db_url) as store,
    ):
        graph = builder.compile(checkpointer=saver, store=store)
        first = await graph.ainvoke(
            {"user": "ann", "text": "remember: favourite colour is blue"},
            {"configurable": {"thread_id": "t1"}},
        )
        assert first["answer"] == "noted"
        second = await graph.ainvoke(
            {"user": "ann", "text": "what is my favourite colour?"},
            {"configurable": {"thread_id": "t2"}},
        )
        assert second["context"] == ["favourite colour is blue"]
        assert prompts == [
            "Known about ann: favourite colour is blue\nQuestion: what is my favourite colour?"
        ]
        assert second["answer"] == "Your favourite colour is blue."
        # the two threads are separate conversations; the memory is not in t2's history
        t2 = await graph.aget_state({"configurable": {"thread_id": "t2"}})
        assert "remember" not in str(t2.values["text"])
        # another user does not see ann's memory
        other = await graph.ainvoke(
            {"user": "bob", "text": "what is my favourite colour?"},
            {"configurable": {"thread_id": "t3"}},
        )
        assert other["context"] == []


async def test_moa_compiles_the_store_into_its_graph(sqlite_url: str) -> None:
    spec = {
        "name": "mem",
        "models": {"m": {"model": "m", "base_url": "http://127.0.0.1:9/v1"}},
        "agents": [{"name": "a", "model": "m"}],
        "layers": [{"agents": ["a"], "synthesizer": {"model": "m"}}],
    }
    async with AsyncSQLAlchemyStore.from_url(sqlite_url) as store:
        async with MoA(spec, db_url=sqlite_url, store=store) as moa:
            assert moa.graph.store is store
        async with MoA(spec, db_url=sqlite_url) as moa:
            assert moa.graph.store is None


def test_tenant_views_map_every_operation(sqlite_url: str) -> None:
    with SQLAlchemyStore.from_url(sqlite_url, ttl={"default_ttl": 60}) as store:
        a, b = TenantView(store, "a"), TenantView(store, "b")
        a.put(("memory", "ann"), "food", {"likes": "pizza", "n": 1})
        a.put(("memory", "bob"), "food", {"likes": "pasta", "n": 2}, ttl=5)
        a.put(("notes",), "x", {"n": 3})
        b.put(("memory", "ann"), "food", {"likes": "sushi", "n": 9})
        # the layout: the tenant's label in front, nothing else
        assert sorted(i.namespace for i in store.search(())) == [
            ("~a", "memory", "ann"),
            ("~a", "memory", "bob"),
            ("~a", "notes"),
            ("~b", "memory", "ann"),
        ]
        got = a.get(("memory", "ann"), "food")
        assert got is not None and got.namespace == ("memory", "ann")
        assert got.value == {"likes": "pizza", "n": 1}
        assert b.get(("memory", "ann"), "food").value["likes"] == "sushi"  # type: ignore[union-attr]
        assert b.get(("memory", "bob"), "food") is None
        found = a.search(("memory",), filter={"n": {"$gte": 2}})
        assert [(i.namespace, i.value["n"]) for i in found] == [(("memory", "bob"), 2)]
        assert [i.value["n"] for i in b.search(())] == [9]
        assert a.list_namespaces() == [("memory", "ann"), ("memory", "bob"), ("notes",)]
        assert a.list_namespaces(max_depth=1) == [("memory",), ("notes",)]
        assert a.list_namespaces(prefix=("memory", "*")) == [("memory", "ann"), ("memory", "bob")]
        assert a.list_namespaces(suffix=("ann",)) == [("memory", "ann")]
        assert b.list_namespaces(prefix=("notes",)) == []
        assert b.list_namespaces() == [("memory", "ann")]
        results = b.batch(
            [
                GetOp(("memory", "ann"), "food"),
                SearchOp(("memory",)),
                ListNamespacesOp(max_depth=1),
                PutOp(("memory", "ann"), "food", None),
            ]
        )
        assert results[0].namespace == ("memory", "ann")  # type: ignore[union-attr]
        assert [i.namespace for i in results[1]] == [("memory", "ann")]  # type: ignore[union-attr]
        assert results[2:] == [[("memory",)], None]
        assert b.get(("memory", "ann"), "food") is None
        assert a.get(("memory", "ann"), "food") is not None
        assert a.supports_ttl and a.ttl_config == {"default_ttl": 60}
