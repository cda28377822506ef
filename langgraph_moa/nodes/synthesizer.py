"""The synthesizer node: closes a layer by merging its proposals into one answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config
from langgraph.func import task
from langgraph.types import interrupt

from langgraph_moa.nodes import prompts
from langgraph_moa.nodes._calls import Reply, call_model, invocation_id, spec_budget
from langgraph_moa.nodes._context import NodeContext
from langgraph_moa.nodes._quorum import LayerGate
from langgraph_moa.nodes.agent import approved_budget, make_agent_runner
from langgraph_moa.nodes.aggregation import parse_pick, tally
from langgraph_moa.nodes.attribution import attribute, copied
from langgraph_moa.nodes.budget import BudgetExceeded, Ledger, budget_of, total_usage
from langgraph_moa.nodes.conversation import fitted_history, with_history
from langgraph_moa.nodes.router import agent_inputs
from langgraph_moa.spec import LayerSpec
from langgraph_moa.state import Aggregation, Claim, MoAState, Proposal, Usage, add_usage

__all__ = ["ContextWindowError", "QuorumError", "fit_proposals", "make_synthesizer_node"]

# Tokens kept free besides the reply, for the chat template and counting error.
PROMPT_MARGIN = 64
MIN_PROPOSAL_TOKENS = 16


class ContextWindowError(RuntimeError):
    """The synthesizer's prompt cannot fit the model's context window."""


class QuorumError(RuntimeError):
    """Fewer proposals than the layer's ``min_proposals`` succeeded."""


def _tokens(text: str) -> int:
    return count_tokens_approximately([HumanMessage(text)])


