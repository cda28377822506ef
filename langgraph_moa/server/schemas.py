"""Request bodies of the LangGraph Server API, as ``langgraph-sdk`` sends them.

Every model forbids unknown fields, and fields this server does not honour (webhooks,
LangSmith tracing, TTLs...) are rejected with a 422 that names them instead of being
dropped silently.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from langgraph_moa.server.validation import MAX_INT, metadata_problem

__all__ = [
    "ERROR_RESPONSES",
    "MAX_BATCH",
    "STATE_FIELDS",
    "STREAM_MODES",
    "AssistantSearch",
    "CheckpointConfig",
    "CommandModel",
    "ConfigRef",
    "ErrorBody",
    "HistoryRequest",
    "RunBatch",
    "RunConfig",
    "RunCreate",
    "StateAtCheckpoint",
    "StateUpdate",
    "StatelessRunCreate",
    "ThreadCreate",
    "ThreadPatch",
    "ThreadSearch",
]

StreamModeName = Literal[
    "values",
    "updates",
    "messages",
    "messages-tuple",
    "custom",
    "debug",
    "tasks",
    "checkpoints",
    "events",
]
STREAM_MODES: tuple[str, ...] = StreamModeName.__args__  # type: ignore[attr-defined]
MAX_LIST = 1000
MAX_BATCH = 100
"""Most runs one ``POST /runs/batch`` starts."""
Name = Annotated[str, Field(min_length=1, max_length=256)]


def _unsupported(data: Any, fields: dict[str, str]) -> Any:
    """Raise for any of ``fields`` present with a value (``{field: why}``)."""
    if isinstance(data, dict):
        for name, why in fields.items():
            if data.get(name) not in (None, False, 0, [], {}):
                raise ValueError(f"`{name}` is not supported by this server: {why}")
    return data


def _uuid(value: str, what: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: must be a UUID") from None
    return value


class ErrorBody(BaseModel):
    """Every error answer: a message, or (a request FastAPI could not parse) FastAPI's list
    of problems."""

    detail: str | list[dict[str, Any]]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown one."},
    404: {"model": ErrorBody, "description": "No such thread, run, checkpoint or assistant "
          "(also another tenant's)."},
    409: {"model": ErrorBody, "description": "The thread exists, or is busy."},
    413: {"model": ErrorBody, "description": "The body is larger than the server takes."},
    422: {"model": ErrorBody, "description": "The request breaks a rule of the API."},
    503: {"model": ErrorBody, "description": "The database is busy or unreachable; retry "
          "after `Retry-After` seconds."},
}  # fmt: skip
"""The error statuses every route may answer, for the OpenAPI description."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Metadata = dict[str, Any]


def _check_metadata(value: Metadata | None) -> Metadata | None:
    problem = metadata_problem(value, "metadata")
    if problem is not None:
        raise ValueError(problem)
    return value


class CheckpointConfig(_Body):
    """Which checkpoint of a thread (``checkpoint_id``; ``checkpoint_ns`` must be empty)."""

    thread_id: str | None = None
    checkpoint_ns: str = ""
    checkpoint_id: str | None = None
    checkpoint_map: dict[str, Any] | None = None

    @field_validator("checkpoint_ns")
    @classmethod
    def _root_only(cls, value: str) -> str:
        if value:
            raise ValueError("only the root namespace ('') is served; MoA graphs have no subgraphs")
        return value


class CommandModel(_Body):
    """A LangGraph ``Command``: answer an interrupt, update the state, or go to nodes."""

    resume: Any = None
    update: dict[str, Any] | list[tuple[str, Any]] | None = None
    goto: Any = None


class RunConfig(_Body):
    """The parts of a ``RunnableConfig`` a client may set."""

    configurable: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list, max_length=64)
    recursion_limit: int | None = Field(default=None, gt=0, le=10_000)
    metadata: Metadata = Field(default_factory=dict)
    run_name: str | None = Field(default=None, max_length=256)
    max_concurrency: int | None = Field(default=None, gt=0)

    _metadata = field_validator("metadata")(_check_metadata)


