"""The declarative graph spec: models, agents and layers, validated with pydantic."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from langgraph_moa.spec.tools import ToolSpec

__all__ = [
    "AGGREGATION_MODES",
    "AgentSpec",
    "Defaults",
    "GraphSpec",
    "LayerSpec",
    "ModelSpec",
    "RouterSpec",
    "SpecReferenceError",
    "SynthesizerSpec",
]

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class SpecReferenceError(ValueError):
    """Cross-field problems of a spec, each written as ``field.path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """A named chat model: a ``provider:model`` string, or a model on an OpenAI-compatible URL."""

    model: str | None = Field(
        default=None,
        description="'provider:model' for init_chat_model, or the model name at base_url. "
        "None means the embedded local model.",
    )
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint URL.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    context_window: int | None = Field(
        default=None, gt=0, description="Prompt budget in tokens; checked before each call."
    )
    timeout: float | None = Field(default=None, gt=0, description="Seconds per call.")
    max_retries: int = Field(default=3, ge=0, le=20)
    max_concurrency: int | None = Field(
        default=None, gt=0, description="Calls in flight per process (default 100)."
    )
    requests_per_second: float | None = Field(default=None, gt=0)
    input_cost_per_mtok: float = Field(default=0.0, ge=0, description="Price per 1M input tokens.")
    output_cost_per_mtok: float = Field(
        default=0.0, ge=0, description="Price per 1M output tokens."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra model arguments.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises for a port that is not a number in 0-65535
        except ValueError:
            valid = False
        if not valid or any(c.isspace() for c in value):
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise ValueError(
                f"{shown!r} is not an http(s) URL; write it like http://127.0.0.1:8080/v1"
            )
        return value

    @property
    def is_local(self) -> bool:
        """True when this spec means the embedded local model."""
        return self.model is None and self.base_url is None


class AgentSpec(_Strict):
    """One agent: a name, a role (its system prompt) and a model."""

    name: Name
    role: str | None = Field(default=None, description="System prompt of the agent.")
    description: str | None = Field(
        default=None, description="What the agent is good at; shown to the router."
    )
    model: str | None = Field(default=None, description="Name of an entry of `models`.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    extends: str | None = Field(
        default=None, description="Name of another agent whose settings this one inherits."
    )
    tools: list[str] = Field(
        default_factory=list,
        description="Keys of `tools` the agent may call; `server.tool` picks one tool of an "
        "MCP server.",
    )
    max_steps: int = Field(
        default=8, ge=1, le=100, description="Model calls of the tool loop before a final answer."
    )
    max_tool_calls: int | None = Field(
        default=None, ge=1, description="Tool calls per answer; past it the model must answer."
    )


class RouterSpec(_Strict):
    """How a layer's work is split among its agents."""

    mode: Literal["broadcast", "router", "function"] = "broadcast"
    model: str | None = Field(default=None, description="Model of the router (mode 'router').")
    function: str | None = Field(
        default=None,
        description="'module:function' returning [{agent, subtask}] (mode 'function').",
    )
    prompt: str | None = Field(default=None, description="Replaces the router's system prompt.")
    structured_output: bool = Field(
        default=False, description="Use the model's structured output instead of JSON in text."
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> RouterSpec:
        if self.mode == "function" and not self.function:
            raise ValueError("routing mode 'function' needs `function: module:callable`")
        if self.function and self.mode != "function":
            raise ValueError("`function` is only used with routing mode 'function'")
        if self.function and not re.match(r"^[\w.]+:[\w.]+$", self.function):
            raise ValueError(
                f"`function` must look like 'package.module:callable', got {self.function!r}"
            )
        return self


AGGREGATION_MODES = ("synthesize", "vote", "select", "concat")


class SynthesizerSpec(_Strict):
    """How a layer is closed (its aggregation ``mode``): a model merges the proposals
    (``synthesize``), a majority vote over their final answers (``vote``, the model only
    on a tie or low agreement), the model picks the best proposal as written (``select``),
    or they are passed on as they are (``concat``)."""

    mode: Literal["synthesize", "vote", "select", "concat"] = "synthesize"
    model: str | None = Field(default=None, description="Name of an entry of `models`.")
    prompt: str | None = Field(default=None, description="Replaces the synthesizer system prompt.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    on_overflow: Literal["trim", "fail"] = Field(
        default="trim", description="What to do when the proposals exceed the context window."
    )
    min_agreement: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Mode 'vote': share of the proposals that must give the winning answer "
        "(default 0.5); below it, or on a tie, the synthesizer decides.",
    )

    @model_validator(mode="after")
    def _vote_fields(self) -> SynthesizerSpec:
        if self.min_agreement is not None and self.mode != "vote":
            raise ValueError("`min_agreement` is only used with mode 'vote'")
        return self


class LayerSpec(_Strict):
    """One layer: agents that work in parallel, then a synthesizer."""

    name: Name | None = None
    agents: list[str] = Field(min_length=1)
    routing: RouterSpec = Field(default_factory=RouterSpec)
    synthesizer: SynthesizerSpec = Field(default_factory=SynthesizerSpec)
    interrupt_before_synthesis: bool = Field(
        default=False,
        description="Pause for a person before the synthesizer runs, showing the proposals it "
        "will merge (a layer below quorum fails first, and is shown once a resume's retries "
        "reach it).",
    )
    min_proposals: int | None = Field(
        default=None, gt=0, description="Quorum: proposals needed for the layer to succeed."
    )
    timeout: float | None = Field(default=None, gt=0, description="Seconds for the whole layer.")
    grace_period: float | None = Field(
        default=None, ge=0, description="Seconds to wait for stragglers once quorum is reached."
    )

    @field_validator("routing", mode="before")
    @classmethod
    def _routing_shorthand(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    @field_validator("synthesizer", mode="before")
    @classmethod
    def _synth_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"mode": value} if value in AGGREGATION_MODES else {"model": value}
        return value


class Defaults(_Strict):
    """Settings every agent and synthesizer falls back on."""

    model: str | None = Field(default=None, description="Name of an entry of `models`.")
    temperature: float = Field(default=0.7, ge=0, le=2)
    synthesizer_temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=256, gt=0)
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**31,
        description="Seeded sampling: each model call gets a seed derived from this one, its "
        "node and its messages, so a rerun samples the same answers (models that take a seed).",
    )


