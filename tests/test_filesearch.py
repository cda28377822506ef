"""The search_files tool: ranked passages with file:line, refreshed when files change,
never reading outside its root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from langgraph_moa.graphs import compile_graph
from langgraph_moa.nodes.filesearch import FileIndex
from langgraph_moa.spec import SpecError, load_spec
from langgraph_moa.testing import ModelServer
from tests.helpers import served_models


@pytest.fixture(autouse=True)
def index_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "indexes"
    monkeypatch.setenv("MOA_SEARCH_DIR", str(where))
    return where


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "btree.md").write_text(
        "# B-trees\n" + "filler\n" * 20 + "A B-tree keeps keys sorted.\n"
    )
    (root / "sub" / "lsm.txt").write_text("LSM trees batch writes in memtables.\n")
    (root / "image.bin").write_bytes(b"memtables " * 10)  # not matched by the globs
    return root


def test_ranked_passages_with_file_and_line(docs: Path, index_dir: Path) -> None:
    index = FileIndex(docs)
    assert index.search("memtables") == [("sub/lsm.txt", 1, "LSM trees batch writes in memtables.")]
    (path, line, text) = index.search("keys sorted B-tree")[0]
    assert (path, line) == ("btree.md", 13) and "A B-tree keeps keys sorted." in text
    assert index.path.parent == index_dir and index.path.exists()
    assert index.search("!!!") == [] and index.search("nothing-like-this") == []


def test_refreshes_changed_and_removed_files(docs: Path) -> None:
    index = FileIndex(docs)
    assert index.refresh() == 2 and index.refresh() == 0  # unchanged files are not re-read
    lsm = docs / "sub" / "lsm.txt"
    lsm.write_text("Compaction merges sorted runs.\n")
    os.utime(lsm, ns=(1, 1))  # a different mtime even within the clock's resolution
    assert index.search("memtables") == []
    assert index.search("compaction")[0][:2] == ("sub/lsm.txt", 1)
    (docs / "btree.md").unlink()
    assert index.search("B-tree") == []


def test_never_reads_outside_its_root(docs: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("password hunter2\n")
    (docs / "link.md").symlink_to(secret)
    (docs / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    index = FileIndex(docs, ["**/*.md", "../*.md"])
    assert index.search("password hunter2") == []


def test_spec_checks_search_files_fields() -> None:
    base = {"agents": [{"name": "a"}], "layers": [{"agents": ["a"]}]}
    for tool, message in [
        ({"builtin": "search_files"}, "needs `root`"),
        ({"builtin": "python", "root": "."}, "root: only for `builtin: search_files`"),
        ({"builtin": "search_files", "root": ".", "globs": ["../*"]}, "may not climb out"),
    ]:
        with pytest.raises(SpecError, match=message):
            load_spec({**base, "tools": {"t": tool}})


async def test_passages_reach_the_synthesizer(model_server: ModelServer, docs: Path) -> None:
    srv = model_server
    call = [{"name": "docs", "arguments": {"query": "memtables"}}]
    srv.add_rule(model="research", times=1, tool_calls=call)
    srv.add_rule(
        model="research",
        reply=lambda req: (
            "found: " + next(m for m in req.messages if m["role"] == "tool")["content"]
        ),
    )
    spec = {
        "models": served_models(srv, "research", "synth"),
        "tools": {"docs": {"builtin": "search_files", "root": str(docs)}},
        "agents": [{"name": "research", "model": "research", "tools": ["docs"]}],
        "layers": [{"agents": ["research"], "synthesizer": {"model": "synth"}}],
    }
    graph = compile_graph(load_spec(spec), checkpointer=InMemorySaver())
    await graph.ainvoke({"task": "what batches writes?"}, {"configurable": {"thread_id": "t"}})
    synth = next(r for r in srv.requests if r.model == "synth")
    assert synth.system.endswith(
        "(tools used: docs)\nfound: sub/lsm.txt:1\nLSM trees batch writes in memtables."
    )
