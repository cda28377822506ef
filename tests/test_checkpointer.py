"""The SQLAlchemy checkpointer on real databases: graphs, fencing, types, encryption,
schema and migrations, errors, crashes, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import gc
import logging
import operator
import os
import subprocess
import sys
import threading
import time
import uuid
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from pydantic import BaseModel
from sqlalchemy import create_engine, event, func, insert, select, text
from sqlalchemy.exc import SAWarning

from langgraph_moa.persistence import (
    SCHEMA_VERSION,
    AsyncSQLAlchemySaver,
    DatabaseUnavailableError,
    DatabaseURLError,
    DecryptionError,
    SchemaVersionError,
    SQLAlchemySaver,
    async_url,
    make_serde,
    migrations,
    schema_allowlist,
    sync_url,
)
from langgraph_moa.persistence import schema as moa_schema
from langgraph_moa.persistence.retention import parse_duration, prune_command

ROOT = Path(__file__).resolve().parents[1]


class State(TypedDict):
    value: int
    trace: Annotated[list[str], operator.add]


def linear_graph(n: int = 10) -> StateGraph:
    g = StateGraph(State)
    prev = START
    for i in range(n):
        name = f"n{i}"
        g.add_node(name, lambda s, _n=name: {"value": s["value"] + 1, "trace": [_n]})
        g.add_edge(prev, name)
        prev = name
    g.add_edge(prev, END)
    return g


def cfg(thread: str, **extra: Any) -> Any:
    return {"configurable": {"thread_id": thread, **extra}}


def run_script(code: str, *args: str, timeout: float = 240) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` in a fresh interpreter (a real second process)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- URLs ------------------------------------------------------------------------------


def test_urls_switch_drivers() -> None:
    assert sync_url("sqlite:///a.db") == "sqlite:///a.db"
    assert async_url("sqlite:///a.db") == "sqlite+aiosqlite:///a.db"
    assert sync_url("sqlite+aiosqlite:///a.db") == "sqlite:///a.db"
    assert async_url("postgresql://u:p@h/db") == "postgresql+psycopg_async://u:p@h/db"
    assert async_url("postgres://u@h/db") == "postgresql+psycopg_async://u@h/db"
    assert sync_url("postgresql+asyncpg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert async_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg_async://u@h/db"
    assert async_url("mysql://root@h/db") == "mysql+aiomysql://root@h/db"
    assert sync_url("mysql+aiomysql://root@h/db?charset=utf8mb4") == (
        "mysql+pymysql://root@h/db?charset=utf8mb4"
    )
    assert async_url("mariadb+pymysql://root@h/db") == "mariadb+aiomysql://root@h/db"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty"),
        ("not a url", "cannot parse"),
        ("oracle://scott@h/db", "not supported"),
        ("postgresql+pg8000://u@h/db", "driver 'pg8000'"),
    ],
)
def test_bad_urls_say_what_to_do(url: str, words: str) -> None:
    with pytest.raises(DatabaseURLError, match=words):
        sync_url(url)


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    with (
        SQLAlchemySaver.from_url("postgresql://postgres:secret@127.0.0.1:1/nowhere") as saver,
        pytest.raises(DatabaseUnavailableError) as info,
    ):
        saver.get_tuple(cfg("t"))
    message = str(info.value)
    assert "cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere" in message
    assert "secret" not in message and "server is running" in message
    missing = tmp_path / "no" / "such" / "dir" / "x.sqlite"
    with (
        SQLAlchemySaver.from_url(f"sqlite:///{missing}") as saver,
        pytest.raises(DatabaseUnavailableError, match="directory of the SQLite file"),
    ):
        saver.setup()


async def test_unreachable_database_async() -> None:
    async with AsyncSQLAlchemySaver.from_url("mysql://root@127.0.0.1:1/nowhere") as saver:
        with pytest.raises(DatabaseUnavailableError, match="cannot connect"):
            await saver.aget_tuple(cfg("t"))


# -- graphs ----------------------------------------------------------------------------


def test_graph_runs_sync(db_url: str) -> None:
    with SQLAlchemySaver.from_url(db_url) as saver:
        saver.setup()
        app = linear_graph().compile(checkpointer=saver)
        out = app.invoke({"value": 0, "trace": []}, cfg("t1"))
        assert out == {"value": 10, "trace": [f"n{i}" for i in range(10)]}
        history = list(app.get_state_history(cfg("t1")))
        assert [h.metadata["step"] for h in history] == list(range(10, -2, -1))
        assert app.get_state(cfg("t1")).values == out
        # the second run continues the thread
        again = app.invoke({"value": 0, "trace": ["x"]}, cfg("t1"))
        assert again["trace"][-11:] == ["x", *[f"n{i}" for i in range(10)]]


async def test_graph_runs_async(db_url: str) -> None:
    async with AsyncSQLAlchemySaver.from_url(db_url) as saver:
        await saver.setup()
        app = linear_graph().compile(checkpointer=saver)
        outs = await asyncio.gather(
            *(app.ainvoke({"value": i, "trace": []}, cfg(f"a{i}")) for i in range(4))
        )
        assert [o["value"] for o in outs] == [10, 11, 12, 13]
        state = await app.aget_state(cfg("a2"))
        assert state.values["value"] == 12
        # the sync methods work too (from a thread other than the event loop's)
        sync_state = await asyncio.to_thread(app.get_state, cfg("a3"))
        assert sync_state.values["value"] == 13
        assert len([c async for c in saver.alist(cfg("a1"), limit=3)]) == 3


def test_unchanged_channel_value_is_stored_once(db_url: str) -> None:
    class Doc(TypedDict):
        big: str
        n: int

    g = StateGraph(Doc)
    for i in range(5):
        g.add_node(f"s{i}", lambda s: {"n": s["n"] + 1})
    g.add_edge(START, "s0")
    for i in range(4):
        g.add_edge(f"s{i}", f"s{i + 1}")
    g.add_edge("s4", END)
    with SQLAlchemySaver.from_url(db_url) as saver:
        app = g.compile(checkpointer=saver)
        app.invoke({"big": "x" * 5000, "n": 0}, cfg("big"))
        with saver.engine.connect() as conn:
            rows = conn.execute(
                select(func.count()).where(
                    moa_schema.blobs.c.thread_id == "big", moa_schema.blobs.c.channel == "big"
                )
            ).scalar()
            n_checkpoints = conn.execute(
                select(func.count()).where(moa_schema.checkpoints.c.thread_id == "big")
            ).scalar()
        assert n_checkpoints == 7
        assert rows == 1  # written once, read by all six checkpoints that hold it
        for snapshot in app.get_state_history(cfg("big")):
            if snapshot.metadata["step"] >= 0:
                assert snapshot.values["big"] == "x" * 5000


# -- fencing ---------------------------------------------------------------------------


def _put(saver: SQLAlchemySaver, thread: str, parent: str | None, **md: Any) -> str:
    config = cfg(thread, checkpoint_ns="")
    if parent:
        config["configurable"]["checkpoint_id"] = parent
    c = empty_checkpoint()
    c["channel_values"] = {"v": "x" * 600}
    c["channel_versions"] = {"v": saver.get_next_version(None, None)}
    stored = saver.put(config, c, {"source": "loop", "step": 0, **md}, c["channel_versions"])
    return str(stored["configurable"]["checkpoint_id"])


def test_a_put_at_any_parent_is_stored_like_langgraphs_savers(db_url: str) -> None:
    """No lease token, no fencing: a second child of an old checkpoint is stored and,
    having the larger id, becomes the latest (what LangGraph's own savers do)."""
    with SQLAlchemySaver.from_url(db_url) as a, SQLAlchemySaver.from_url(db_url) as b:
        root = _put(a, "t", None)
        first = _put(a, "t", root)
        second = _put(b, "t", root)
        assert a.get_tuple(cfg("t")).config["configurable"]["checkpoint_id"] == second  # type: ignore[union-attr]
        assert [t.config["configurable"]["checkpoint_id"] for t in a.list(cfg("t"))] == [
            second,
            first,
            root,
        ]
        # re-putting an existing checkpoint (a retry) does not move the latest back
        again = a.get_tuple(cfg("t", checkpoint_id=first))
        assert again is not None
        a.put(cfg("t", checkpoint_ns="", checkpoint_id=root), again.checkpoint, again.metadata, {})
        assert b.get_tuple(cfg("t")).config["configurable"]["checkpoint_id"] == second  # type: ignore[union-attr]


def ask_graph(saver: Any) -> Any:
    def sub() -> Any:
        g = StateGraph(State)
        g.add_node("s1", lambda s: {"value": s["value"] + 10, "trace": ["s1"]})
        g.add_edge(START, "s1")
        g.add_edge("s1", END)
        return g.compile()

    def ask(s: State) -> dict[str, Any]:
        answer = interrupt("how much?")
        return {"value": s["value"] + int(answer), "trace": ["ask"]}

    g = StateGraph(State)
    g.add_node("a", lambda s: {"value": s["value"] + 1, "trace": ["a"]})
    g.add_node("sub", sub())
    g.add_node("ask", ask)
    g.add_edge(START, "a")
    g.add_edge("a", "sub")
    g.add_edge("sub", "ask")
    g.add_edge("ask", END)
    return g.compile(checkpointer=saver)


def test_resume_time_travel_and_forks_through_the_sync_api(db_url: str) -> None:
    with SQLAlchemySaver.from_url(db_url) as saver:
        app = ask_graph(saver)
        for durability in ("sync", "async", "exit"):
            thread = cfg(f"d-{durability}")
            app.invoke({"value": 0, "trace": []}, thread, durability=durability)
            done = app.invoke(Command(resume="5"), thread, durability=durability)
            assert done["value"] == 16
        t = cfg("t")
        app.invoke({"value": 0, "trace": []}, t)
        assert app.invoke(Command(resume="5"), t)["value"] == 16
        history = list(app.get_state_history(t))
        before_sub = next(h for h in history if h.next == ("sub",))
        # time travel: replay from an old checkpoint, then answer the interrupt again
        replayed = app.invoke(None, before_sub.config)
        assert replayed["value"] == 11 and "__interrupt__" in replayed
        assert app.invoke(Command(resume="7"), t)["value"] == 18
        # update_state on an old checkpoint, continue from the fork
        fork = app.update_state(before_sub.config, {"value": 1000})
        assert app.invoke(None, fork)["value"] == 1010
        assert app.invoke(Command(resume="1"), t)["value"] == 1011
        # new input from an old checkpoint
        assert app.invoke({"value": 0, "trace": []}, before_sub.config)["value"] == 11
        assert app.invoke(Command(resume="2"), t)["value"] == 13
        assert app.get_state(t).values["value"] == 13


def test_resume_after_a_crashed_run(db_url: str) -> None:
    """A node fails mid-run (as a crash would stop it); the next run resumes from the
    last checkpoint and does not redo finished nodes."""
    calls: dict[str, int] = {}
    fail = {"on": True}

    def node(name: str) -> Any:
        def fn(s: State) -> dict[str, Any]:
            calls[name] = calls.get(name, 0) + 1
            if name == "n2" and fail["on"]:
                raise RuntimeError("crash")
            return {"value": s["value"] + 1, "trace": [name]}

        return fn

    g = StateGraph(State)
    for n in ("n0", "n1", "n2", "n3"):
        g.add_node(n, node(n))
    g.add_edge(START, "n0")
    g.add_edge("n0", "n1")
    g.add_edge("n1", "n2")
    g.add_edge("n2", "n3")
    g.add_edge("n3", END)
    with SQLAlchemySaver.from_url(db_url) as saver:
        app = g.compile(checkpointer=saver)
        with pytest.raises(RuntimeError, match="crash"):
            app.invoke({"value": 0, "trace": []}, cfg("c"))
        fail["on"] = False
    with SQLAlchemySaver.from_url(db_url) as fresh:  # as a new process would
        app = g.compile(checkpointer=fresh)
        out = app.invoke(None, cfg("c"))
    assert out == {"value": 4, "trace": ["n0", "n1", "n2", "n3"]}
    assert calls == {"n0": 1, "n1": 1, "n2": 2, "n3": 1}


# -- types and encryption --------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"


class Note(BaseModel):
    title: str
    tags: list[str]


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Typed(TypedDict):
    note: Note
    point: Point
    color: Color


def typed_graph(saver: Any) -> Any:
    g = StateGraph(Typed)
    g.add_node("touch", lambda s: {"point": Point(s["point"].x + 1, s["point"].y)})
    g.add_edge(START, "touch")
    g.add_edge("touch", END)
    return g.compile(checkpointer=saver)


def test_registered_types_come_back_as_themselves(db_url: str) -> None:
    value = {"note": Note(title="n" * 300, tags=["a"]), "point": Point(1, 2), "color": Color.RED}
    with SQLAlchemySaver.from_url(db_url, serde_allowlist=schema_allowlist(Typed)) as saver:
        app = typed_graph(saver)
        app.invoke(value, cfg("typed"))
    with SQLAlchemySaver.from_url(db_url, serde_allowlist=[Note, Point, Color]) as saver:
        state = typed_graph(saver).get_state(cfg("typed")).values
        assert state["note"] == value["note"] and isinstance(state["note"], Note)
        assert state["point"] == Point(2, 2)
        assert state["color"] is Color.RED
    strict_serde = make_serde(trust_imported_types=False)
    with SQLAlchemySaver.from_url(db_url, serde=strict_serde) as strict:  # unregistered: data
        state = typed_graph(strict).get_state(cfg("typed")).values
        assert not isinstance(state["note"], Note)


def test_encrypted_values_are_unreadable_at_rest(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "launch code 0000-" + uuid.uuid4().hex
    monkeypatch.setenv("LANGGRAPH_AES_KEY", "k" * 32)
    with SQLAlchemySaver.from_url(sqlite_url, encrypt=True) as saver:
        app = linear_graph(2).compile(checkpointer=saver)
        app.invoke({"value": 0, "trace": [secret, "y" * 400]}, cfg("enc"))
        assert secret in app.get_state(cfg("enc")).values["trace"]
    raw = b"".join(p.read_bytes() for p in Path(sqlite_url[10:]).parent.glob("moa.sqlite*"))
    assert secret.encode() not in raw
    monkeypatch.setenv("LANGGRAPH_AES_KEY", "short")
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        SQLAlchemySaver.from_url(sqlite_url, encrypt=True).__enter__()
    monkeypatch.delenv("LANGGRAPH_AES_KEY")
    with pytest.raises(ValueError, match="LANGGRAPH_AES_KEY"):
        SQLAlchemySaver.from_url(sqlite_url, encrypt=True).__enter__()


class Noted(TypedDict):
    note: str
    big: str


def test_encryption_on_every_database_and_a_wrong_key(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channel values (inline and blobs) and writes are ciphertext at rest; metadata is not
    (README says so); a wrong key is a clear error that changes nothing."""
    secret = "SECRET" + uuid.uuid4().hex[:10]
    graph = StateGraph(Noted)
    graph.add_node("n", lambda s: {"note": s["note"] + "!", "big": secret * 40})
    graph.add_edge(START, "n")
    graph.add_edge("n", END)
    config = {**cfg("enc"), "metadata": {"who": secret}}
    monkeypatch.setenv("LANGGRAPH_AES_KEY", "k" * 32)
    with SQLAlchemySaver.from_url(db_url, encrypt=True) as saver:
        app = graph.compile(checkpointer=saver)
        app.invoke({"note": secret, "big": ""}, config)
        assert app.get_state(cfg("enc")).values == {"note": secret + "!", "big": secret * 40}

    def plaintext() -> tuple[set[tuple[str, str]], int]:
        found: set[tuple[str, str]] = set()
        rows = 0
        engine = create_engine(db_url)
        with engine.connect() as conn:
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
                for row in conn.execute(text(f"SELECT * FROM moa_{table}")):
                    rows += 1
                    for column, value in row._mapping.items():
                        raw = bytes(value) if isinstance(value, bytes | memoryview) else str(value)
                        if secret.encode() in (raw if isinstance(raw, bytes) else raw.encode()):
                            found.add((table, column))
        engine.dispose()
        return found, rows

    found, rows = plaintext()
    assert found == {("checkpoints", "metadata")}, found  # only the metadata is readable
    monkeypatch.setenv("LANGGRAPH_AES_KEY", "z" * 32)
    with SQLAlchemySaver.from_url(db_url, encrypt=True) as wrong:
        with pytest.raises(DecryptionError, match="another AES key"):
            wrong.get_tuple(cfg("enc"))
        with pytest.raises(DecryptionError, match="LANGGRAPH_AES_KEY"):
            graph.compile(checkpointer=wrong).invoke({"note": "x", "big": ""}, cfg("enc"))
    assert plaintext() == (found, rows)  # nothing written, nothing lost
    monkeypatch.setenv("LANGGRAPH_AES_KEY", "k" * 32)
    with SQLAlchemySaver.from_url(db_url, encrypt=True) as saver:
        values = graph.compile(checkpointer=saver).get_state(cfg("enc")).values
        assert values == {"note": secret + "!", "big": secret * 40}


# -- schema ----------------------------------------------------------------------------

SETUP_SCRIPT = """
import sys
from langgraph_moa.persistence import SQLAlchemySaver
with SQLAlchemySaver.from_url(sys.argv[1]) as saver:
    saver.setup()
    saver.setup()
print("ok")
"""


_checkpoint_versions = (
    select(migrations.table.c.version)
    .where(migrations.table.c.component == "checkpoints")
    .order_by(migrations.table.c.version)
)


def test_setup_is_idempotent_and_safe_from_several_processes(db_url: str) -> None:
    procs = [run_script(SETUP_SCRIPT, db_url) for _ in range(4)]
    for p in procs:
        out, errs = p.communicate(timeout=240)
        assert p.returncode == 0, errs
        assert out.strip() == "ok"
    with SQLAlchemySaver.from_url(db_url) as saver:
        saver.setup()
        with saver.engine.connect() as conn:
            versions = conn.execute(_checkpoint_versions).scalars().all()
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_schema_newer_than_the_code_is_refused(db_url: str) -> None:
    with SQLAlchemySaver.from_url(db_url) as saver:
        saver.setup()
        with saver.engine.begin() as conn:
            conn.execute(
                insert(migrations.table).values(
                    component="checkpoints",
                    version=SCHEMA_VERSION + 5,
                    name="from the future",
                    applied_at=datetime.now(),
                )
            )
    with SQLAlchemySaver.from_url(db_url) as saver, pytest.raises(SchemaVersionError) as info:
        saver.get_tuple(cfg("t"))
    assert info.value.found == SCHEMA_VERSION + 5
    assert "upgrade langgraph-moa" in str(info.value)


def test_missing_schema_without_auto_setup(sqlite_url: str) -> None:
    with SQLAlchemySaver.from_url(sqlite_url, auto_setup=False) as saver:
        with pytest.raises(SchemaVersionError, match=r"missing; call saver.setup\(\)"):
            saver.get_tuple(cfg("t"))
        saver.setup()
        assert saver.get_tuple(cfg("t")) is None


def test_a_later_migration_upgrades_the_store_in_place(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SQLAlchemySaver.from_url(db_url) as saver:
        first = _put(saver, "keep", None)

    def v2(conn: Any) -> None:
        conn.execute(text("CREATE TABLE moa_checkpoint_v2_probe (id INTEGER PRIMARY KEY)"))

    steps = [*migrations.STEPS["checkpoints"], migrations.Step("a probe table", v2)]
    monkeypatch.setitem(migrations.STEPS, "checkpoints", steps)
    with SQLAlchemySaver.from_url(db_url) as saver:
        got = saver.get_tuple(cfg("keep"))  # auto-migrates on first use
        assert got is not None and got.config["configurable"]["checkpoint_id"] == first
        with saver.engine.connect() as conn:
            versions = conn.execute(_checkpoint_versions).scalars().all()
            conn.execute(text("SELECT count(*) FROM moa_checkpoint_v2_probe"))
    assert versions == list(range(1, SCHEMA_VERSION + 2))


# -- consistency after failures --------------------------------------------------------


def test_a_failed_put_leaves_the_previous_checkpoint(sqlite_url: str) -> None:
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        first = _put(saver, "t", None)
        with saver.engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TRIGGER boom BEFORE INSERT ON moa_checkpoints "
                    "WHEN NEW.parent_checkpoint_id IS NOT NULL "
                    "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
            )
        with pytest.raises(Exception, match="disk on fire"):
            _put(saver, "t", first)
        latest = saver.get_tuple(cfg("t"))
        assert latest is not None and latest.config["configurable"]["checkpoint_id"] == first
        with saver.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER boom"))
            n_blobs = conn.execute(select(func.count()).select_from(moa_schema.blobs)).scalar()
        assert n_blobs == 1  # the failed put's blob was rolled back with it
        _put(saver, "t", first)  # the head did not move: the chain continues


KILL_SCRIPT = """
import sys
from langgraph_moa.persistence import SQLAlchemySaver
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import empty_checkpoint
with SQLAlchemySaver.from_url(sys.argv[1]) as saver:
    parent = None
    i = 0
    while True:
        config = {"configurable": {"thread_id": "k", "checkpoint_ns": ""}}
        if parent:
            config["configurable"]["checkpoint_id"] = parent
        c = empty_checkpoint()
        c["channel_values"] = {"big": str(i) * 400, "n": i}
        c["channel_versions"] = {"big": saver.get_next_version(None, None), "n": i + 1}
        parent = saver.put(config, c, {"source": "loop", "step": i}, c["channel_versions"])[
            "configurable"]["checkpoint_id"]
        saver.put_writes({"configurable": {**config["configurable"], "checkpoint_id": parent}},
                         [("n", i), ("big", "w" * 500)], f"task-{i}")
        i += 1
        if i == 20:
            print("running", flush=True)
"""


@pytest.mark.slow
def test_killed_writer_leaves_a_consistent_store(db_url: str) -> None:
    with SQLAlchemySaver.from_url(db_url) as saver:
        saver.setup()
    proc = run_script(KILL_SCRIPT, db_url)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running", proc.stderr.read() if proc.stderr else ""
    threading.Event().wait(0.5)
    proc.kill()
    proc.wait(timeout=30)
    with SQLAlchemySaver.from_url(db_url) as saver:
        latest = saver.get_tuple(cfg("k"))
        assert latest is not None
        n = latest.checkpoint["channel_values"]["n"]
        assert n >= 19 and latest.checkpoint["channel_values"]["big"] == str(n) * 400
        every = list(saver.list(cfg("k")))
        assert len(every) == n + 1
        assert [t.metadata["step"] for t in every] == list(range(n, -1, -1))
        for t in every:  # each checkpoint has its value: no put was half stored
            assert t.checkpoint["channel_values"]["big"] == str(t.metadata["step"]) * 400
        with saver.engine.connect() as conn:
            head = conn.execute(select(moa_schema.heads.c.checkpoint_id)).scalar()
        assert head == latest.config["configurable"]["checkpoint_id"]
        # the thread goes on from where the killed writer stopped
        _put(saver, "k", head)


WRITER_SCRIPT = """
import operator, sys
from typing import Annotated, TypedDict
from langgraph.graph import END, START, StateGraph
from langgraph_moa.persistence import SQLAlchemySaver

class State(TypedDict):
    value: int
    trace: Annotated[list[str], operator.add]

g = StateGraph(State)
prev = START
for i in range(10):
    g.add_node(f"n{i}", lambda s, _n=f"n{i}": {"value": s["value"] + 1, "trace": [_n * 80]})
    g.add_edge(prev, f"n{i}")
    prev = f"n{i}"
g.add_edge(prev, END)
me = sys.argv[2]
with SQLAlchemySaver.from_url(sys.argv[1]) as saver:
    app = g.compile(checkpointer=saver)
    for r in range(int(sys.argv[3])):
        out = app.invoke({"value": 0, "trace": []}, {"configurable": {"thread_id": f"{me}-{r}"}})
        assert out["value"] == 10
        if r % 5 == 4:
            saver.prune_to_last([f"{me}-{r - 1}"], keep=3)
print("done", me)
"""


@pytest.mark.slow
def test_four_processes_write_one_sqlite_file(sqlite_url: str) -> None:
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        saver.setup()
    runs = 15
    procs = [run_script(WRITER_SCRIPT, sqlite_url, f"p{i}", str(runs)) for i in range(4)]
    for p in procs:
        out, errs = p.communicate(timeout=280)
        assert p.returncode == 0, errs
        assert "locked" not in errs and out.startswith("done")
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        threads = {t.config["configurable"]["thread_id"] for t in saver.list(None)}
        assert len(threads) == 4 * runs
        for i in range(4):
            assert (
                saver.get_tuple(cfg(f"p{i}-{runs - 1}")).checkpoint["channel_values"][  # type: ignore[union-attr]
                    "value"
                ]
                == 10
            )
            assert len(list(saver.list(cfg(f"p{i}-3")))) == 3  # pruned while others wrote


# -- thread management and retention ---------------------------------------------------


def _thread(saver: SQLAlchemySaver, thread: str, n: int, run_id: str = "r") -> list[str]:
    ids: list[str] = []
    for i in range(n):
        config = cfg(thread, checkpoint_ns="")
        if ids:
            config["configurable"]["checkpoint_id"] = ids[-1]
        c = empty_checkpoint()
        c["channel_values"] = {"big": f"{i}" * 500, "small": i}
        c["channel_versions"] = {"big": f"{i:04d}", "small": f"{i:04d}"}
        md = {"source": "loop", "step": i, "run_id": run_id}
        stored = saver.put(config, c, md, c["channel_versions"])
        ids.append(stored["configurable"]["checkpoint_id"])
        saver.put_writes(stored, [("small", i)], f"task-{i}")
    return ids


def _count(saver: SQLAlchemySaver, table: Any, thread: str) -> int:
    with saver.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(table.c.thread_id == thread)).scalar())


def test_prune_to_last_keeps_newest_and_collects_blobs(db_url: str) -> None:
    with SQLAlchemySaver.from_url(db_url) as saver:
        ids = _thread(saver, "long", 8)
        _thread(saver, "other", 3)
        assert saver.prune_to_last(["long"], keep=3) == 5
        kept = [t.config["configurable"]["checkpoint_id"] for t in saver.list(cfg("long"))]
        assert kept == ids[:-4:-1]
        oldest = saver.get_tuple(cfg("long", checkpoint_id=ids[5]))
        assert oldest is not None and oldest.parent_config is None
        assert oldest.pending_writes == [("task-5", "small", 5)]
        assert _count(saver, moa_schema.blobs, "long") == 3
        assert _count(saver, moa_schema.writes, "long") == 3
        assert len(list(saver.list(cfg("other")))) == 3
        assert saver.get_tuple(cfg("long")).checkpoint["channel_values"]["big"] == "7" * 500  # type: ignore[union-attr]
        _put(saver, "long", ids[-1])  # the chain continues from the head


def test_delete_older_than_and_prune_command(db_url: str) -> None:
    with SQLAlchemySaver.from_url(db_url) as saver:
        _thread(saver, "old", 2)
        _thread(saver, "new", 5)
        with saver.engine.begin() as conn:
            conn.execute(
                moa_schema.heads.update()
                .where(moa_schema.heads.c.thread_id == "old")
                .values(updated_at=moa_schema.heads.c.updated_at - 10 * 86400)
            )
        assert saver.delete_older_than(timedelta(days=30)) == 0
    report = prune_command(db_url, keep_last=2, older_than="7d")
    assert report.threads_deleted == 1 and report.checkpoints_deleted == 3
    with SQLAlchemySaver.from_url(db_url) as saver:
        assert saver.get_tuple(cfg("old")) is None
        assert _count(saver, moa_schema.blobs, "old") == 0
        assert len(list(saver.list(cfg("new")))) == 2


def test_head_times_keep_sub_second_precision(db_url: str) -> None:
    """``updated_at`` is a double everywhere: a single-precision FLOAT (what ``sa.Float``
    made on MySQL/MariaDB) holds an epoch time to 128 s, which told threads 40 s apart as
    one age and stamped writes minutes off."""
    with SQLAlchemySaver.from_url(db_url) as saver:
        before = time.time()
        _thread(saver, "a", 1)
        saver.copy_thread("a", "b")
        after = time.time()
        _thread(saver, "c", 1)
        heads = moa_schema.heads
        with saver.engine.connect() as conn:
            stamped = dict(conn.execute(select(heads.c.thread_id, heads.c.updated_at)).all())
        assert before - 1e-3 <= stamped["a"] <= stamped["b"] <= after + 1e-3
        # two heads 40 s apart inside one 128 s step of float32, an hour ago
        base = (time.time() - 3600) // 128 * 128
        with saver.engine.begin() as conn:
            for thread, at in (
                ("a", base + 10.25),
                ("b", base + 50.5),
                ("c", 1_990_000_000.123456),
            ):
                conn.execute(
                    heads.update().where(heads.c.thread_id == thread).values(updated_at=at)
                )
        with saver.engine.connect() as conn:
            back = dict(conn.execute(select(heads.c.thread_id, heads.c.updated_at)).all())
        assert abs(back["c"] - 1_990_000_000.123456) < 1e-3
        assert (back["a"], back["b"]) == (base + 10.25, base + 50.5)
        # the cutoff falls between them (20 s either side for this test's own run time)
        assert saver.delete_older_than(timedelta(seconds=time.time() - (base + 30))) == 1
        assert saver.get_tuple(cfg("a")) is None
        assert saver.get_tuple(cfg("b")) is not None and saver.get_tuple(cfg("c")) is not None


def test_moa_prune_command_line(sqlite_url: str) -> None:
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        _thread(saver, "t", 4)
    done = subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", "prune", "--db", sqlite_url, "--keep-last",
         "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"checkpoints_deleted": 3' in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", "prune", "--db", sqlite_url,
         "--older-than", "soon"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "30d" in bad.stderr


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="has no unit"):
        parse_duration("45")  # seconds or days? say it
    with pytest.raises(ValueError, match=r"e\.g\. 30d"):
        parse_duration("tomorrow")


def test_delete_for_runs_removes_their_checkpoints_and_blobs(db_url: str) -> None:
    with SQLAlchemySaver.from_url(db_url) as saver:
        ids = _thread(saver, "t", 3, run_id="first")
        config = cfg("t", checkpoint_ns="", checkpoint_id=ids[-1])
        c = empty_checkpoint()
        c["channel_values"] = {"big": "z" * 500}
        c["channel_versions"] = {"big": "9999"}
        saver.put(config, c, {"source": "loop", "step": 3, "run_id": "second"}, {"big": "9999"})
        saver.delete_for_runs(["second"])
        latest = saver.get_tuple(cfg("t"))
        assert latest is not None and latest.config["configurable"]["checkpoint_id"] == ids[-1]
        assert _count(saver, moa_schema.blobs, "t") == 3
        _put(saver, "t", ids[-1])  # the head moved back: the chain continues
        saver.delete_for_runs(["first"])
        assert [t.metadata.get("run_id") for t in saver.list(cfg("t"))] == [None]


def test_copy_thread_refuses_an_existing_target(sqlite_url: str) -> None:
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        _thread(saver, "a", 2)
        saver.copy_thread("a", "b")
        assert saver.get_tuple(cfg("b")).checkpoint["channel_values"]["big"] == "1" * 500  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="already has checkpoints"):
            saver.copy_thread("a", "b")


def test_overlong_thread_id_is_refused(sqlite_url: str) -> None:
    with SQLAlchemySaver.from_url(sqlite_url) as saver, pytest.raises(ValueError, match="255"):
        _put(saver, "t" * 300, None)


def extend(state: list[str] | None, batches: list[list[str]]) -> list[str]:
    out = list(state or [])
    for batch in batches:
        out.extend(batch)
    return out


class Log(TypedDict):
    log: Annotated[list[str], DeltaChannel(extend, snapshot_frequency=3)]
    n: int


def test_delta_channel_state_survives_and_blocks_keep_latest(db_url: str) -> None:
    g = StateGraph(Log)
    for i in range(7):
        g.add_node(f"s{i}", lambda s, i=i: {"log": [f"x{i}"], "n": s["n"] + 1})
    g.add_edge(START, "s0")
    for i in range(6):
        g.add_edge(f"s{i}", f"s{i + 1}")
    g.add_edge("s6", END)
    with SQLAlchemySaver.from_url(db_url) as saver:
        app = g.compile(checkpointer=saver)
        app.invoke({"log": ["start"], "n": 0}, cfg("d"))
    with SQLAlchemySaver.from_url(db_url) as saver:  # rebuilt from the store alone
        app = g.compile(checkpointer=saver)
        assert app.get_state(cfg("d")).values["log"] == ["start"] + [f"x{i}" for i in range(7)]
        with pytest.raises(NotImplementedError, match="DeltaChannel"):
            saver.prune(["d"])
        saver.prune(["d"], strategy="delete")
        assert saver.get_tuple(cfg("d")) is None


def test_get_tuple_work_stays_flat_as_a_thread_grows(sqlite_url: str) -> None:
    """README: `get_tuple` is one indexed query (plus the blobs it needs) whatever the thread's
    length. Measured as SQL statements and SQLite VM steps (work done), not time."""
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        short = _thread(saver, "short", 3)
        long = _thread(saver, "long", 150)

    def cost(thread: str, checkpoint_id: str | None) -> tuple[int, int]:
        statements: list[str] = []
        steps = [0]

        def step() -> int:
            steps[0] += 1
            return 0

        def instrument(dbapi_conn: Any, *_: Any) -> None:
            dbapi_conn.set_trace_callback(statements.append)
            dbapi_conn.set_progress_handler(step, 1)

        with SQLAlchemySaver.from_url(sqlite_url) as reader:
            event.listen(reader.engine, "checkout", instrument)
            try:
                reader.get_tuple(cfg("warm-up"))  # schema check, connection setup
                before = (len(statements), steps[0])
                got = reader.get_tuple(
                    cfg(thread, checkpoint_id=checkpoint_id) if checkpoint_id else cfg(thread)
                )
            finally:
                event.remove(reader.engine, "checkout", instrument)
            assert got is not None
        return len(statements) - before[0], steps[0] - before[1]

    latest_short, latest_long = cost("short", None), cost("long", None)
    old_short, old_long = cost("short", short[1]), cost("long", long[1])
    # two statements each: the checkpoint row with its writes, then its blobs
    assert latest_short[0] == latest_long[0] == old_short[0] == old_long[0] == 2
    # 50x the checkpoints: the work differs by at most a B-tree level, not 50x
    assert latest_long[1] <= latest_short[1] * 1.3, (latest_short, latest_long)
    assert old_long[1] <= old_short[1] * 1.3, (old_short, old_long)


def test_get_tuple_reads_again_when_blobs_vanish_midway(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        _thread(saver, "t", 2)
        real = saver._fetch_blobs
        calls: list[int] = []

        def torn(*args: Any) -> Any:  # the first read sees a concurrent prune's effect
            calls.append(1)
            return {} if len(calls) == 1 else real(*args)

        monkeypatch.setattr(saver, "_fetch_blobs", torn)
        got = saver.get_tuple(cfg("t"))
        assert got is not None and got.checkpoint["channel_values"]["big"] == "1" * 500
        assert len(calls) == 2


async def test_savers_on_engines_of_your_own(sqlite_url: str) -> None:
    from langgraph_moa.persistence import create_async_engine, create_engine

    engine = create_engine(sqlite_url)
    try:
        with SQLAlchemySaver(engine) as saver:
            assert saver.engine is engine
            linear_graph(2).compile(checkpointer=saver).invoke({"value": 0, "trace": []}, cfg("e"))
        with engine.connect() as conn:  # the engine outlives the saver
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()
    aengine = create_async_engine(sqlite_url)
    try:
        async with AsyncSQLAlchemySaver(aengine) as asaver:
            app = linear_graph(2).compile(checkpointer=asaver)
            assert (await app.aget_state(cfg("e"))).values["value"] == 2
    finally:
        await aengine.dispose()


# -- clones made by with_allowlist -------------------------------------------------------


async def test_with_allowlist_clones_share_the_savers_connection(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """LangGraph clones the saver on every call under strict msgpack; a clone must not
    check out a connection of its own that nobody returns (the pool logged on PostgreSQL:
    "garbage collector is trying to clean up non-checked-in connection")."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy.pool")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with AsyncSQLAlchemySaver.from_url(db_url) as saver:
            for i in range(3):
                clone = saver.with_allowlist({("tests.test_checkpointer", "State")})
                assert clone is not saver and clone.serde is not saver.serde
                app = linear_graph(3).compile(checkpointer=clone)
                assert (await app.ainvoke({"value": 0, "trace": []}, cfg(f"t{i}")))["value"] == 3
                state = await asyncio.to_thread(app.get_state, cfg(f"t{i}"))  # the sync twin
                assert state.values["value"] == 3
                # the saver and its clones hold one connection of the async pool, and
                # their sync twins one of the sync engine's pool
                assert saver.engine.pool.checkedout() <= 1  # type: ignore[attr-defined]
                twin = clone._sync_twin()
                assert twin.engine.pool.checkedout() <= 1  # type: ignore[attr-defined]
                del app, clone, twin
                gc.collect()
            got = [t.config["configurable"]["thread_id"] async for t in saver.alist(None)]
            assert sorted(set(got)) == ["t0", "t1", "t2"]
        assert saver.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, SAWarning | ResourceWarning)]
    leaks += [r.getMessage() for r in caplog.records if "non-checked-in" in r.getMessage()]
    assert leaks == []