class GraphSpec(_Strict):
    """A whole Mixture-of-Agents graph."""

    name: Name = "moa"
    description: str | None = None
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    agents: list[AgentSpec] = Field(min_length=1)
    layers: list[LayerSpec] = Field(min_length=1)
    defaults: Defaults = Field(default_factory=Defaults)
    tools: dict[Name, ToolSpec] = Field(
        default_factory=dict, description="Tools agents may call, by the name the model sees."
    )
    max_total_tokens: int | None = Field(default=None, gt=0, description="Run budget in tokens.")
    max_cost: float | None = Field(default=None, gt=0, description="Run budget in currency.")
    max_tool_calls: int | None = Field(
        default=None, gt=0, description="Run budget in tool calls (all agents together)."
    )
    ledger: Literal["full", "hashes"] = Field(
        default="full",
        description="What the call ledger keeps of each model call's messages and reply: "
        "`full`, or `hashes` (no text; such calls cannot be replayed or answered on resume).",
    )

    @field_validator("agents", mode="before")
    @classmethod
    def _agents_mapping(cls, value: Any) -> Any:
        if isinstance(value, dict):  # allow `agents: {name: {...}}`
            for name, settings in value.items():
                if settings is not None and not isinstance(settings, dict):
                    raise ValueError(
                        f"agent {name!r}: its settings must be a mapping (role, model, ...), "
                        f"not {type(settings).__name__}"
                    )
            return [{"name": k, **(v or {})} for k, v in value.items()]
        return value

    @model_validator(mode="after")
    def _references(self) -> GraphSpec:
        problems: list[str] = []
        names = [a.name for a in self.agents]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                problems.append(
                    f"agents.{i}.name: duplicate agent name {name!r}; names must be unique"
                )
            seen.add(name)
        agents = {a.name: a for a in self.agents}
        for i, agent in enumerate(self.agents):
            if agent.extends is not None and agent.extends not in agents:
                problems.append(
                    f"agents.{i}.extends: unknown agent {agent.extends!r}; known: {sorted(agents)}"
                )
        for cycle in _extends_cycles(agents):
            problems.append(f"agents: `extends` forms a cycle: {' -> '.join(cycle)}")

        def check_model(where: str, model: str | None) -> None:
            if model is not None and model not in self.models:
                known = sorted(self.models) or "none defined"
                problems.append(
                    f"{where}: unknown model {model!r}; add it under `models` (known: {known})"
                )

        check_model("defaults.model", self.defaults.model)
        for i, agent in enumerate(self.agents):
            check_model(f"agents.{i}.model", agent.model)
        for i, agent in enumerate(self.agents):
            for j, ref in enumerate(agent.tools):
                problem = self._tool_problem(ref)
                if problem:
                    problems.append(f"agents.{i}.tools.{j}: {problem}")
        layer_names: set[str] = set()
        for i, layer in enumerate(self.layers):
            if layer.name is not None:
                if layer.name in layer_names:
                    problems.append(f"layers.{i}.name: duplicate layer name {layer.name!r}")
                layer_names.add(layer.name)
            for j, agent_name in enumerate(layer.agents):
                if agent_name not in agents:
                    problems.append(
                        f"layers.{i}.agents.{j}: unknown agent {agent_name!r}; "
                        f"define it under `agents` (known: {sorted(agents)})"
                    )
            if len(set(layer.agents)) != len(layer.agents):
                problems.append(f"layers.{i}.agents: an agent is listed twice in one layer")
            check_model(f"layers.{i}.routing.model", layer.routing.model)
            if layer.synthesizer.model is not None and layer.synthesizer.model not in self.models:
                known = sorted(self.models) or "none defined"
                problems.append(
                    f"layers.{i}.synthesizer.model: unknown model {layer.synthesizer.model!r}; "
                    f"add it under `models` (known: {known}), or give a mode: "
                    f"{', '.join(repr(m) for m in AGGREGATION_MODES)}"
                )
            if layer.min_proposals is not None and layer.min_proposals > len(layer.agents):
                problems.append(
                    f"layers.{i}.min_proposals: {layer.min_proposals} is more than the "
                    f"layer's {len(layer.agents)} agents"
                )
        if problems:
            raise SpecReferenceError(problems)
        return self

    def _tool_problem(self, ref: str) -> str | None:
        key, dot, member = ref.partition(".")
        tool = self.tools.get(key)
        if tool is None:
            known = sorted(self.tools) or "none defined"
            return f"unknown tool {ref!r}; add it under `tools` (known: {known})"
        if dot and (tool.mcp is None or not member):
            return f"{ref!r}: `name.tool` picks one tool of an MCP server, and {key!r} is not one"
        return None

    def agent(self, name: str) -> AgentSpec:
        """The agent called ``name`` with ``extends`` resolved."""
        agents = {a.name: a for a in self.agents}
        chain = [agents[name]]
        while chain[-1].extends is not None:
            chain.append(agents[chain[-1].extends])
        merged: dict[str, Any] = {}
        for link in reversed(chain):
            merged.update(link.model_dump(exclude_unset=True, exclude={"name", "extends"}))
        return AgentSpec(name=name, **merged)

    def model_spec(self, name: str | None) -> ModelSpec:
        """The model called ``name``, the default one, or the local model."""
        name = name or self.defaults.model
        return self.models[name] if name is not None else ModelSpec()

    def spec_hash(self) -> str:
        """A stable hash of the spec, to detect drift between a crash and a resume."""
        data = self.model_dump(mode="json")
        # fields added later count only when set, so older runs' hashes still match
        for key in ("tools", "max_tool_calls"):
            if not data.get(key):
                data.pop(key, None)
        if data["defaults"].get("seed") is None:
            data["defaults"].pop("seed", None)
        for layer in data["layers"]:
            if layer["synthesizer"].get("min_agreement") is None:
                layer["synthesizer"].pop("min_agreement", None)
        if data.get("ledger") == "full":
            data.pop("ledger")
        for agent in data["agents"]:
            for field_name, unset in _AGENT_DEFAULTS:
                if agent.get(field_name) == unset:
                    del agent[field_name]
        canonical = json.dumps(data, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_AGENT_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("tools", []),
    ("max_steps", 8),
    ("max_tool_calls", None),
)


def _extends_cycles(agents: dict[str, AgentSpec]) -> list[list[str]]:
    cycles: list[list[str]] = []
    reported: set[str] = set()
    for start in agents:
        path: list[str] = []
        node: str | None = start
        while node is not None and node in agents and node not in path:
            path.append(node)
            node = agents[node].extends
        if node is not None and node in path and node not in reported:
            cycle = [*path[path.index(node) :], node]
            reported.update(cycle)
            cycles.append(cycle)
    return cycles