def fit_proposals(
    texts: dict[str, str], budget: int, *, on_overflow: str = "trim"
) -> tuple[dict[str, str], list[str]]:
    """Trim the longest proposals until all fit ``budget`` tokens; say what was trimmed.

    Raises :class:`ContextWindowError` when ``on_overflow`` is ``"fail"`` and they do not
    fit, or when even a minimal share of each proposal cannot fit.
    """
    sizes = {name: _tokens(text) for name, text in texts.items()}
    if sum(sizes.values()) <= budget:
        return texts, []
    if on_overflow == "fail":
        raise ContextWindowError(
            f"the proposals need about {sum(sizes.values())} tokens but only {budget} are left "
            "in the synthesizer's context window; use a model with a larger `context_window`, "
            "lower the agents' `max_tokens`, or set `on_overflow: trim`"
        )
    if budget < MIN_PROPOSAL_TOKENS * len(texts):
        raise ContextWindowError(
            f"only {budget} tokens are left for {len(texts)} proposals in the synthesizer's "
            "context window; use a model with a larger `context_window` or a shorter task"
        )
    # Water-filling: every proposal gets at most `cap` tokens, the largest cap that fits.
    lo, hi = MIN_PROPOSAL_TOKENS, max(sizes.values())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(s, mid) for s in sizes.values()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    fitted: dict[str, str] = {}
    notes: list[str] = []
    for name, text in texts.items():
        if sizes[name] <= lo:
            fitted[name] = text
            continue
        keep = max(1, len(text) * lo // sizes[name])
        fitted[name] = text[:keep].rstrip() + " [...]"
        notes.append(f"proposal of {name} trimmed from about {sizes[name]} to {lo} tokens to fit")
    return fitted, notes


@dataclass
class _Outcome:
    """A layer's answer, the notes about it, the synthesizer's usage (None: no call), how
    it was reached and the agents behind each of its claims."""

    body: str
    notes: list[str]
    usage: Usage | None
    record: Aggregation
    claims: list[Claim]


def make_synthesizer_node(ctx: NodeContext, layer_index: int) -> Any:
    """An async node that closes layer ``layer_index`` (1-based).

    Below the layer's quorum it retries, on a resume, the agents that failed in an earlier
    invocation, and raises :class:`QuorumError` if still short. With
    ``interrupt_before_synthesis`` it then asks a person to approve (or edit) the proposals
    it is about to synthesize, retried ones included."""
    layer: LayerSpec = ctx.spec.layers[layer_index - 1]
    synth = layer.synthesizer
    is_last = layer_index == len(ctx.spec.layers)
    temperature = (
        synth.temperature
        if synth.temperature is not None
        else ctx.spec.defaults.synthesizer_temperature
    )
    max_tokens = synth.max_tokens or ctx.spec.defaults.max_tokens
    name = f"synthesizer_L{layer_index}"
    node = f"L{layer_index}_synthesizer"
    runners = {a: make_agent_runner(ctx, a, layer_index) for a in layer.agents}

    async def synthesizer_node(state: MoAState, config: RunnableConfig) -> dict[str, Any]:
        plan = state.get("plans", {}).get(str(layer_index), [])
        written = state.get("proposals", {}).get(str(layer_index), {})
        update: dict[str, Any] = {}
        quorum = min(layer.min_proposals or 1, len(plan) or len(layer.agents))
        spent = total_usage(state.get("usage"))
        short = quorum - sum(p["status"] == "ok" for p in written.values())
        if short > 0:  # a resume retries what failed in an earlier invocation
            run_id = invocation_id(config)
            stale = _stale(plan, written, run_id)
            retried = (
                await _retry(state, plan, written, stale, quorum, config, run_id) if stale else {}
            )
            if retried:
                update.update(retried)
                written = {**written, **retried["proposals"][str(layer_index)]}
                spent = add_usage(spent, total_usage(retried["usage"]))
        _check_quorum(written, plan, quorum)
        if layer.interrupt_before_synthesis:  # the reviewer sees what is synthesized
            decision = interrupt(
                {
                    "kind": "approve_synthesis",
                    "layer": layer_index,
                    "proposals": {a: p["content"] for a, p in written.items()},
                }
            )
            edits = _edits(decision)
            if edits:
                written = {**written}
                for agent, content in edits.items():
                    base = written.get(agent) or Proposal(
                        agent=agent,
                        layer=layer_index,
                        subtask=state["task"],
                        content="",
                        status="ok",
                    )
                    written[agent] = {**base, "content": content, "status": "ok"}
                update["proposals"] = {
                    str(layer_index): {
                        **update.get("proposals", {}).get(str(layer_index), {}),
                        **{a: written[a] for a in edits},
                    }
                }
        ok = {a: p for a, p in written.items() if p["status"] == "ok"}
        gaps = _gaps(written, plan)
        texts = {a: prompts.with_tools(p["content"], p.get("tools")) for a, p in ok.items()}
        ledger = Ledger(budget_of(config, spec_budget(ctx)), spent)
        outcome = await _aggregate(state, ok, texts, gaps, config, ledger)
        body = outcome.body
        if outcome.usage is not None:
            update["usage"] = {**update.get("usage", {}), name: outcome.usage}
        syntheses = [*state.get("syntheses", [])[: layer_index - 1], body]
        update.update(
            syntheses=syntheses,
            notes=outcome.notes + [f"layer {layer_index}: {g}" for g in gaps],
            aggregation={str(layer_index): outcome.record},
        )
        if is_last:
            update.update(
                answer=body, messages=[AIMessage(body, name="moa")], attribution=outcome.claims
            )
        return update

    async def _aggregate(
        state: MoAState,
        ok: dict[str, Proposal],
        texts: dict[str, str],
        gaps: list[str],
        config: RunnableConfig,
        ledger: Ledger,
    ) -> _Outcome:
        """Turn the layer's proposals into its answer, by the synthesizer's ``mode``."""
        order = list(texts)
        record: Aggregation = {"mode": synth.mode, "proposals": order}
        if synth.mode == "concat":
            body = "\n\n".join(
                prompts.format_proposal(i, a, None, t) for i, (a, t) in enumerate(texts.items(), 1)
            )
            claims = [c for i, a in enumerate(order, 1) for c in copied(ok[a]["content"], [(i, a)])]
            return _Outcome(body, [], None, {**record, "decided_by": "concat"}, claims)
        if synth.mode == "select":
            return await _select(state, ok, texts, gaps, config, ledger, record)
        extra = ""
        if synth.mode == "vote":
            vote = tally(
                {a: ok[a]["content"] for a in order}, min_agreement=synth.min_agreement or 0.5
            )
            record.update(
                {
                    "answers": vote.answers,
                    "votes": vote.votes,
                    "winner": vote.winner,
                    "agreement": vote.agreement,
                    "agent": vote.agent,
                }
            )
            if vote.agent is not None and vote.winner is not None:
                reason = f"{vote.votes[vote.winner]} of {len(order)} agents gave {vote.winner!r}"
                record.update({"decided_by": "vote", "reason": reason})
                note = (
                    f"layer {layer_index}: vote: {vote.describe()}; agreement "
                    f"{vote.agreement:.0%}, the answer is {vote.agent}'s proposal"
                )
                body = ok[vote.agent]["content"]
                claims = copied(body, [(order.index(vote.agent) + 1, vote.agent)])
                return _Outcome(body, [note], None, record, claims)
            if vote.tie:
                why = "a tie"
            elif not vote.votes:
                why = "no answer found"
            else:
                why = f"agreement {vote.agreement:.0%} below {synth.min_agreement or 0.5:.0%}"
            record.update(
                {"decided_by": "synthesizer", "reason": f"{why}: the synthesizer decided"}
            )
            extra = prompts.VOTE_SPLIT.format(votes=vote.describe())
            notes = [f"layer {layer_index}: vote: {vote.describe()}; {why}, synthesized"]
        else:
            record["decided_by"] = "synthesizer"
            notes = []
        messages, fitted_notes = _prompt(
            state, texts, gaps, synth.prompt or prompts.SYNTHESIZER_SYSTEM, extra
        )
        reply, usage = await _call(messages, config, ledger)
        body, claims = attribute(reply.message.text, order, [ok[a]["content"] for a in order])
        cited = sum(not c["inferred"] for c in claims)
        record["cited"] = cited
        return _Outcome(body, notes + fitted_notes, usage, record, claims)

    async def _select(
        state: MoAState,
        ok: dict[str, Proposal],
        texts: dict[str, str],
        gaps: list[str],
        config: RunnableConfig,
        ledger: Ledger,
        record: Aggregation,
    ) -> _Outcome:
        """The synthesizer picks the best proposal, which is the answer as written; a reply
        naming none is sent back once, then the first proposal is taken with a note."""
        order = list(texts)
        messages, notes = _prompt(state, texts, gaps, synth.prompt or prompts.SELECT_SYSTEM, "")
        reply, usage = await _call(messages, config, ledger)
        pick = parse_pick(reply.message.text, len(order), order)
        if pick.choice is None:
            numbers = ", ".join(f"[{i}]" for i in range(1, len(order) + 1))
            repair = [
                *messages,
                reply.message,
                HumanMessage(prompts.SELECT_REPAIR.format(numbers=numbers)),
            ]
            again, more = await _call(repair, config, ledger)
            usage = add_usage(usage, more)
            pick = parse_pick(again.message.text, len(order), order)
        number = pick.choice or 1
        if pick.choice is None:
            agent = order[0]
            shown = pick.reason if len(pick.reason) <= 80 else pick.reason[:77] + "..."
            reason = f"the synthesizer's pick could not be read ({shown!r}); took proposal [1]"
            record.update(
                {"decided_by": "fallback", "choice": None, "agent": agent, "reason": reason}
            )
            notes.append(f"layer {layer_index}: select: {reason} of {agent}")
        else:
            agent = order[pick.choice - 1]
            record.update(
                {
                    "decided_by": "select",
                    "choice": pick.choice,
                    "agent": agent,
                    "reason": pick.reason,
                }
            )
            notes.append(f"layer {layer_index}: select: proposal [{pick.choice}] of {agent}")
        body = ok[agent]["content"]
        return _Outcome(body, notes, usage, record, copied(body, [(number, agent)]))

    def _check_quorum(written: dict[str, Proposal], plan: list[Any], quorum: int) -> None:
        """Raise :class:`QuorumError` when fewer than ``quorum`` proposals are ok."""
        ok = sum(p["status"] == "ok" for p in written.values())
        if ok < quorum:
            gaps = _gaps(written, plan)
            raise QuorumError(
                f"layer {layer_index}: {ok} of {len(plan) or len(layer.agents)} agents "
                f"answered, {quorum} needed ({'; '.join(gaps) or 'no proposals'}); resume the "
                "run once the models answer again: it retries the agents that did not answer"
            )

    async def _retry(
        state: MoAState,
        plan: list[Any],
        written: dict[str, Proposal],
        stale: list[str],
        quorum: int,
        config: RunnableConfig,
        run_id: str,
    ) -> dict[str, Any]:
        """:func:`_retry_stale` as a LangGraph task, whose result is checkpointed.

        The node runs again from its top when it is resumed after an interrupt (the
        reviewer's of ``interrupt_before_synthesis``, or a budget pause); the task's result
        is in the checkpoint by then, so the proposals synthesized are the ones the reviewer
        saw, with no call sent again. (The call ledger would answer those calls too, but
        only under the run executor and when it keeps text; a ``Command`` looping back to
        this node would also fire its edge to the next layer.) A retry still short of the
        quorum raises inside the task, so nothing is kept and the next resume retries again.
        Its result is shaped as a state update (``proposals`` by layer, ``usage``), as the
        ``updates`` stream shows it; called outside a graph, it is a plain call.
        """
        needed = quorum - sum(p["status"] == "ok" for p in written.values())

        async def retry() -> dict[str, Any]:
            retried = await _retry_stale(state, stale, needed, config, run_id)
            _check_quorum({**written, **retried["proposals"]}, plan, quorum)
            return {
                "proposals": {str(layer_index): retried["proposals"]},
                "usage": retried["usage"],
            }

        retry.__name__ = f"{node}.retry"  # its name in streams: no node's name has a dot
        try:
            get_config()
        except RuntimeError:  # not in a graph: nothing to checkpoint the result in
            return await retry()
        return await task(retry)()

    async def _retry_stale(
        state: MoAState, stale: list[str], needed: int, config: RunnableConfig, run_id: str
    ) -> dict[str, Any]:
        """Run again, under the layer's gate, the ``stale`` agents (see :func:`_stale`):
        the run is being resumed."""
        inputs = agent_inputs(ctx, state, layer_index)
        ledger = Ledger(budget_of(config, spec_budget(ctx)), total_usage(state.get("usage")))
        gate = LayerGate(
            layer=layer_index,
            needed=needed,
            grace=layer.grace_period,
            timeout=layer.timeout,
            ledger=ledger,
            run_id=run_id,
        )
        try:
            results = await asyncio.gather(
                *(runners[a](inputs[a], config, gate) for a in stale), return_exceptions=True
            )
            over = [a for a, r in zip(stale, results, strict=True) if isinstance(r, BudgetExceeded)]
            if over:
                first = next(r for r in results if isinstance(r, BudgetExceeded))
                budget = approved_budget(interrupt(first.info), ledger)
                again = await asyncio.gather(
                    *(runners[a](inputs[a], config, gate, budget) for a in over)
                )
                results = [
                    again[over.index(a)] if a in over else r
                    for a, r in zip(stale, results, strict=True)
                ]
        finally:
            gate.close()
        merged: dict[str, Any] = {"proposals": {}, "usage": {}}
        for result in results:
            if isinstance(result, BaseException):
                raise result
            merged["proposals"].update(result["proposals"][str(layer_index)])
            for agent, usage in (result.get("usage") or {}).items():
                merged["usage"][agent] = add_usage(merged["usage"].get(agent), usage)
        return merged

    def _prompt(
        state: MoAState, texts: dict[str, str], gaps: list[str], template: str, extra: str
    ) -> tuple[list[BaseMessage], list[str]]:
        """The synthesizer's messages: ``template`` with the numbered proposals (trimmed to
        the context window), gaps, ``extra``, earlier turns and the task; and its notes."""
        task = state["task"]
        window = ctx.models.context_window(synth.model)
        fixed = _tokens(template + extra) + _tokens(task) + 12 * len(texts) + PROMPT_MARGIN
        budget = window - max_tokens - fixed
        fitted, notes = fit_proposals(texts, budget, on_overflow=synth.on_overflow)
        listing = "\n\n".join(
            prompts.numbered_proposal(i, a, t) for i, (a, t) in enumerate(fitted.items(), 1)
        )
        system = (
            template.format(proposals=listing)
            if "{proposals}" in template
            else (f"{template}\n\n{listing}")
        )
        all_gaps = gaps + notes
        if all_gaps:
            system += prompts.SYNTHESIZER_GAPS.format(gaps="; ".join(all_gaps))
        system += extra
        base: list[BaseMessage] = [SystemMessage(system), HumanMessage(task)]
        history, dropped = fitted_history(state, base, window, max_tokens)
        messages = with_history(base, history, dropped)
        if dropped:
            notes.append(
                f"layer {layer_index}: the synthesizer saw {len(history)} of "
                f"{len(history) + dropped} earlier turns (context window)"
            )
        return messages, notes

    async def _call(
        messages: list[BaseMessage], config: RunnableConfig, ledger: Ledger
    ) -> tuple[Reply, Usage]:
        kwargs: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        try:
            reply = await call_model(
                ctx, synth.model, messages, config, ledger=ledger, node=node, **kwargs
            )
        except BudgetExceeded as exc:  # pause the run; a resume value may raise the budget
            approved = approved_budget(interrupt(exc.info), ledger)
            reply = await call_model(
                ctx,
                synth.model,
                messages,
                config,
                ledger=ledger,
                node=node,
                budget=approved,
                **kwargs,
            )
        return reply, reply.usage

    synthesizer_node.__name__ = name
    return synthesizer_node


def _edits(decision: Any) -> dict[str, str]:
    """Proposal replacements from a resume value: ``{"proposals": {agent: text}}``."""
    if isinstance(decision, dict) and isinstance(decision.get("proposals"), dict):
        return {str(k): str(v) for k, v in decision["proposals"].items()}
    return {}


def _stale(plan: list[Any], written: dict[str, Proposal], run_id: str) -> list[str]:
    """The planned agents whose proposal failed or went missing in an earlier invocation
    than ``run_id`` (or was never written)."""
    return [
        a
        for a in (s["agent"] for s in plan)
        if (p := written.get(a)) is None or (p["status"] != "ok" and p.get("run_id") != run_id)
    ]


def _gaps(written: dict[str, Proposal], plan: list[Any]) -> list[str]:
    """What the layer lacks: failed agents (with the reason), planned agents that never
    wrote, agents cut for time."""
    gaps = [
        f"{a} failed ({p.get('error') or 'no reason given'})"
        for a, p in written.items()
        if p["status"] == "failed"
    ]
    gaps += [f"{s['agent']} did not answer" for s in plan if s["agent"] not in written]
    gaps += [f"{a} did not answer in time" for a, p in written.items() if p["status"] == "missing"]
    return gaps
