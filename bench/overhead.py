"""Engine overhead: wall time of a run against its ideal critical path, per checkpointer.

Every model call waits a fixed injected latency on the test model server (run in its own
process, so it does not compete with the engine for the GIL). The ideal wall time of a run
is the sum over layers of its slowest call chain: router call (if routed) + one agent call
(agents run in parallel) + synthesizer call (if it synthesizes). The same graphs are also
written in raw LangGraph (a hand-written ``StateGraph`` + ``Send`` making the same calls) and
timed with the same checkpointers. Prints a table and writes bench/results/overhead.json.

    python bench/overhead.py [--latency 0.1] [--repeat 10] [--graphs layered,team]
                             [--stores memory,sqlite,postgres] [--pg-admin URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import httpx
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send

from langgraph_moa.graphs import compile_graph, preset, with_default_model
from langgraph_moa.spec import GraphSpec, ModelSpec

RESULTS = Path(__file__).parent / "results"
MODEL = "m"
TEAM_PLAN = {
    "plan": [
        {"agent": "research", "subtask": "state the facts"},
        {"agent": "coding", "subtask": "write the code"},
        {"agent": "analysis", "subtask": "weigh the trade-offs"},
    ]
}
ROUTER_MARK = "router of a team"  # phrase of both router prompts; the server's rule keys on it
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


# -- the test model server, in a subprocess ------------------------------------------------
class Server:
    """``python -m langgraph_moa.testing`` in a child process, scripted over HTTP."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "langgraph_moa.testing", "--latency", str(latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            self.close()
            raise RuntimeError("the test model server did not start")
        self.root = self.base_url.removesuffix("/v1")
        self.post("/_test/rules", [{"system": ROUTER_MARK, "json": TEAM_PLAN}])

    def post(self, path: str, body: Any = None) -> Any:
        return httpx.post(self.root + path, json=body, timeout=30).json()

    def calls(self) -> int:
        return int(httpx.get(self.root + "/_test/calls", timeout=30).json()["total"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@contextlib.contextmanager
def model_server(latency: float) -> Iterator[Server]:
    srv = Server(latency)
    try:
        yield srv
    finally:
        srv.close()


# -- checkpointers -------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def postgres_url(admin: str) -> AsyncIterator[str]:
    """A throw-away PostgreSQL database (SQLAlchemy psycopg URL), dropped afterwards."""
    import psycopg

    name = f"moa_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def checkpointer(store: str, tmp: str, pg_admin: str) -> AsyncIterator[Any]:
    """``memory`` (InMemorySaver), ``sqlite`` or ``postgres`` (our SQLAlchemy saver)."""
    if store == "memory":
        yield InMemorySaver()
        return
    from langgraph_moa.runtime.store import open_checkpointer

    if store == "sqlite":
        async with open_checkpointer(f"sqlite:///{tmp}/bench-{uuid.uuid4().hex}.sqlite") as saver:
            yield saver
    elif store == "postgres":
        async with postgres_url(pg_admin) as url, open_checkpointer(url) as saver:
            yield saver
    else:
        raise SystemExit(f"unknown store {store!r}; use memory, sqlite or postgres")


class StoreUnavailable(RuntimeError):
    """A checkpointer that cannot be opened on this machine (driver or server missing)."""


STORE_LABELS = {
    "memory": "InMemorySaver",
    "sqlite": "SQLite (ours)",
    "postgres": "PostgreSQL (ours)",
}


# -- the specs and their ideal critical path -------------------------------------------------
def bench_spec(name: str, base_url: str, **model: Any) -> GraphSpec:
    """Preset ``name`` with every node on the test server's model ``m``."""
    return with_default_model(preset(name), ModelSpec(model=MODEL, base_url=base_url, **model))


def critical_calls(spec: GraphSpec) -> int:
    """Model calls on the critical path: per layer, router + one agent + synthesizer."""
    return sum(
        (layer.routing.mode == "router") + 1 + (layer.synthesizer.mode == "synthesize")
        for layer in spec.layers
    )


# -- the same graphs in raw LangGraph -------------------------------------------------------
def add_or_clear(left: list[str], right: list[str]) -> list[str]:
    """Append proposals; an empty list (written by a layer's close node) clears them."""
    return [] if not right else left + right


class RawState(TypedDict, total=False):
    task: str
    plan: list[dict[str, str]]
    proposals: Annotated[list[str], add_or_clear]
    previous: str
    answer: str


class RawAgentInput(TypedDict):
    task: str
    subtask: str
    previous: str


def raw_graph(spec: GraphSpec, base_url: str, saver: BaseCheckpointSaver[Any]) -> Any:
    """``spec``'s graph hand-written with ``StateGraph`` + ``Send``: same calls, same order."""
    d = spec.defaults

    def llm(temperature: float) -> ChatOpenAI:
        return ChatOpenAI(
            model=MODEL,
            base_url=base_url,
            api_key="x",  # type: ignore[arg-type]
            temperature=temperature,
            max_tokens=d.max_tokens,  # type: ignore[call-arg]
            max_retries=0,
        )

    agent_llm, synth_llm = llm(d.temperature), llm(d.synthesizer_temperature)
    graph = StateGraph(RawState)
    previous_node = START
    for n, layer in enumerate(spec.layers, start=1):
        routed = layer.routing.mode == "router"

        async def route(state: RawState, layer: Any = layer) -> dict[str, Any]:
            reply = await agent_llm.ainvoke(
                [
                    SystemMessage(f"You are the {ROUTER_MARK}: {layer.agents}"),
                    HumanMessage(state["task"]),
                ]
            )
            return {"plan": json.loads(reply.text)["plan"]}

        def fan_out(
            state: RawState, n: int = n, layer: Any = layer, routed: bool = routed
        ) -> list[Send]:
            plan = (
                state["plan"]
                if routed
                else [{"agent": a, "subtask": state["task"]} for a in layer.agents]
            )
            return [
                Send(
                    f"L{n}_{p['agent']}",
                    {
                        "task": state["task"],
                        "subtask": p["subtask"],
                        "previous": state.get("previous", ""),
                    },
                )
                for p in plan
            ]

        async def agent(payload: RawAgentInput) -> dict[str, Any]:
            system = "You are one expert of a team. Previous round:\n" + payload["previous"]
            reply = await agent_llm.ainvoke(
                [SystemMessage(system), HumanMessage(payload["subtask"])]
            )
            return {"proposals": [reply.text]}

        async def close(
            state: RawState, synthesize: bool = layer.synthesizer.mode == "synthesize"
        ) -> dict[str, Any]:
            listing = "\n\n".join(state["proposals"])
            if synthesize:
                reply = await synth_llm.ainvoke(
                    [
                        SystemMessage("Synthesize these answers:\n" + listing),
                        HumanMessage(state["task"]),
                    ]
                )
                listing = reply.text
            return {"previous": listing, "answer": listing, "proposals": []}

        head = f"L{n}_router"
        graph.add_node(head, route if routed else (lambda state: {}))
        graph.add_edge(previous_node, head)
        targets = [f"L{n}_{a}" for a in layer.agents]
        graph.add_conditional_edges(head, fan_out, targets)
        for target in targets:
            graph.add_node(target, agent, input_schema=RawAgentInput)
            graph.add_edge(target, f"L{n}_close")
        graph.add_node(f"L{n}_close", close)
        previous_node = f"L{n}_close"
    graph.add_edge(previous_node, END)
    return graph.compile(checkpointer=saver)


# -- measuring --------------------------------------------------------------------------------
async def measure(
    graph_name: str, store: str, impls: list[str], srv: Server, args: argparse.Namespace, tmp: str
) -> list[dict[str, Any]]:
    """Time ``repeat`` runs of each implementation on one store, alternating between them
    run by run so that both see the same background load."""
    spec = bench_spec(graph_name, srv.base_url)
    async with contextlib.AsyncExitStack() as stack:
        try:
            saver = await stack.enter_async_context(checkpointer(store, tmp, args.pg_admin))
        except Exception as exc:  # the store is not available here: say so, go on
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        graphs: dict[str, CompiledStateGraph] = {
            impl: compile_graph(spec, checkpointer=saver)
            if impl == "langgraph-moa"
            else raw_graph(spec, srv.base_url, saver)
            for impl in impls
        }

        async def run(impl: str, task: str) -> float:
            config = {"configurable": {"thread_id": uuid.uuid4().hex}}
            t0 = time.perf_counter()
            out = await graphs[impl].ainvoke({"task": task}, config, durability="sync")
            if not out.get("answer"):
                raise RuntimeError(f"{impl} run ended without an answer: {out}")
            return time.perf_counter() - t0

        calls: dict[str, float] = {}
        for impl in impls:  # warm up, and count the model calls of one run
            before = srv.calls()
            await run(impl, "warm up")
            calls[impl] = srv.calls() - before
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        for i in range(args.repeat):
            order = impls if i % 2 == 0 else impls[::-1]
            for impl in order:
                times[impl].append(await run(impl, f"task {i}: explain idempotency keys"))
    ideal = critical_calls(spec) * args.latency
    rows = []
    for impl in impls:
        median = statistics.median(times[impl])
        p90 = statistics.quantiles(times[impl], n=10)[-1] if args.repeat > 1 else median
        rows.append(
            {
                "graph": graph_name,
                "impl": impl,
                "store": STORE_LABELS[store],
                "calls_per_run": calls[impl],
                "ideal_s": round(ideal, 3),
                "median_s": round(median, 4),
                "p90_s": round(p90, 4),
                "overhead_ms": round((median - ideal) * 1000, 1),
                "overhead_pct": round((median - ideal) / ideal * 100, 1) if ideal else "",
            }
        )
    if "raw-langgraph" in times:  # the engine's cost over the same graph written by hand
        raw = statistics.median(times["raw-langgraph"])
        for row in rows:
            row["vs_raw_ms"] = round((row["median_s"] - raw) * 1000, 1) or 0.0
    return rows


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> None:
    print(
        "  ".join(
            f"{title:>{w}}" if i else f"{title:<{w}}" for i, (_, title, w) in enumerate(columns)
        )
    )
    for r in rows:
        print(
            "  ".join(
                f"{r.get(key, ''):>{w}}" if i else f"{r.get(key, ''):<{w}}"
                for i, (key, _, w) in enumerate(columns)
            )
        )


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.1, help="seconds per model call")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per row")
    ap.add_argument("--graphs", default="layered,team")
    ap.add_argument("--stores", default="memory,sqlite,postgres")
    ap.add_argument("--impls", default="langgraph-moa,raw-langgraph")
    ap.add_argument("--pg-admin", default=os.environ.get("MOA_TEST_PG", PG_ADMIN))
    ap.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    impls = args.impls.split(",")
    load_before = load_average()
    started = time.perf_counter()
    with model_server(args.latency) as srv, tempfile.TemporaryDirectory() as tmp:
        for graph_name in args.graphs.split(","):
            for store in args.stores.split(","):
                try:
                    rows += await measure(graph_name, store, impls, srv, args, tmp)
                except StoreUnavailable as exc:
                    skipped.append(f"{graph_name}/{store}: {exc}")
    print(
        f"engine overhead, {args.latency * 1000:.0f} ms per model call, {args.repeat} runs per row"
    )
    print_table(
        rows,
        [
            ("graph", "graph", 8),
            ("impl", "impl", 14),
            ("store", "store", 18),
            ("calls_per_run", "calls", 5),
            ("ideal_s", "ideal s", 7),
            ("median_s", "median s", 8),
            ("p90_s", "p90 s", 7),
            ("overhead_ms", "over ms", 7),
            ("overhead_pct", "over %", 6),
            ("vs_raw_ms", "vs raw ms", 9),
        ],
    )
    for line in skipped:
        print(f"skipped {line}")
    print(f"load average (1/5/15 min) before: {load_before}, after: {load_average()}")
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(),
        "load_average_before_after": [load_before, load_average()],
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
