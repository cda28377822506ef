"""The saver's hot path value by value, on SQLite, PostgreSQL and MariaDB: what ``put`` and
``put_writes`` store (inline or as a blob, written once per version), and that ``get_tuple``
and ``list`` give back exactly that: values, metadata, parents, namespaces, pending writes
in LangGraph's order, with every ``list`` argument. Fast: the mutation run of the saver
(``bench/mutation.py saver``) uses it."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import CheckpointTuple, empty_checkpoint
from sqlalchemy import func, select

from langgraph_moa.persistence import SQLAlchemySaver
from langgraph_moa.persistence import schema as moa_schema
from langgraph_moa.persistence.errors import CheckpointConflictError
from langgraph_moa.persistence.registry import RunRegistry
from langgraph_moa.persistence.saver._codec import INLINE_MAX_BYTES, LEASE_CONFIG_KEY, _load_json
from langgraph_moa.persistence.schema import CHANNEL_MAX, ID_MAX, THREAD_ID_MAX


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLAlchemySaver]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hot.sqlite'}"
    else:
        url = str(
            request.getfixturevalue({"postgres": "pg_url", "mysql": "mysql_url"}[request.param])
        )
    with SQLAlchemySaver.from_url(url) as s:
        s.setup()
        yield s


def conf(thread: str, ns: str | None = "", cid: str | None = None) -> Any:
    c: dict[str, Any] = {"thread_id": thread}
    if ns is not None:
        c["checkpoint_ns"] = ns
    if cid is not None:
        c["checkpoint_id"] = cid
    return {"configurable": c}


def put(
    saver: SQLAlchemySaver,
    thread: str,
    ns: str,
    parent: str | None,
    values: dict[str, Any],
    versions: dict[str, str],
    new: dict[str, str],
    **md: Any,
) -> str:
    c = empty_checkpoint()
    c["channel_values"] = dict(values)
    c["channel_versions"] = dict(versions)
    out = saver.put(conf(thread, ns, parent), c, {"source": "loop", "step": 0, **md}, new)
    assert out == conf(thread, ns, c["id"])
    return str(c["id"])


def blob_rows(saver: SQLAlchemySaver, thread: str) -> list[tuple[str, str, str]]:
    b = moa_schema.blobs
    with saver._sync_engine.connect() as conn:
        rows = conn.execute(
            select(b.c.checkpoint_ns, b.c.channel, b.c.version).where(b.c.thread_id == thread)
        ).all()
    return sorted((r[0], r[1], r[2]) for r in rows)


BIG, MID, SHORT = "b" * 600, "m" * 100, "s" * 64


@pytest.fixture
def thread(saver: SQLAlchemySaver) -> dict[str, str]:
    """Thread t: c1 <- c2 <- c3 in the root namespace, c4 in "child:1"; thread u: c5."""
    values = {"n": 1, "mid": MID, "big": BIG, "short": SHORT}
    ones = dict.fromkeys(values, "1")
    ids = {"c1": put(saver, "t", "", None, values, ones, ones)}
    w = conf("t", "", ids["c1"])
    saver.put_writes(w, [("n", 2), ("big", "B" * 600)], "task-a", "~b")
    saver.put_writes(w, [("n", 3)], "task-b")  # default task path ""
    saver.put_writes(w, [("__interrupt__", "ask")], "task-c", "~a")
    saver.put_writes(w, [("__interrupt__", "ask again")], "task-c", "~a")  # replaces
    saver.put_writes(w, [("n", 99)], "task-a", "~b")  # a task's write is kept: ignored
    ids["c2"] = put(saver, "t", "", ids["c1"], {**values, "n": 2}, {**ones, "n": "2"}, {"n": "2"})
    ids["c3"] = put(
        saver, "t", "", ids["c2"], {**values, "n": 3}, {**ones, "n": "3"}, {"n": "3"}, tag="x"
    )
    ids["c4"] = put(saver, "t", "child:1", None, {"k": "v" * 300}, {"k": "1"}, {"k": "1"})
    ids["c5"] = put(saver, "u", "", None, {"n": 5}, {"n": "1"}, {"n": "1"})
    return ids


def test_get_tuple_gives_back_what_was_put(saver: SQLAlchemySaver, thread: dict[str, str]) -> None:
    first = saver.get_tuple(conf("t", "", thread["c1"]))
    assert first is not None
    assert first.config == conf("t", "", thread["c1"]) and first.parent_config is None
    assert first.checkpoint["channel_values"] == {"n": 1, "mid": MID, "big": BIG, "short": SHORT}
    assert first.metadata == {"source": "loop", "step": 0}
    # LangGraph's order: task path, task id, index; a special channel's write is replaced
    assert first.pending_writes == [
        ("task-b", "n", 3),
        ("task-c", "__interrupt__", "ask again"),
        ("task-a", "n", 2),
        ("task-a", "big", "B" * 600),
    ]
    latest = saver.get_tuple(conf("t"))
    assert latest is not None and latest.config == conf("t", "", thread["c3"])
    assert latest.parent_config == conf("t", "", thread["c2"])
    assert latest.checkpoint["channel_values"]["n"] == 3
    assert latest.checkpoint["channel_values"]["big"] == BIG  # its blob, written once
    assert latest.metadata == {"source": "loop", "step": 0, "tag": "x"}
    assert latest.pending_writes == []
    child = saver.get_tuple(conf("t", "child:1"))
    assert child is not None and child.config == conf("t", "child:1", thread["c4"])
    assert child.checkpoint["channel_values"] == {"k": "v" * 300}
    assert saver.get_tuple(conf("t", "child:2")) is None
    assert saver.get_tuple(conf("t", "", "0" * 32)) is None
    assert saver.get_tuple(conf("nobody")) is None


def test_list_gives_what_get_tuple_gives(saver: SQLAlchemySaver, thread: dict[str, str]) -> None:
    def ids(tuples: Any) -> list[str]:
        return [t.config["configurable"]["checkpoint_id"] for t in tuples]

    c1, c2, c3, c4, c5 = (thread[f"c{i}"] for i in range(1, 6))
    every = list(saver.list(None))
    assert sorted(ids(every)) == sorted(thread.values())
    for got in every:  # each listed tuple is the one get_tuple reads, field by field
        assert isinstance(got, CheckpointTuple)
        assert got == saver.get_tuple(got.config)
    assert ids(saver.list(conf("t", None))) == [c4, c3, c2, c1]  # all its namespaces
    assert ids(saver.list(conf("t"))) == [c3, c2, c1]
    assert ids(saver.list(conf("t", "child:1"))) == [c4]
    assert ids(saver.list(conf("u"))) == [c5]
    assert ids(saver.list(conf("t", "", c2))) == [c2]
    assert ids(saver.list(conf("t"), before=conf("t", "", c3))) == [c2, c1]
    assert ids(saver.list(conf("t"), before=conf("t", "", c2), limit=1)) == [c1]
    assert ids(saver.list(conf("t"), limit=1)) == [c3]
    assert ids(saver.list(conf("t"), limit=2)) == [c3, c2]
    assert ids(saver.list(conf("t"), limit=0)) == []
    assert ids(saver.list(conf("t"), filter={"tag": "x"})) == [c3]
    assert ids(saver.list(None, filter={"tag": "x"})) == [c3]
    assert ids(saver.list(conf("t"), filter={"tag": "y"})) == []
    assert ids(saver.list(conf("nobody"))) == []


def test_list_in_chunks_keeps_each_tuples_own_writes_and_blobs(saver: SQLAlchemySaver) -> None:
    """More checkpoints than one read of ``list`` loads (100): every tuple keeps its own
    values, parent and writes."""
    parent = None
    made = []
    for i in range(130):
        values = {"i": i, "big": f"{i}:" + "x" * 400}
        cid = put(saver, "long", "", parent, values, {"i": f"{i}", "big": f"{i}"}, {"i": f"{i}"})
        saver.put_writes(conf("long", "", cid), [("i", -i)], f"task-{i}")
        made.append((cid, parent, i))
        parent = cid
    listed = list(saver.list(conf("long")))
    assert len(listed) == 130
    for got, (cid, parent_id, i) in zip(listed, reversed(made), strict=True):
        assert got.config == conf("long", "", cid)
        assert got.parent_config == (None if parent_id is None else conf("long", "", parent_id))
        assert got.checkpoint["channel_values"] == {"i": i, "big": f"{i}:" + "x" * 400}
        assert got.pending_writes == [(f"task-{i}", "i", -i)]


def test_small_values_are_inline_and_large_ones_blobs_written_once(
    saver: SQLAlchemySaver, thread: dict[str, str]
) -> None:
    # c1..c3 share version "1" of big: one blob row; n, mid, short fit in the row
    assert blob_rows(saver, "t") == [("", "big", "1"), ("child:1", "k", "1")]
    assert blob_rows(saver, "u") == []
    # the limit is on the serialized size: INLINE_MAX_BYTES fits, one byte more does not
    serde = saver.serde
    fits = next(
        n for n in range(200, 400) if len(serde.dumps_typed("e" * n)[1]) == INLINE_MAX_BYTES
    )
    assert len(serde.dumps_typed("e" * (fits + 1))[1]) == INLINE_MAX_BYTES + 1
    values = {"fits": "e" * fits, "over": "e" * (fits + 1), "none": None, "flag": True}
    versions = dict.fromkeys(values, "1")
    cid = put(saver, "edge", "", None, values, versions, versions)
    assert blob_rows(saver, "edge") == [("", "over", "1")]
    got = saver.get_tuple(conf("edge"))
    assert got is not None and got.checkpoint["channel_values"] == values
    # an unchanged version is not written again; a new one is
    put(saver, "edge", "", cid, values, versions, {})
    put(
        saver,
        "edge",
        "",
        cid,
        {**values, "over": "f" * 300},
        {**versions, "over": "2"},
        {"over": "2"},
    )
    assert blob_rows(saver, "edge") == [("", "over", "1"), ("", "over", "2")]
    latest = saver.get_tuple(conf("edge"))
    assert latest is not None and latest.checkpoint["channel_values"]["over"] == "f" * 300


def test_put_writes_limits_and_empty_writes(saver: SQLAlchemySaver, thread: dict[str, str]) -> None:
    w = conf("t", "", thread["c3"])
    saver.put_writes(w, [], "task-none")  # nothing to store
    saver.put_writes(w, [("n", 7)], "t" * ID_MAX)  # the longest id allowed
    for longer in ("t" * (ID_MAX + 1), "u" * 100):  # shown cut to 80 characters
        with pytest.raises(ValueError) as err:
            saver.put_writes(w, [("n", 8)], longer)
        assert str(err.value) == f"task_id {longer[:80]!r} is longer than {ID_MAX} characters"
    got = saver.get_tuple(w)
    assert got is not None and got.pending_writes == [("t" * ID_MAX, "n", 7)]
    with saver._sync_engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(moa_schema.writes)).scalar()
    assert n == 5  # the fixture's four and this one


def test_writes_in_a_namespace_stay_there(saver: SQLAlchemySaver, thread: dict[str, str]) -> None:
    w = conf("t", "child:1", thread["c4"])
    saver.put_writes(w, [("k", "x"), ("__error__", "boom")], "task-k", "~k")
    child = saver.get_tuple(w)
    assert child is not None
    # a special channel's index is negative: it sorts first
    assert child.pending_writes == [("task-k", "__error__", "boom"), ("task-k", "k", "x")]
    root = saver.get_tuple(conf("t", "", thread["c4"]))
    assert root is None  # c4 is not a checkpoint of the root namespace


def test_next_version_counts_up_and_differs_per_fork(saver: SQLAlchemySaver) -> None:
    shape = re.compile(r"\d{12}\.[0-9a-f]{12}")
    first = saver.get_next_version(None, None)
    assert shape.fullmatch(first) and first.startswith("000000000001.")
    assert saver.get_next_version(first, None).startswith("000000000002.")
    assert saver.get_next_version(7, None).startswith("000000000008.")  # type: ignore[arg-type]
    assert saver.get_next_version(2.0, None).startswith("000000000003.")  # type: ignore[arg-type]
    later = [saver.get_next_version(first, None) for _ in range(20)]
    assert len(set(later)) == 20 and all(shape.fullmatch(v) for v in later)
    assert saver.get_next_version("000000000041.00000000000a", None).startswith("000000000042.")


def test_metadata_from_every_driver_shape() -> None:
    assert _load_json('{"a": 1}') == {"a": 1}
    assert _load_json(b'{"a": 2}') == {"a": 2}
    assert _load_json(bytearray(b'{"a": 3}')) == {"a": 3}
    assert _load_json(memoryview(b'{"a": 4}')) == {"a": 4}
    assert _load_json({"a": 5}) == {"a": 5}
    assert _load_json(None) == {}


def test_put_with_several_new_blobs_at_once(saver: SQLAlchemySaver) -> None:
    """Three new large values in one put (one statement for all of them), then one."""
    values = {"a": "a" * 500, "b": "b" * 501, "c": "c" * 502, "n": 1}
    versions = dict.fromkeys(values, "1")
    first = put(saver, "many", "ns:1", None, values, versions, versions)
    assert blob_rows(saver, "many") == [("ns:1", "a", "1"), ("ns:1", "b", "1"), ("ns:1", "c", "1")]
    got = saver.get_tuple(conf("many", "ns:1"))
    assert got is not None and got.checkpoint["channel_values"] == values
    changed = {**values, "b": "B" * 600}
    put(saver, "many", "ns:1", first, changed, {**versions, "b": "2"}, {"b": "2"})
    assert blob_rows(saver, "many") == [
        ("ns:1", "a", "1"),
        ("ns:1", "b", "1"),
        ("ns:1", "b", "2"),
        ("ns:1", "c", "1"),
    ]
    latest = saver.get_tuple(conf("many", "ns:1"))
    assert latest is not None and latest.checkpoint["channel_values"] == changed
    assert latest.parent_config == conf("many", "ns:1", first)


def test_key_and_channel_limits_are_refused_by_name(saver: SQLAlchemySaver) -> None:
    big = "v" * 400
    longest_channel = "c" * CHANNEL_MAX
    longest_thread, longest_ns = "t" * THREAD_ID_MAX, "n" * THREAD_ID_MAX
    values = {longest_channel: big}
    put(
        saver,
        longest_thread,
        longest_ns,
        None,
        values,
        {longest_channel: "1"},
        {longest_channel: "1"},
    )
    got = saver.get_tuple(conf(longest_thread, longest_ns))
    assert got is not None and got.checkpoint["channel_values"] == values
    assert blob_rows(saver, longest_thread) == [(longest_ns, longest_channel, "1")]
    too_long = "c" * (CHANNEL_MAX + 1)
    with pytest.raises(ValueError) as err:
        put(saver, "limits", "", None, {too_long: big}, {too_long: "1"}, {too_long: "1"})
    assert str(err.value) == f"channel name {too_long[:60]!r}... exceeds {CHANNEL_MAX} chars"
    # a small value of a long channel is inline: no blob row, no limit of the blobs table
    put(saver, "limits", "", None, {too_long: 1}, {too_long: "1"}, {too_long: "1"})
    long_thread = "t" * (THREAD_ID_MAX + 1)
    thread_error = (
        f"thread_id is {THREAD_ID_MAX + 1} characters long; the limit is {THREAD_ID_MAX}: "
        "use a shorter id (e.g. a uuid or a hash of the long one)"
    )
    long_ns = "n" * (THREAD_ID_MAX + 1)
    ns_error = (
        f"checkpoint_ns {long_ns[:60]!r}... is longer than {THREAD_ID_MAX} characters (the "
        "subgraphs are nested too deeply to store)"
    )
    for thread, ns, expected in ((long_thread, "", thread_error), ("limits", long_ns, ns_error)):
        with pytest.raises(ValueError) as err:
            put(saver, thread, ns, None, {"n": 1}, {"n": "1"}, {"n": "1"})
        assert str(err.value) == expected
        with pytest.raises(ValueError) as err:
            saver.put_writes(conf(thread, ns, "0" * 32), [("n", 1)], "task")
        assert str(err.value) == expected
    assert saver.get_tuple(conf(long_thread[:-1])) is None  # nothing of them was written
    assert [t.checkpoint["channel_values"] for t in saver.list(conf("limits", None))] == [
        {too_long: 1}
    ]


def test_put_writes_stores_the_task_path(saver: SQLAlchemySaver) -> None:
    cid = put(saver, "paths", "", None, {"n": 1}, {"n": "1"}, {"n": "1"})
    saver.put_writes(conf("paths", "", cid), [("n", 1)], "task-default")
    saver.put_writes(conf("paths", "", cid), [("n", 2), ("m", 3)], "task-given", "~p")
    w = moa_schema.writes
    with saver._sync_engine.connect() as conn:
        rows = conn.execute(
            select(w.c.task_id, w.c.task_path, w.c.idx, w.c.channel).where(w.c.thread_id == "paths")
        ).all()
    assert sorted(tuple(r) for r in rows) == [
        ("task-default", "", 0, "n"),
        ("task-given", "~p", 0, "n"),
        ("task-given", "~p", 1, "m"),
    ]


def test_put_writes_of_several_big_values_on_mysql(mysql_url: str) -> None:
    """A task's writes that together exceed MariaDB's max_allowed_packet (16 MB by default)
    are not sent as one statement: 4 values of 6 MB each are stored and read back."""
    values = [os.urandom(6 * 1024 * 1024) for _ in range(4)]
    with SQLAlchemySaver.from_url(mysql_url) as saver:
        saver.setup()
        cid = put(saver, "bigw", "", None, {"n": 1}, {"n": "1"}, {"n": "1"})
        w = conf("bigw", "", cid)
        saver.put_writes(w, [(f"v{i}", v) for i, v in enumerate(values)], "task-big")
        saver.put_writes(w, [("small", 1), ("small2", b"x" * 1000)], "task-small")
        got = saver.get_tuple(w)
    assert got is not None
    assert got.pending_writes == [
        *[("task-big", f"v{i}", v) for i, v in enumerate(values)],
        ("task-small", "small", 1),
        ("task-small", "small2", b"x" * 1000),
    ]


def head(saver: SQLAlchemySaver, thread: str) -> tuple[str, Any]:
    h = moa_schema.heads
    with saver._sync_engine.connect() as conn:
        row = conn.execute(
            select(h.c.checkpoint_id, h.c.updated_at).where(h.c.thread_id == thread)
        ).one()
    return row[0], row[1]


def test_the_head_only_moves_to_a_later_checkpoint(saver: SQLAlchemySaver) -> None:
    # MySQL creates-or-advances the head in one statement (its assignments in order)
    older, newer, newest = empty_checkpoint(), empty_checkpoint(), empty_checkpoint()
    assert older["id"] < newer["id"] < newest["id"]
    md = {"source": "loop", "step": 0}
    saver.put(conf("h"), newer, md, {})
    assert head(saver, "h")[0] == newer["id"]
    # a time the saver never writes, so that a move of it shows (on MySQL the column is a
    # FLOAT, read back to 6 significant digits: two real times would often compare equal)
    h = moa_schema.heads
    with saver._sync_engine.begin() as conn:
        conn.execute(h.update().where(h.c.thread_id == "h").values(updated_at=1000.0))
    first = (newer["id"], 1000.0)
    assert head(saver, "h") == first
    saver.put(conf("h"), older, md, {})  # a late put of an older checkpoint
    assert head(saver, "h") == first  # neither the id nor its time moved
    saver.put(conf("h"), newer, md, {})  # the same checkpoint again
    assert head(saver, "h") == first
    before = time.time()
    saver.put(conf("h", "", newer["id"]), newest, md, {})
    now = head(saver, "h")
    assert now[0] == newest["id"]
    assert now[1] == pytest.approx(before, rel=1e-5)  # the time of this put
    latest = saver.get_tuple(conf("h"))
    assert latest is not None and latest.config["configurable"]["checkpoint_id"] == newest["id"]
    assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(conf("h"))] == [
        newest["id"],
        newer["id"],
        older["id"],
    ]


def test_pending_writes_in_langgraphs_order(saver: SQLAlchemySaver) -> None:
    """Task path first ("" before any other), then task id, then index, whatever the order
    of the rows in the table."""
    cid = put(saver, "order", "", None, {"n": 1}, {"n": "1"}, {"n": "1"})
    w = conf("order", "", cid)
    saver.put_writes(w, [("x", "a0"), ("y", "a1")], "a", "~p")
    saver.put_writes(w, [("x", "b0")], "b", "~p")
    saver.put_writes(w, [("x", "c0")], "c", "A")
    saver.put_writes(w, [("x", "d0")], "d", "")
    got = saver.get_tuple(w)
    assert got is not None
    assert got.pending_writes == [
        ("d", "x", "d0"),
        ("c", "x", "c0"),
        ("a", "x", "a0"),
        ("a", "y", "a1"),
        ("b", "x", "b0"),
    ]


def test_two_new_blobs_in_one_put(saver: SQLAlchemySaver) -> None:
    values = {"a": "a" * 500, "b": "b" * 500}
    versions = dict.fromkeys(values, "1")
    put(saver, "two", "", None, values, versions, versions)
    assert blob_rows(saver, "two") == [("", "a", "1"), ("", "b", "1")]
    got = saver.get_tuple(conf("two"))
    assert got is not None and got.checkpoint["channel_values"] == values


def test_a_refused_write_names_its_namespace(saver: SQLAlchemySaver) -> None:
    """A write whose lease token does not hold is refused naming its thread, namespace,
    token and the holder; nothing of it is stored."""

    async def hold() -> None:
        url = saver._sync_engine.url.render_as_string(hide_password=False)
        async with RunRegistry.from_url(url) as reg:
            await reg.setup()
            assert await reg.acquire_lease("fenced", "A")

    asyncio.run(hold())
    stale = {**conf("fenced", "child:1")["configurable"], LEASE_CONFIG_KEY: "B"}
    c = empty_checkpoint()
    c["channel_values"], c["channel_versions"] = {"n": 1}, {"n": "1"}
    expected = (
        "thread 'fenced' (namespace 'child:1'): write refused, the thread's lease is held by "
        "another run (this writer's lease token 'B' is stale); this run no longer owns the "
        "thread and must stop"
    )
    refusals = []
    with pytest.raises(CheckpointConflictError) as info:
        saver.put({"configurable": stale}, c, {"source": "loop", "step": 0}, {"n": "1"})
    refusals.append(info.value)
    with pytest.raises(CheckpointConflictError) as info:
        saver.put_writes({"configurable": {**stale, "checkpoint_id": c["id"]}}, [("n", 2)], "t")
    refusals.append(info.value)
    for err in refusals:
        assert str(err) == expected
        assert (err.thread_id, err.checkpoint_ns, err.token, err.holder) == (
            "fenced",
            "child:1",
            "B",
            "A",
        )
    assert saver.get_tuple(conf("fenced", "child:1")) is None


def test_metadata_values_json_cannot_hold_are_stored_as_text(saver: SQLAlchemySaver) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5)
    put(saver, "md", "", None, {"n": 1}, {"n": "1"}, {"n": "1"}, when=when, name="é")
    got = saver.get_tuple(conf("md"))
    assert got is not None
    assert got.metadata == {"source": "loop", "step": 0, "when": str(when), "name": "é"}
