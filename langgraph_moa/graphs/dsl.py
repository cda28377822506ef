"""A fluent Python builder for specs, for users who prefer code to a spec file."""

from __future__ import annotations

from typing import Any, Self

from langgraph_moa.spec import GraphSpec, ModelSpec, load_spec

__all__ = ["SpecBuilder", "with_aggregation", "with_default_model"]


class SpecBuilder:
    """Build a :class:`GraphSpec` step by step.

    >>> spec = (SpecBuilder("demo")
    ...     .model("fast", model="gpt-4o-mini", base_url="http://127.0.0.1:8000/v1")
    ...     .agent("a", role="You are terse.", model="fast")
    ...     .agent("b", model="fast")
    ...     .layer(["a", "b"])
    ...     .build())
    """

    def __init__(self, name: str = "moa", **settings: Any) -> None:
        self._data: dict[str, Any] = {
            "name": name,
            "models": {},
            "agents": [],
            "layers": [],
            **settings,
        }

    def model(self, name: str, **fields: Any) -> Self:
        """Add a named model (fields of :class:`ModelSpec`)."""
        self._data["models"][name] = fields
        return self

    def agent(self, name: str, **fields: Any) -> Self:
        """Add an agent (fields of :class:`AgentSpec`)."""
        self._data["agents"].append({"name": name, **fields})
        return self

    def layer(self, agents: list[str], *, aggregation: str | None = None, **fields: Any) -> Self:
        """Add a layer over ``agents`` (fields of :class:`LayerSpec`); ``aggregation`` is the
        synthesizer's mode (``synthesize``, ``vote``, ``select`` or ``concat``)."""
        if aggregation is not None:
            synth = fields.get("synthesizer") or {}
            synth = {"model": synth} if isinstance(synth, str) else dict(synth)
            fields["synthesizer"] = {**synth, "mode": aggregation}
        self._data["layers"].append({"agents": agents, **fields})
        return self

    def defaults(self, **fields: Any) -> Self:
        """Set defaults (fields of :class:`Defaults`)."""
        self._data["defaults"] = fields
        return self

    def build(self) -> GraphSpec:
        """Validate and return the spec; raises :class:`SpecError` naming each problem."""
        return load_spec(self._data)


def with_default_model(spec: GraphSpec, model: ModelSpec) -> GraphSpec:
    """A copy of ``spec`` whose default model is ``model`` (agents naming a model keep it)."""
    data = spec.model_dump(exclude_unset=True)
    data["models"] = {**data.get("models", {}), "default": model.model_dump(exclude_unset=True)}
    data["defaults"] = {**data.get("defaults", {}), "model": "default"}
    return GraphSpec.model_validate(data)


def with_aggregation(
    spec: GraphSpec, mode: str, *, layer: int = -1, min_agreement: float | None = None
) -> GraphSpec:
    """A copy of ``spec`` whose layer ``layer`` (0-based, default the last) aggregates by
    ``mode``: ``synthesize``, ``vote``, ``select`` or ``concat``."""
    data = spec.model_dump(exclude_unset=True)
    layers = data["layers"]
    synth = dict(layers[layer].get("synthesizer") or {})
    synth["mode"] = mode
    synth.pop("min_agreement", None)
    if min_agreement is not None:
        synth["min_agreement"] = min_agreement
    layers[layer] = {**layers[layer], "synthesizer": synth}
    return load_spec(data)