class _RunBase(_Body):
    assistant_id: Name
    input: dict[str, Any] | None = None
    command: CommandModel | None = None
    metadata: Metadata | None = None
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    interrupt_before: Literal["*"] | list[Name] | None = None
    interrupt_after: Literal["*"] | list[Name] | None = None
    stream_mode: StreamModeName | list[StreamModeName] = "values"
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    on_disconnect: Literal["cancel", "continue"] = "continue"
    if_not_exists: Literal["create", "reject"] = "reject"
    after_seconds: int | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    checkpoint_during: bool | None = None

    _metadata = field_validator("metadata")(_check_metadata)

    @model_validator(mode="before")
    @classmethod
    def _not_honoured(cls, data: Any) -> Any:
        return _unsupported(
            data,
            {
                "webhook": "no webhooks are called; poll GET /threads/{id}/runs/{run_id} "
                "or use /join",
                "feedback_keys": "there is no LangSmith feedback",
                "langsmith_tracer": "there is no LangSmith tracing",
                "after_seconds": "runs start at once; schedule them in your application",
                "context": "MoA graphs take no runtime context; use `config.configurable`",
            },
        )

    @model_validator(mode="after")
    def _consistent(self) -> _RunBase:
        if self.input is not None and self.command is not None:
            raise ValueError("give `input` or `command`, not both")
        if isinstance(self.stream_mode, list) and len(self.stream_mode) > len(STREAM_MODES):
            raise ValueError("`stream_mode` lists a mode more than once")
        return self

    @property
    def stream_modes(self) -> list[str]:
        """The requested stream modes as a list without duplicates."""
        modes = self.stream_mode if isinstance(self.stream_mode, list) else [self.stream_mode]
        return list(dict.fromkeys(modes))

    @property
    def effective_durability(self) -> Literal["sync", "async", "exit"]:
        if self.durability is not None:
            return self.durability
        if self.checkpoint_during is False:
            return "exit"
        return "async"


