"""Request bodies of the assistant and cron paths, as ``langgraph-sdk`` sends them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from langgraph_moa.server.schemas import (
    MAX_LIST,
    Metadata,
    Name,
    RunConfig,
    StreamModeName,
    _Body,
    _check_metadata,
    _unsupported,
)
from langgraph_moa.server.validation import MAX_INT

__all__ = [
    "AssistantCreate",
    "AssistantPatch",
    "AssistantVersionChange",
    "AssistantVersionsSearch",
    "CronCount",
    "CronCreate",
    "CronPatch",
    "CronSearch",
    "ThreadCronCreate",
]


class _AssistantFields(_Body):
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    metadata: Metadata | None = None
    description: str | None = Field(default=None, max_length=10_000)

    _metadata = field_validator("metadata")(_check_metadata)


class AssistantCreate(_AssistantFields):
    """``POST /assistants``."""

    graph_id: Name
    assistant_id: str | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    name: Name | None = None

    @field_validator("assistant_id")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                uuid.UUID(value)
            except ValueError:
                raise ValueError("Invalid assistant ID: must be a UUID") from None
        return value


class AssistantPatch(_AssistantFields):
    """``PATCH /assistants/{assistant_id}``: a new version; fields left out are kept and
    ``metadata`` is merged."""

    graph_id: Name | None = None
    name: Name | None = None


class AssistantVersionsSearch(_Body):
    """``POST /assistants/{assistant_id}/versions``."""

    metadata: Metadata | None = None
    limit: int = Field(default=10, ge=1, le=MAX_LIST)
    offset: int = Field(default=0, ge=0, le=MAX_INT)


class AssistantVersionChange(_Body):
    """``POST /assistants/{assistant_id}/latest``."""

    version: int = Field(ge=1, le=MAX_INT)


_NOT_HONOURED = {
    "webhook": "no webhooks are called; list the cron's runs instead",
    "context": "MoA graphs take no runtime context; use `config.configurable`",
}


class _CronRun(_Body):
    """What each run of a cron is made of (the run fields of a cron)."""

    input: dict[str, Any] | None = None
    metadata: Metadata | None = None
    config: RunConfig | None = None
    interrupt_before: Literal["*"] | list[Name] | None = None
    interrupt_after: Literal["*"] | list[Name] | None = None
    stream_mode: StreamModeName | list[StreamModeName] | None = None
    stream_subgraphs: bool | None = None
    stream_resumable: bool | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    checkpoint_during: bool | None = None
    end_time: datetime | None = None
    timezone: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None

    _metadata = field_validator("metadata")(_check_metadata)

    @model_validator(mode="before")
    @classmethod
    def _not_honoured(cls, data: Any) -> Any:
        return _unsupported(data, _NOT_HONOURED)


class CronCreate(_CronRun):
    """``POST /runs/crons``: each tick runs on a new thread of its own."""

    assistant_id: Name
    schedule: str = Field(min_length=1, max_length=255)
    on_run_completed: Literal["delete", "keep"] = "delete"


class ThreadCronCreate(_CronRun):
    """``POST /threads/{thread_id}/runs/crons``: each tick runs on the thread."""

    assistant_id: Name
    schedule: str = Field(min_length=1, max_length=255)
    multitask_strategy: Literal["reject", "interrupt", "enqueue"] | None = None


class CronPatch(_CronRun):
    """``PATCH /runs/crons/{cron_id}``: fields left out are kept; ``end_time: null``
    clears the end time."""

    schedule: str | None = Field(default=None, min_length=1, max_length=255)
    on_run_completed: Literal["delete", "keep"] | None = None


class CronSearch(_Body):
    """``POST /runs/crons/search``."""

    assistant_id: Name | None = None
    thread_id: Name | None = None
    enabled: bool | None = None
    metadata: Metadata | None = None
    limit: int = Field(default=10, ge=1, le=MAX_LIST)
    offset: int = Field(default=0, ge=0, le=MAX_INT)
    sort_by: (
        Literal["cron_id", "assistant_id", "thread_id", "next_run_date", "end_time", "created_at"]
        | None
    ) = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[Name] | None = None


class CronCount(_Body):
    """``POST /runs/crons/count``."""

    assistant_id: Name | None = None
    thread_id: Name | None = None
    metadata: Metadata | None = None
