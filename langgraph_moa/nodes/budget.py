"""Run budgets (tokens, cost) and usage totals per run, layer and agent.

A budget comes from the spec (``max_total_tokens``, ``max_cost``) and may be replaced
per invocation through ``config["configurable"]["budget"]`` (a mapping with either key;
a key set to None lifts that limit), so ``ainvoke(None, config)`` with a larger budget
resumes a run that stopped on its budget.

Before each model call a node reserves the call's worst case: the prompt's approximate
tokens plus the call's ``max_tokens``, priced with the model entry's prices. When the
reservation does not fit what is left, the call waits for calls in flight to settle
and, if it still does not fit, the node pauses the run with an ``interrupt`` whose value
says why (``{"kind": "budget", ...}``): the run's status is ``interrupted``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig

from langgraph_moa.state import Proposal, Usage, add_usage

__all__ = [
    "BUDGET_KEY",
    "Budget",
    "BudgetExceeded",
    "Ledger",
    "budget_of",
    "parse_budget",
    "total_usage",
    "usage_report",
]

BUDGET_KEY = "budget"
"""The ``configurable`` key whose mapping replaces the spec's budget for one invocation."""

_FIELDS = ("max_total_tokens", "max_cost")


@dataclass(frozen=True)
class Budget:
    """Limits of one run; None means no limit."""

    max_total_tokens: int | None = None
    max_cost: float | None = None

    def __bool__(self) -> bool:
        return self.max_total_tokens is not None or self.max_cost is not None

    def to_config(self) -> dict[str, Any]:
        """The ``configurable["budget"]`` mapping of this budget (None lifts a limit)."""
        return {"max_total_tokens": self.max_total_tokens, "max_cost": self.max_cost}

    def replaced(self, value: Mapping[str, Any] | Budget | None) -> Budget:
        """This budget with the limits ``value`` names replaced (a key set to None lifts it)."""
        if value is None:
            return self
        if isinstance(value, Budget):
            value = value.to_config()
        if not isinstance(value, Mapping):
            raise TypeError(
                f"configurable[{BUDGET_KEY!r}] must be a mapping with max_total_tokens and/or "
                f"max_cost, got {value!r}"
            )
        unknown = sorted(set(value) - set(_FIELDS))
        if unknown:
            raise ValueError(
                f"configurable[{BUDGET_KEY!r}] has unknown key(s) {unknown}; use {list(_FIELDS)}"
            )
        tokens = value.get("max_total_tokens", self.max_total_tokens)
        cost = value.get("max_cost", self.max_cost)
        if tokens is not None and (isinstance(tokens, bool) or int(tokens) <= 0):
            raise ValueError(f"max_total_tokens must be a positive integer, got {tokens!r}")
        if cost is not None and float(cost) <= 0:
            raise ValueError(f"max_cost must be positive, got {cost!r}")
        return Budget(
            None if tokens is None else int(tokens), None if cost is None else float(cost)
        )


def budget_of(config: RunnableConfig | None, spec_budget: Budget) -> Budget:
    """The spec's budget with the invocation's ``configurable["budget"]`` applied."""
    override = ((config or {}).get("configurable") or {}).get(BUDGET_KEY)
    return spec_budget.replaced(override)


def parse_budget(text: str) -> dict[str, int | float | None]:
    """The ``configurable["budget"]`` mapping of a command-line budget: ``20000``,
    ``tokens=20000``, ``cost=0.5``, ``$0.5``, or both joined by a comma; ``none`` lifts a
    limit. Limits not named keep the spec's value."""
    out: dict[str, int | float | None] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.rpartition("=")
        key, value = key.strip().lower(), value.strip()
        if not key:
            key = "cost" if value.startswith("$") else "tokens"
        field = {"tokens": "max_total_tokens", "cost": "max_cost"}.get(key)
        if field is None or field in out:
            raise ValueError(
                f"budget {text!r}: {part!r} is not understood; write tokens=N, cost=X or both, "
                "e.g. --budget tokens=20000,cost=0.50"
            )
        value = value.removeprefix("$").replace("_", "")
        if value.lower() == "none":
            out[field] = None
            continue
        try:
            number: int | float = int(value) if key == "tokens" else float(value)
        except ValueError:
            number = 0
        if number <= 0:
            kind = "integer" if key == "tokens" else "number"
            raise ValueError(f"budget {text!r}: {key} must be a positive {kind}, got {value!r}")
        out[field] = number
    if not out:
        raise ValueError(f"budget {text!r} is empty; write tokens=N, cost=X or both")
    return out


