"""The checkpointer's serializer: state objects round-trip as themselves, stored data never
imports a module or calls anything but a state class's constructor."""

from __future__ import annotations

import dataclasses
import enum
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import ormsgpack
import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.serde.jsonplus import EXT_METHOD_SINGLE_ARG
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from langgraph_moa.persistence import SQLAlchemySaver, make_serde
from langgraph_moa.persistence.serde import SafeSerializer, imported_state_class


class Color(enum.Enum):
    RED = "red"


class Note(BaseModel):
    title: str
    tags: list[str]


@dataclasses.dataclass
class Point:
    x: int
    y: int
    note: Note | None = None


class Pair(NamedTuple):
    left: int
    right: str


class State(TypedDict, total=False):
    note: Note
    point: Point
    color: Color
    pair: Pair
    messages: list[Any]
    doc: Document
    extra: Any  # not in any schema: admitted because its class is imported


def graph(saver: Any) -> Any:
    g = StateGraph(State)
    g.add_node("move", lambda s: {"point": dataclasses.replace(s["point"], x=s["point"].x + 1)})
    g.add_edge(START, "move")
    g.add_edge("move", END)
    return g.compile(checkpointer=saver)


def cfg(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}


def test_state_objects_come_back_as_themselves_by_default(sqlite_url: str) -> None:
    value: State = {
        "note": Note(title="n", tags=["a"]),
        "point": Point(1, 2, note=Note(title="inner", tags=[])),
        "color": Color.RED,
        "pair": Pair(1, "r"),
        "messages": [HumanMessage("hi", id="h"), AIMessage("hello", id="a")],
        "doc": Document(page_content="text", metadata={"k": 1}),
        "extra": Note(title="untyped", tags=["x"]),
    }
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        graph(saver).invoke(value, cfg("t"))
    with SQLAlchemySaver.from_url(sqlite_url) as fresh:  # read back as a new process would
        state = graph(fresh).get_state(cfg("t")).values
    assert type(state["note"]) is Note and state["note"] == value["note"]
    assert type(state["point"]) is Point
    assert state["point"] == Point(2, 2, Note(title="inner", tags=[]))
    assert state["color"] is Color.RED
    assert type(state["pair"]) is Pair and state["pair"] == Pair(1, "r")
    assert [type(m) for m in state["messages"]] == [HumanMessage, AIMessage]
    assert state["messages"][1].content == "hello"
    assert type(state["doc"]) is Document and state["doc"].metadata == {"k": 1}
    assert type(state["extra"]) is Note and state["extra"].title == "untyped"


def test_trust_off_admits_only_the_allowlist(sqlite_url: str) -> None:
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        graph(saver).invoke({"note": Note(title="n", tags=[]), "point": Point(0, 0)}, cfg("t"))
    strict = make_serde(trust_imported_types=False)
    with SQLAlchemySaver.from_url(sqlite_url, serde=strict) as saver:
        state = graph(saver).get_state(cfg("t")).values
        assert state["note"] == {"title": "n", "tags": []}  # stored data, not a Note
        widened = saver.with_allowlist([(Note.__module__, "Note")])
        assert isinstance(widened.serde, SafeSerializer)
        assert type(graph(widened).get_state(cfg("t")).values["note"]) is Note


def test_encrypted_serde_admits_the_same_classes() -> None:
    serde = make_serde(encrypt=b"k" * 16)
    note = Note(title="secret", tags=[])
    type_, data = serde.dumps_typed({"n": note, "c": Color.RED})
    assert type_.endswith("+aes") and b"secret" not in data
    assert serde.loads_typed((type_, data)) == {"n": note, "c": Color.RED}


# -- hostile stored data ----------------------------------------------------------------

CALLS: list[str] = []


class Plain:
    """Not a state class: stored data naming it must not construct it."""

    def __init__(self, **kwargs: Any) -> None:
        CALLS.append("Plain")


def _disguised(base: type, module: str, name: str) -> type:
    """A subclass of ``base`` that the serializer writes as ``module.name``."""
    cls = type(name, (base,), {})
    cls.__module__ = module
    return cls


def test_stored_data_naming_other_callables_stays_data(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "mods"
    evil.mkdir()
    (evil / "lgsuite_evil_mod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
    )
    monkeypatch.syspath_prepend(str(evil))
    CALLS.clear()

    @dataclasses.dataclass
    class Popen:
        args: list[str]

    Popen.__module__ = "subprocess"  # stored as subprocess.Popen(args=[...])
    popen = Popen(["sh", "-c", f"echo popen > {marker}"])
    system = enum.Enum("system", {"CMD": f"echo system > {marker}"})  # type: ignore[misc]
    system.__module__ = "os"  # stored as os.system("echo ...")
    evaluate = enum.Enum("eval", {"CODE": f"open({str(marker)!r}, 'w')"})  # type: ignore[misc]
    evaluate.__module__ = "builtins"
    unimported = _disguised(Note, "lgsuite_evil_mod", "Thing")(title="t", tags=[])
    plain = dataclasses.make_dataclass("Plain", [("x", int)])
    plain.__module__ = __name__  # names the non-state class above
    writes = [
        ("popen", popen),
        ("system", system.CMD),
        ("eval", evaluate.CODE),
        ("unimported", unimported),
        ("plain", plain(1)),
    ]
    assert subprocess.Popen is not Popen and "lgsuite_evil_mod" not in sys.modules
    with SQLAlchemySaver.from_url(sqlite_url) as saver:
        graph(saver).invoke({"point": Point(0, 0)}, cfg("t"))
        head = saver.get_tuple(cfg("t"))
        assert head is not None
        saver.put_writes(head.config, writes, "task-1")
    with SQLAlchemySaver.from_url(sqlite_url) as fresh:
        loaded = fresh.get_tuple(cfg("t"))
    assert loaded is not None
    got = {channel: value for _, channel, value in loaded.pending_writes or []}
    assert got == {
        "popen": {"args": ["sh", "-c", f"echo popen > {marker}"]},
        "system": f"echo system > {marker}",
        "eval": f"open({str(marker)!r}, 'w')",
        "unimported": {"title": "t", "tags": []},
        "plain": {"x": 1},
    }
    assert not marker.exists()
    assert "lgsuite_evil_mod" not in sys.modules
    assert CALLS == []


def test_method_calls_outside_langgraphs_list_stay_data(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = ("os", "system", f"touch {marker}", "__call__")
    data = ormsgpack.packb(ormsgpack.Ext(EXT_METHOD_SINGLE_ARG, ormsgpack.packb(payload)))
    assert make_serde().loads_typed(("msgpack", data)) == f"touch {marker}"
    assert not marker.exists()


def test_imported_state_class_rules() -> None:
    assert imported_state_class(__name__, "Note") is Note
    assert imported_state_class(__name__, "Point") is Point
    assert imported_state_class(__name__, "Color") is Color
    assert imported_state_class(__name__, "Pair") is Pair
    assert imported_state_class(__name__, "Plain") is None  # not a state class
    assert imported_state_class(__name__, "BaseModel") is None  # re-exported, not defined here
    assert imported_state_class(__name__, "graph") is None  # a function
    assert imported_state_class("os", "system") is None
    assert imported_state_class("subprocess", "Popen") is None
    assert imported_state_class("lgsuite_never_imported", "Thing") is None
    assert "lgsuite_never_imported" not in sys.modules