class RunCreate(_RunBase):
    """``POST /threads/{thread_id}/runs[/wait|/stream]``."""

    checkpoint: CheckpointConfig | None = None
    checkpoint_id: str | None = None
    multitask_strategy: Literal["reject", "interrupt", "enqueue"] = "enqueue"
    strict_resume: bool = False

    @model_validator(mode="before")
    @classmethod
    def _rollback(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("multitask_strategy") == "rollback":
            raise ValueError(
                "multitask_strategy 'rollback' is not supported (checkpoints are never "
                "deleted mid-thread); use 'interrupt', 'reject' or 'enqueue'"
            )
        return data


class StatelessRunCreate(_RunBase):
    """``POST /runs[/wait|/stream]``: a run on a new thread of its own."""

    on_completion: Literal["delete", "keep"] = "delete"

    @model_validator(mode="before")
    @classmethod
    def _js_batch_alias(cls, data: Any) -> Any:
        """The JS SDK's ``runs.createBatch`` sends each run's ``assistantId`` beside its
        ``assistant_id``: the same id twice is taken once."""
        if isinstance(data, dict) and "assistantId" in data:
            data = dict(data)
            alias = data.pop("assistantId")
            if data.setdefault("assistant_id", alias) != alias:
                raise ValueError("`assistantId` and `assistant_id` name different assistants")
        return data

    @model_validator(mode="after")
    def _no_resume(self) -> StatelessRunCreate:
        if self.command is not None and self.command.resume is not None:
            raise ValueError("a resume needs a thread: use POST /threads/{thread_id}/runs")
        return self


class RunBatch(RootModel[list[StatelessRunCreate]]):
    """``POST /runs/batch``: 1 to :data:`MAX_BATCH` stateless runs."""

    root: list[StatelessRunCreate] = Field(min_length=1, max_length=MAX_BATCH)


class ThreadCreate(_Body):
    """``POST /threads``."""

    thread_id: str | None = None
    metadata: Metadata | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"

    _metadata = field_validator("metadata")(_check_metadata)

    @model_validator(mode="before")
    @classmethod
    def _not_honoured(cls, data: Any) -> Any:
        return _unsupported(
            data,
            {
                "ttl": "threads are kept until deleted (DELETE /threads/{id})",
                "supersteps": "create the thread, then POST /threads/{id}/state",
            },
        )

    @field_validator("thread_id")
    @classmethod
    def _thread_uuid(cls, value: str | None) -> str | None:
        return None if value is None else _uuid(value, "thread_id")


class ThreadPatch(_Body):
    """``PATCH /threads/{thread_id}``: metadata is merged into the thread's."""

    metadata: Metadata | None = None

    _metadata = field_validator("metadata")(_check_metadata)

    @model_validator(mode="before")
    @classmethod
    def _not_honoured(cls, data: Any) -> Any:
        return _unsupported(data, {"ttl": "threads are kept until deleted"})


class ThreadSearch(_Body):
    """``POST /threads/search``."""

    ids: list[str] | None = Field(default=None, max_length=MAX_LIST)
    metadata: Metadata | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: int = Field(default=10, ge=1, le=MAX_LIST)
    offset: int = Field(default=0, ge=0, le=MAX_INT)
    sort_by: Literal["thread_id", "status", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[Name] | None = None

    _metadata = field_validator("metadata")(_check_metadata)

    @model_validator(mode="before")
    @classmethod
    def _not_honoured(cls, data: Any) -> Any:
        return _unsupported(
            data,
            {
                "values": "search by metadata; state values are not indexed",
                "extract": "select whole fields with `select`",
            },
        )


class StateUpdate(_Body):
    """``POST /threads/{thread_id}/state``."""

    values: dict[str, Any] | list[dict[str, Any]] | None = None
    as_node: Name | None = None
    checkpoint: CheckpointConfig | None = None
    checkpoint_id: str | None = None


STATE_FIELDS = (
    "values",
    "next",
    "tasks",
    "checkpoint",
    "metadata",
    "created_at",
    "parent_checkpoint",
    "interrupts",
    "checkpoint_id",
    "parent_checkpoint_id",
)
"""The fields of a ``ThreadState``; ``select`` takes these and ``values.<key>``."""


def _check_state_select(value: list[str] | None) -> list[str] | None:
    for name in value or ():
        if name not in STATE_FIELDS and not (name.startswith("values.") and len(name) > 7):
            raise ValueError(
                f"select: unknown field {name!r}; use {', '.join(STATE_FIELDS)} or values.<key>"
            )
    return value


class ConfigRef(_Body):
    """A checkpoint given as a ``RunnableConfig``: ``{"configurable": {...}}``."""

    configurable: CheckpointConfig


class StateAtCheckpoint(_Body):
    """``POST /threads/{thread_id}/state/checkpoint``."""

    checkpoint: CheckpointConfig
    subgraphs: bool = False
    select: list[Name] | None = Field(default=None, max_length=MAX_LIST)

    _select = field_validator("select")(_check_state_select)


class HistoryRequest(_Body):
    """``POST /threads/{thread_id}/history``: ``before`` is a checkpoint id, a checkpoint,
    or a config holding one (``{"configurable": {"checkpoint_id": ...}}``)."""

    limit: int = Field(default=10, ge=1, le=MAX_LIST)
    before: CheckpointConfig | ConfigRef | str | None = None
    metadata: Metadata | None = None
    checkpoint: CheckpointConfig | None = None
    select: list[Name] | None = Field(default=None, max_length=MAX_LIST)

    _select = field_validator("select")(_check_state_select)

    @property
    def before_id(self) -> str | None:
        """The checkpoint id of ``before``, however it was given."""
        before = self.before
        if isinstance(before, ConfigRef):
            before = before.configurable
        return before.checkpoint_id if isinstance(before, CheckpointConfig) else before


class AssistantSearch(_Body):
    """``POST /assistants/search``."""

    metadata: Metadata | None = None
    graph_id: Name | None = None
    name: Name | None = None
    limit: int = Field(default=10, ge=1, le=MAX_LIST)
    offset: int = Field(default=0, ge=0, le=MAX_INT)
    sort_by: Literal["assistant_id", "created_at", "updated_at", "name", "graph_id"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[Name] | None = None