class BudgetExceeded(Exception):
    """The next call would pass the run's budget; ``info`` is the interrupt value."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info["reason"])
        self.info = info


class Ledger:
    """What a run has spent, as one node or one layer's agents see it, with calls in flight
    reserved at their worst case (single event loop)."""

    def __init__(self, budget: Budget, spent: Usage | None = None) -> None:
        self.budget = budget
        self.tokens = int((spent or {}).get("total_tokens", 0))
        self.cost = float((spent or {}).get("cost", 0.0))
        self.tool_calls = int((spent or {}).get("tool_calls", 0))
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self._settled: asyncio.Event | None = None

    def _overrun(self, tokens: int, cost: float, budget: Budget) -> str | None:
        limit_t, limit_c = budget.max_total_tokens, budget.max_cost
        if limit_t is not None and self.tokens + self.reserved_tokens + tokens > limit_t:
            return (
                f"token budget: {self.tokens} used"
                + (f" + {self.reserved_tokens} reserved" if self.reserved_tokens else "")
                + f" + up to {tokens} for this call > max_total_tokens {limit_t}"
            )
        if limit_c is not None and self.cost + self.reserved_cost + cost > limit_c:
            return (
                f"cost budget: {self.cost:.6g} spent"
                + (f" + {self.reserved_cost:.6g} reserved" if self.reserved_cost else "")
                + f" + up to {cost:.6g} for this call > max_cost {limit_c:g}"
            )
        return None

    async def reserve(
        self, tokens: int, cost: float, node: str, *, budget: Budget | None = None
    ) -> tuple[int, float]:
        """Reserve a call's worst case, waiting for calls in flight if that makes it fit;
        raise :class:`BudgetExceeded` when it cannot fit."""
        budget = self.budget if budget is None else budget
        while reason := self._overrun(tokens, cost, budget):
            if not (self.reserved_tokens or self.reserved_cost):
                raise BudgetExceeded(
                    {
                        "kind": "budget",
                        "node": node,
                        "reason": f"{node}: {reason}; resume with a larger budget",
                        "used": {"total_tokens": self.tokens, "cost": self.cost},
                        "next_call": {"total_tokens": tokens, "cost": cost},
                        "budget": budget.to_config(),
                    }
                )
            if self._settled is None:
                self._settled = asyncio.Event()
            self._settled.clear()
            await self._settled.wait()
        self.reserved_tokens += tokens
        self.reserved_cost += cost
        return tokens, cost

    def take_tool_call(self, limit: int | None) -> bool:
        """Count one tool call against ``limit`` (the run's ``max_tool_calls``); False,
        counting nothing, when the limit is reached."""
        if limit is not None and self.tool_calls >= limit:
            return False
        self.tool_calls += 1
        return True

    def settle(self, reservation: tuple[int, float], usage: Usage | None) -> None:
        """Replace a reservation by what the call used (nothing, if it failed)."""
        self.reserved_tokens -= reservation[0]
        self.reserved_cost -= reservation[1]
        if usage:
            self.tokens += int(usage.get("total_tokens", 0))
            self.cost += float(usage.get("cost", 0.0))
        if self._settled is not None:
            self._settled.set()


def total_usage(by_node: Mapping[str, Usage] | None) -> Usage:
    """The sum of a state's ``usage`` mapping."""
    total = Usage()
    for usage in (by_node or {}).values():
        total = add_usage(total, usage)
    return total


_ROUTER = re.compile(r"^(router|synthesizer)_L(\d+)$")


def usage_report(values: Mapping[str, Any]) -> dict[str, Any]:
    """Usage of a run from its state: ``total``, ``by_layer`` (agents, router and
    synthesizer of each layer) and ``by_agent`` (the state's ``usage``: agents summed over
    layers, ``router_L{n}``, ``synthesizer_L{n}``)."""
    by_node: dict[str, Usage] = dict(values.get("usage") or {})
    by_layer: dict[str, Usage] = {}
    proposals: Mapping[str, Mapping[str, Proposal]] = values.get("proposals") or {}
    for layer, by_agent in proposals.items():
        for proposal in by_agent.values():
            if proposal.get("usage"):
                by_layer[layer] = add_usage(by_layer.get(layer), proposal["usage"])
    for name, usage in by_node.items():
        if match := _ROUTER.match(name):
            by_layer[match[2]] = add_usage(by_layer.get(match[2]), usage)
    return {
        "total": total_usage(by_node),
        "by_layer": dict(sorted(by_layer.items(), key=lambda kv: int(kv[0]))),
        "by_agent": by_node,
    }
