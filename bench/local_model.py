"""The embedded model's two runtimes on a MoA-shaped workload: which one serves a layer faster?

* ``inprocess``: ``llama_cpp.Llama`` on a worker thread of this process (``ChatLocalLlama``),
  with the default adaptive thread count and with a fixed one (``MOA_LOCAL_THREADS``).
* ``server``: ``python -m llama_cpp.server`` on 127.0.0.1 through ``ChatOpenAI``
  (``ChatLocalServer``), fixed thread count (a server cannot adapt it per request).

``--layer``: instead, the batched decoding of the in-process runtime: one proposal alone against
a layer of 3 proposers called at once, with concurrent requests decoded together (the default,
``MOA_LOCAL_PARALLEL=8``) and one at a time in arrival order (``MOA_LOCAL_PARALLEL=1``, the
queue of earlier versions), alternating, with the load average of each round. The tasks ask for
long answers so that every proposal generates ``--max-tokens`` tokens (checked), and the layer's
ideal is one proposal's time. Writes bench/results/local_layer.json.

Fixed thread counts are the CPUs of the machine (``--threads``). For each configuration:
start-up (model load / server ready), prompt and generation speed of one streamed call with a
~500-token prompt, and MoA rounds: 3 proposers called concurrently (roles and temperatures
differ, fixed seeds), then 1 aggregator that reads the 3 answers. Rounds alternate between the
configurations so that load from other processes hits all alike. Prints a table and writes
bench/results/local_model.json.

    python bench/local_model.py [--rounds 5] [--max-tokens 128] [--threads N] [--out FILE]
    python bench/local_model.py --layer [--rounds 5] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from langgraph_moa.models import local
from langgraph_moa.models.local import ChatLocalLlama, ChatLocalServer

RESULTS = Path(__file__).parent / "results" / "local_model.json"
TASKS = [
    "What are two advantages of using version control such as git?",
    "Explain in a few sentences why unit tests are useful.",
    "Give three tips for writing readable Python code.",
    "What is the difference between a list and a tuple in Python?",
    "Why do databases use indexes?",
]
ROLES = [
    ("You are a careful engineer. Answer precisely.", 0.7),
    ("You are a teacher. Explain simply, with an example.", 0.8),
    ("You are a critic. Point out pitfalls and trade-offs.", 0.9),
]
AGGREGATE = (
    "You have been provided with a set of responses from various assistants to the user's "
    "question. Synthesize them into a single, high-quality answer. Critically evaluate the "
    "information; some of it may be biased or incorrect.\n\nResponses:\n"
)
LONG_PROMPT = AGGREGATE + "\n".join(
    f"{i}. " + "Version control records every change to a project, so you can go back, "
    "compare versions, work on branches in parallel and merge them, and see who changed what "
    "and why. " * 4
    for i in range(1, 4)
)


LAYER_TASKS = [
    "Write a long, detailed essay about the history of version control systems.",
    "Write a long, detailed guide to testing Python code, with many examples.",
    "Write a long, detailed story about a lighthouse keeper and a storm.",
]
LAYER_VARIANTS = {"batched": str(local.DEFAULT_PARALLEL), "queue": "1"}


async def layer_round(task: str, max_tokens: int, seed: int) -> dict[str, Any]:
    """Each proposer alone, one after the other, then the 3 at once (same seeds, same answers)."""

    def proposer(i: int) -> tuple[BaseChatModel, list[Any]]:
        role, temperature = ROLES[i]
        model = ChatLocalLlama(temperature=temperature, max_tokens=max_tokens, seed=seed + i)
        return model, [SystemMessage(role), HumanMessage(task)]

    alone, texts = [], []
    for i in range(len(ROLES)):
        model, messages = proposer(i)
        t0 = time.perf_counter()
        answer = await model.ainvoke(messages)
        alone.append(time.perf_counter() - t0)
        texts.append(answer.content)
        assert tokens_of(answer) == max_tokens, f"proposal {i} stopped at {tokens_of(answer)}"
    t0 = time.perf_counter()
    answers = await asyncio.gather(
        *(model.ainvoke(messages) for model, messages in map(proposer, range(len(ROLES))))
    )
    layer = time.perf_counter() - t0
    assert [a.content for a in answers] == texts, "the layer answered differently"
    one = statistics.median(alone)
    return {
        "one_proposal_s": one,
        "alone_s": alone,
        "layer_s": layer,
        "layer_over_one": layer / one,
        "load_avg": os.getloadavg()[0],
    }


async def layer_main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()[0]
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in LAYER_VARIANTS}
    for r in range(args.rounds):
        order = list(LAYER_VARIANTS) if r % 2 == 0 else list(LAYER_VARIANTS)[::-1]
        for variant in order:
            os.environ["MOA_LOCAL_PARALLEL"] = LAYER_VARIANTS[variant]
            await make("inprocess", 0.0, 1, 0).ainvoke("warm up")  # (re)load outside the timing
            task = LAYER_TASKS[r % len(LAYER_TASKS)]
            row = await layer_round(task, args.max_tokens, 10 * r)
            rows[variant].append(row)
            print(
                f"round {r + 1}/{args.rounds} {variant:<8} one proposal "
                f"{row['one_proposal_s']:6.2f} s, layer of 3 {row['layer_s']:6.2f} s = "
                f"{row['layer_over_one']:.2f}x "
                f"(load average {row['load_avg']:.1f})",
                flush=True,
            )
    os.environ.pop("MOA_LOCAL_PARALLEL", None)
    local.shutdown_local()
    steps = step_costs(5)
    print("\nCPU ms per decode step, 1 thread (median of 5):")
    for case, ms in steps.items():
        print(f"  {case:<20} {ms:6.2f}")
    summary = {
        v: {
            k: statistics.median(x[k] for x in rows[v])
            for k in ("one_proposal_s", "layer_s", "layer_over_one", "load_avg")
        }
        for v in LAYER_VARIANTS
    }
    print(f"\n{'variant':<8} {'one s':>7} {'layer s':>8} {'layer/one':>9} {'load':>5}")
    for v, m in summary.items():
        print(
            f"{v:<8} {m['one_proposal_s']:>7.2f} {m['layer_s']:>8.2f} "
            f"{m['layer_over_one']:>8.2f}x {m['load_avg']:>5.1f}"
        )
    ratio = summary["batched"]["layer_over_one"]
    verdict = (
        f"a layer of 3 proposers ({args.max_tokens} tokens each) takes {ratio:.2f}x one "
        f"proposal batched, {summary['queue']['layer_over_one']:.2f}x queued (medians of "
        f"{args.rounds} rounds); goal <= 1.6x {'met' if ratio <= 1.6 else 'NOT met'}"
    )
    print(f"\n{verdict}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    out = args.out if args.out != RESULTS else RESULTS.with_name("local_layer.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "local_model --layer",
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_before": load_before,
                    "load_avg_after": os.getloadavg()[0],
                },
                "model": local.LOCAL_MODEL_NAME,
                "max_tokens": args.max_tokens,
                "rounds": rows,
                "median": summary,
                "cpu_ms_per_step": steps,
                "verdict": verdict,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


def step_costs(repeat: int) -> dict[str, float]:
    """CPU ms of one llama_decode step by sequences decoded and logits computed (1 thread).

    Explains the layer ratio: what a step of 3 sequences costs against a step of 1, split into
    the transformer (no logits) and the output layer (the logits rows; 2 to 4 rows take
    llama.cpp's llamafile kernel instead of the one-row dot product).
    """
    import llama_cpp

    os.environ["MOA_LOCAL_PARALLEL"] = str(local.DEFAULT_PARALLEL)
    os.environ["MOA_LOCAL_THREADS"] = "1"
    worker = local._shared_worker()
    worker.tokenize("warm up")  # loads the model
    ctx, batch = worker._ctx, worker._batch
    cases = [(1, 0), (1, 1), (2, 2), (3, 0), (3, 1), (3, 3), (4, 4)]
    times: dict[tuple[int, int], list[float]] = {c: [] for c in cases}
    for _ in range(repeat):
        for width, outputs in cases:
            llama_cpp.llama_memory_clear(ctx.memory, True)
            start, steps = time.process_time(), 0
            while time.process_time() - start < 0.5:
                for i in range(width):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = 100 + i, steps, 1
                    batch.seq_id[i][0], batch.logits[i] = i, i < outputs
                batch.n_tokens = width
                assert llama_cpp.llama_decode(ctx.ctx, batch) == 0
                steps += 1
            times[(width, outputs)].append((time.process_time() - start) / steps * 1000)
    llama_cpp.llama_memory_clear(ctx.memory, True)
    local.shutdown_local()
    for name in ("MOA_LOCAL_PARALLEL", "MOA_LOCAL_THREADS"):
        os.environ.pop(name, None)
    return {f"width {w}, {o} logits": statistics.median(v) for (w, o), v in times.items()}


CONFIGS = {
    "inprocess-adaptive": ("inprocess", None),
    "inprocess-fixed": ("inprocess", "threads"),
    "server-fixed": ("server", "threads"),
}


def use(config: str, threads: int) -> str:
    """Set the environment for ``config``; returns its runtime."""
    runtime, fixed = CONFIGS[config]
    if fixed:
        os.environ["MOA_LOCAL_THREADS"] = str(threads)
    else:
        os.environ.pop("MOA_LOCAL_THREADS", None)
    return runtime


def make(runtime: str, temperature: float, max_tokens: int, seed: int) -> BaseChatModel:
    if runtime == "inprocess":
        return ChatLocalLlama(temperature=temperature, max_tokens=max_tokens, seed=seed)
    model = ChatLocalServer(temperature=temperature, max_tokens=max_tokens)
    return model.bind(seed=seed)  # type: ignore[return-value]


def tokens_of(message: Any) -> int:
    usage = getattr(message, "usage_metadata", None) or {}
    return int(usage.get("output_tokens", 0))


async def startup(runtime: str) -> dict[str, float]:
    """Cold start: time until the first (1-token) answer, and the load/ready part of it."""
    local.shutdown_local()
    t0 = time.perf_counter()
    await make(runtime, 0.0, 1, 0).ainvoke("hi")
    first = time.perf_counter() - t0
    holder = local._Shared.worker if runtime == "inprocess" else local._Shared.server
    assert holder is not None and holder.load_seconds is not None
    return {"load_s": holder.load_seconds, "first_answer_s": first}


async def speed(runtime: str, max_tokens: int) -> dict[str, float]:
    """Prompt and generation speed of one streamed call (greedy, long prompt)."""
    messages = [SystemMessage(LONG_PROMPT), HumanMessage("Write the combined answer.")]
    prompt_tokens = (await make("inprocess", 0.0, 1, 0).ainvoke(messages)).usage_metadata
    assert prompt_tokens is not None
    n_prompt = prompt_tokens["input_tokens"]
    model = make(runtime, 0.0, max_tokens, 0)
    await model.ainvoke("warm up")  # the prompt must not be in the KV cache from a prior call
    t0 = time.perf_counter()
    first = None
    pieces = []
    async for chunk in model.astream(messages):
        if chunk.content and first is None:
            first = time.perf_counter() - t0
        pieces.append(chunk)
    total = time.perf_counter() - t0
    assert first is not None
    n_out = len(await asyncio.to_thread(_count, "".join(str(c.content) for c in pieces)))
    return {
        "prompt_tokens": n_prompt,
        "completion_tokens": n_out,
        "prompt_tok_s": n_prompt / first,
        "gen_tok_s": (n_out - 1) / (total - first),
        "time_to_first_token_s": first,
    }


def _count(text: str) -> list[int]:
    return local._shared_worker().tokenize(text)


async def moa_round(runtime: str, task: str, max_tokens: int, seed: int) -> dict[str, float]:
    t0 = time.perf_counter()
    answers = await asyncio.gather(
        *(
            make(runtime, temp, max_tokens, seed + i).ainvoke(
                [SystemMessage(role), HumanMessage(task)]
            )
            for i, (role, temp) in enumerate(ROLES)
        )
    )
    t1 = time.perf_counter()
    refs = "\n".join(f"{i}. {a.content}" for i, a in enumerate(answers, 1))
    final = await make(runtime, 0.2, max_tokens, seed).ainvoke(
        [SystemMessage(AGGREGATE + refs), HumanMessage(task)]
    )
    t2 = time.perf_counter()
    generated = sum(tokens_of(a) for a in answers) + tokens_of(final)
    return {
        "round_s": t2 - t0,
        "proposers_s": t1 - t0,
        "aggregator_s": t2 - t1,
        "generated_tokens": generated,
        "aggregator_prompt_tokens": (final.usage_metadata or {}).get("input_tokens", 0),
        "round_tok_s": generated / (t2 - t0),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--layer", action="store_true", help="batched vs queued MoA layer only")
    args = ap.parse_args()
    if args.layer:
        await layer_main(args)
        return
    configs = list(CONFIGS)
    load_before = os.getloadavg()[0]
    result: dict[str, Any] = {}
    for config in configs:
        runtime = use(config, args.threads)
        result[config] = {
            "runtime": runtime,
            "threads": "adaptive" if CONFIGS[config][1] is None else args.threads,
            "startup": await startup(runtime),
            "speed": await speed(runtime, args.max_tokens),
            "rounds": [],
        }
    for r in range(args.rounds):
        for config in configs if r % 2 == 0 else configs[::-1]:
            runtime = use(config, args.threads)
            await make(runtime, 0.0, 1, 0).ainvoke("warm up")  # (re)load outside the timing
            task = TASKS[r % len(TASKS)]
            row = await moa_round(runtime, task, args.max_tokens, r)
            result[config]["rounds"].append(row)
            print(
                f"round {r + 1}/{args.rounds} {config:<19} {row['round_s']:6.2f} s "
                f"{row['round_tok_s']:5.1f} tok/s  (load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    local.shutdown_local()

    header = (
        f"{'configuration':<19} {'load s':>6} {'1st ans s':>9} {'prompt t/s':>10} {'gen t/s':>7} "
        f"{'round s':>7} {'propose s':>9} {'aggr s':>6} {'tokens':>6} {'round t/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for config in configs:
        rounds = result[config]["rounds"]
        med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
        result[config]["median"] = med
        s, sp = result[config]["startup"], result[config]["speed"]
        print(
            f"{config:<19} {s['load_s']:>6.2f} {s['first_answer_s']:>9.2f} "
            f"{sp['prompt_tok_s']:>10.0f} {sp['gen_tok_s']:>7.1f} {med['round_s']:>7.2f} "
            f"{med['proposers_s']:>9.2f} {med['aggregator_s']:>6.2f} "
            f"{med['generated_tokens']:>6.0f} {med['round_tok_s']:>9.1f}"
        )

    def rate(config: str) -> float:
        return float(result[config]["median"]["round_tok_s"])

    same = rate("inprocess-fixed") / rate("server-fixed") - 1
    default = rate("inprocess-adaptive") / rate("server-fixed") - 1
    verdict = (
        f"with the same {args.threads} threads, in-process serves a MoA round at "
        f"{same:+.0%} generated tokens per second of round wall time vs the server; with its "
        f"default adaptive threads {default:+.0%} (medians of {args.rounds} rounds; rounds "
        "generate different lengths, so tokens/s is compared, not seconds)"
    )
    print(f"\n{verdict}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "local_model",
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_before": load_before,
                    "load_avg_after": os.getloadavg()[0],
                },
                "model": local.LOCAL_MODEL_NAME,
                "context_window": local.LOCAL_CONTEXT_WINDOW,
                "max_tokens": args.max_tokens,
                "rounds": args.rounds,
                "results": result,
                "default_runtime": local.DEFAULT_RUNTIME,
                "verdict": verdict,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
