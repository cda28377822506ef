"""The built-in ``search_files`` tool: ranked passages of the files under a root.

The files matching the globs under ``root`` are split into passages of a few lines and
indexed in an SQLite FTS5 table, kept in the user data directory (one database per root and
globs). The index is built at the first search and brought up to date at every search from
each file's size and modification time. Only regular files whose real path lies under the
root are read: symlinks out of it and ``..`` are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from platformdirs import user_data_dir

__all__ = ["DEFAULT_GLOBS", "FileIndex", "index_path"]

DEFAULT_GLOBS = ("**/*.md", "**/*.txt", "**/*.py", "**/*.rst")
PASSAGE_LINES = 12
MAX_FILE_BYTES = 2 * 1024 * 1024
_WORD = re.compile(r"\w+", re.UNICODE)


def index_path(root: Path, globs: Sequence[str]) -> Path:
    """Where the index of ``root`` and ``globs`` is kept (``MOA_SEARCH_DIR`` overrides)."""
    base = os.environ.get("MOA_SEARCH_DIR") or os.path.join(
        user_data_dir("langgraph-moa", appauthor=False), "search"
    )
    key = hashlib.sha256(f"{root}\0{chr(0).join(globs)}".encode()).hexdigest()[:16]
    return Path(base) / f"{key}.sqlite"


class FileIndex:
    """A lazily built, self-refreshing full-text index of the files under ``root``."""

    def __init__(self, root: str | Path, globs: Sequence[str] = DEFAULT_GLOBS) -> None:
        self.root = Path(root).expanduser().resolve()
        self.globs = tuple(globs)
        self.path = index_path(self.root, self.globs)
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path)
        conn.executescript(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER);"
            "CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(path UNINDEXED, "
            "line UNINDEXED, text, tokenize='porter unicode61');"
        )
        return conn

    def _files(self) -> Iterator[tuple[str, Path, os.stat_result]]:
        seen: set[Path] = set()
        for pattern in self.globs:
            for found in self.root.glob(pattern):
                try:
                    real = found.resolve(strict=True)
                except (OSError, RuntimeError):
                    continue
                if real in seen or not real.is_relative_to(self.root) or not real.is_file():
                    continue
                seen.add(real)
                stat = real.stat()
                if stat.st_size <= MAX_FILE_BYTES:
                    yield str(real.relative_to(self.root)), real, stat

    def refresh(self) -> int:
        """Bring the index up to date; returns how many files were (re)read."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"search_files: {self.root} is not a directory")
        read = 0
        with self._lock, self._connect() as conn:
            known = {
                p: (s, m) for p, s, m in conn.execute("SELECT path, size, mtime_ns FROM files")
            }
            current: set[str] = set()
            for rel, real, stat in self._files():
                current.add(rel)
                if known.get(rel) == (stat.st_size, stat.st_mtime_ns):
                    continue
                text = real.read_text(encoding="utf-8", errors="replace")
                conn.execute("DELETE FROM passages WHERE path = ?", (rel,))
                lines = text.splitlines()
                conn.executemany(
                    "INSERT INTO passages (path, line, text) VALUES (?, ?, ?)",
                    [
                        (rel, start + 1, "\n".join(lines[start : start + PASSAGE_LINES]))
                        for start in range(0, len(lines), PASSAGE_LINES)
                    ],
                )
                conn.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?)",
                    (rel, stat.st_size, stat.st_mtime_ns),
                )
                read += 1
            for gone in set(known) - current:
                conn.execute("DELETE FROM passages WHERE path = ?", (gone,))
                conn.execute("DELETE FROM files WHERE path = ?", (gone,))
        return read

    def search(self, query: str, limit: int = 5) -> list[tuple[str, int, str]]:
        """The best passages for ``query`` as ``(file, first line, text)``, best first."""
        self.refresh()
        words = _WORD.findall(query)[:32]
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        with self._lock, self._connect() as conn:
            rows = conn.execute(
                "SELECT path, line, text FROM passages WHERE passages MATCH ? "
                "ORDER BY bm25(passages) LIMIT ?",
                (match, limit),
            ).fetchall()
        return [(str(p), int(line), str(t)) for p, line, t in rows]

    async def asearch(self, query: str, limit: int = 5) -> str:
        """:meth:`search` off the event loop, rendered for a model."""
        hits = await asyncio.to_thread(self.search, query, limit)
        if not hits:
            return f"no passage under {self.root.name}/ matches {query!r}"
        return "\n\n".join(f"{path}:{line}\n{text}" for path, line, text in hits)
