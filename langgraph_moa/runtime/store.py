"""Where runs are stored: the default database URL and opening the checkpointer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from platformdirs import user_data_dir

__all__ = ["default_db_url", "open_checkpointer", "resolve_db_url"]


def default_db_url() -> str:
    """A SQLite file in the user's data directory (created on first use)."""
    path = Path(user_data_dir("langgraph-moa", appauthor=False)) / "moa.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def resolve_db_url(db_url: str | None) -> str:
    """``db_url``, else ``MOA_DB_URL``, else the default SQLite file."""
    return db_url or os.environ.get("MOA_DB_URL") or default_db_url()


@asynccontextmanager
async def open_checkpointer(db_url: str | None) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The async SQLAlchemy checkpointer of ``db_url``, set up and ready."""
    from langgraph_moa.persistence import AsyncSQLAlchemySaver

    async with AsyncSQLAlchemySaver.from_url(resolve_db_url(db_url)) as saver:
        await saver.setup()
        yield saver
