"""The built-in comparison: a MoA spec, its best single model, and Self-MoA of that model.

MoA is no free lunch: with small models a mixture can score below its best member, and
Self-MoA (one model sampled several times, then synthesized; Li et al. 2025) can beat
mixing models. So an evaluation of a MoA spec runs, by default, side by side:

* ``single-<agent>``: one agent with the chosen agent's model, role and settings, no
  synthesis call (the layer concatenates one proposal, which is the answer);
* ``self-moa-<agent>``: N copies of that agent sampled at temperature > 0, then a
  synthesizer on the same model (N = the MoA's first-layer width, at least 2);
* the MoA spec itself, and with ``aggregations`` the same MoA closed by other modes
  (``vote``: a majority of the proposals' final answers; ``select``: the best proposal as
  written), on the same proposals when sampling is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langgraph_moa.spec import GraphSpec

__all__ = ["EvalSpec", "derive_specs", "sampling", "self_moa_spec", "single_spec", "with_seed"]

Role = Literal["single", "self-moa", "moa", "spec"]


@dataclass(frozen=True)
class EvalSpec:
    """A spec under evaluation: its display label, role and stable key."""

    label: str
    spec: GraphSpec
    role: Role = "spec"

    @property
    def key(self) -> str:
        """``label@hash``: results of a changed spec are not mixed with the old ones."""
        return f"{self.label}@{self.spec.spec_hash()}"


def _best_agent(spec: GraphSpec, best: str | None) -> str:
    names = [a.name for a in spec.agents]
    if best is None:
        return spec.layers[0].agents[0]
    if best not in names:
        raise ValueError(f"--best {best!r} is not an agent of spec {spec.name!r}; agents: {names}")
    return best


def _agent_fields(spec: GraphSpec, name: str) -> dict[str, Any]:
    return spec.agent(name).model_dump(exclude_unset=True, exclude={"name", "extends"})


def _base(spec: GraphSpec) -> dict[str, Any]:
    data = spec.model_dump(exclude_unset=True, include={"models", "defaults"})
    data.setdefault("models", {})
    return data


def single_spec(spec: GraphSpec, best: str | None = None) -> GraphSpec:
    """One agent (``best``, default the first agent of the first layer), no synthesis call."""
    name = _best_agent(spec, best)
    data = _base(spec) | {
        "name": f"single-{name}"[:64],
        "description": f"{name} of {spec.name} alone",
        "agents": [{"name": name, **_agent_fields(spec, name)}],
        "layers": [{"agents": [name], "synthesizer": "concat"}],
    }
    return GraphSpec.model_validate(data)


def self_moa_spec(
    spec: GraphSpec,
    best: str | None = None,
    *,
    samples: int | None = None,
    temperature: float = 0.7,
) -> GraphSpec:
    """``samples`` draws of ``best``'s model at ``temperature`` > 0, synthesized by it."""
    name = _best_agent(spec, best)
    n = samples if samples is not None else max(2, len(spec.layers[0].agents))
    if n < 2:
        raise ValueError(f"Self-MoA needs at least 2 samples, got {n}")
    if temperature <= 0:
        raise ValueError("Self-MoA samples need a temperature above 0")
    fields = _agent_fields(spec, name)
    agent_temperature = fields.get("temperature")
    fields["temperature"] = agent_temperature if agent_temperature else temperature
    data = _base(spec)
    model_name = fields.get("model") or spec.defaults.model
    model = spec.model_spec(model_name)
    if model.temperature is not None and model.temperature <= 0:
        # the model entry pins greedy decoding, which would make every sample the same
        sampled = "self_moa_sampled"
        data["models"][sampled] = model.model_dump(exclude_unset=True) | {
            "temperature": fields["temperature"]
        }
        fields["model"] = sampled
    last = spec.layers[-1].synthesizer.model_dump(exclude_unset=True, exclude={"model"})
    copies = [f"{name}_{i}" for i in range(1, n + 1)]
    data |= {
        "name": f"self-moa-{name}"[:64],
        "description": f"{n} samples of {name} of {spec.name}, synthesized by the same model",
        "agents": [{"name": c, **fields} for c in copies],
        "layers": [
            {
                "agents": copies,
                "synthesizer": last | {"mode": "synthesize", "model": model_name},
            }
        ],
    }
    return GraphSpec.model_validate(data)


def derive_specs(
    spec: GraphSpec,
    *,
    best: str | None = None,
    samples: int | None = None,
    temperature: float = 0.7,
    aggregations: Sequence[str] = (),
) -> list[EvalSpec]:
    """The single-model, Self-MoA and MoA specs of the built-in comparison, in that order;
    with ``aggregations`` (modes such as ``vote``, ``select``), the MoA once per mode of its
    last layer (the spec's own mode first)."""
    name = _best_agent(spec, best)
    n = samples if samples is not None else max(2, len(spec.layers[0].agents))
    specs = [
        EvalSpec(f"single ({name})", single_spec(spec, name), "single"),
        EvalSpec(
            f"self-MoA ({name} x{n})",
            self_moa_spec(spec, name, samples=n, temperature=temperature),
            "self-moa",
        ),
    ]
    own = spec.layers[-1].synthesizer.mode
    if not aggregations or own == "concat":
        return [*specs, EvalSpec(f"MoA ({spec.name})", spec, "moa")]
    from langgraph_moa.graphs import with_aggregation

    modes = [own, *(m for m in dict.fromkeys(aggregations) if m != own)]
    return specs + [
        EvalSpec(
            f"MoA ({spec.name}, {mode})",
            spec if mode == own else with_aggregation(spec, mode),
            "moa",
        )
        for mode in modes
    ]


def with_seed(spec: GraphSpec, seed: int) -> GraphSpec:
    """``spec`` with seeded sampling (``defaults.seed``), unless it sets its own seed."""
    if spec.defaults.seed is not None:
        return spec
    data = spec.model_dump(exclude_unset=True)
    data["defaults"] = {**data.get("defaults", {}), "seed": seed}
    return GraphSpec.model_validate(data)


def sampling(spec: GraphSpec) -> dict[str, Any]:
    """How ``spec`` samples: its seed, and the temperature of every agent and synthesizer
    (a model entry's own temperature wins, as at run time)."""

    def pinned(model: str | None, temperature: float) -> float:
        entry = spec.model_spec(model or spec.defaults.model)
        return entry.temperature if entry.temperature is not None else temperature

    agents = {
        a.name: pinned(
            a.model, a.temperature if a.temperature is not None else spec.defaults.temperature
        )
        for a in spec.agents
    }
    synthesizers = {}
    for i, layer in enumerate(spec.layers, start=1):
        synth = layer.synthesizer
        if synth.mode == "concat":
            continue
        t = synth.temperature
        synthesizers[f"layer {i}"] = pinned(
            synth.model, t if t is not None else spec.defaults.synthesizer_temperature
        )
    return {
        "seed": spec.defaults.seed,
        "seed_per_call": "sha256(seed, node, messages)" if spec.defaults.seed is not None else None,
        "agent_temperatures": agents,
        "synthesizer_temperatures": synthesizers,
    }
