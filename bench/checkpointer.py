"""Our SQLAlchemy checkpointer against LangGraph's official savers, on the same work.

SQLite: ``SQLAlchemySaver`` vs ``SqliteSaver`` and ``AsyncSQLAlchemySaver`` vs
``AsyncSqliteSaver``. PostgreSQL: vs ``PostgresSaver`` / ``AsyncPostgresSaver``.
MySQL/MariaDB: vs the third-party ``langgraph-checkpoint-mysql`` (``PyMySQLSaver`` /
``AIOMySQLSaver``; ``pip install langgraph-checkpoint-mysql``, the ``bench`` extra). A server
that is unreachable (or a saver that is not installed) is skipped, saying why. Each saver gets
a fresh database per scenario.

Measured, in one process: ``put`` (a chain of checkpoints on one thread, three channels of
which one changes every tenth step), ``put_writes``, ``get_tuple`` of the latest checkpoint
on a thread of 10, 1,000 and 10,000 checkpoints, ``get_tuple`` by id, ``list(limit=10)``,
and whole runs of a 10-node graph (sync ``invoke`` / async ``ainvoke``), plus the bytes the
database grows by per checkpoint of those runs (MySQL: InnoDB's data + index length after
``ANALYZE TABLE``, counted in 16 KiB pages, so coarse). ``put``, ``put_writes`` and the graph runs
are measured for ours twice: plain, and fenced (each write carries a lease token that the
saver checks against the run registry's ``moa_threads`` in the same transaction). Ratios
are ours/official for speeds (> 1 is faster) and theirs/ours for bytes (> 1 is smaller).
Each measurement alternates between the savers over five rounds and keeps the median, so
all see the same background load. Prints a table; writes bench/results/checkpointer.json.

    python bench/checkpointer.py [--big 10000] [--runs 100] [--budget 0.5]
                                 [--pg postgresql://postgres@127.0.0.1:5432/test]
                                 [--mysql mysql://root@127.0.0.1:3306/test]
                                 [--backends sqlite,postgresql,mysql] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import platform
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint
from langgraph.graph import END, START, StateGraph

from langgraph_moa.persistence import LEASE_CONFIG_KEY, AsyncSQLAlchemySaver, SQLAlchemySaver
from langgraph_moa.persistence.registry import RunRegistry

RESULTS = Path(__file__).parent / "results" / "checkpointer.json"
PG_ADMIN = os.environ.get("MOA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN = os.environ.get("MOA_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


class State(TypedDict):
    value: int
    trace: Annotated[list[str], operator.add]


def build_graph(n_nodes: int) -> Any:
    g = StateGraph(State)
    prev = START
    for i in range(n_nodes):
        name = f"n{i}"
        g.add_node(name, lambda s, _n=name: {"value": s["value"] + 1, "trace": [_n]})
        g.add_edge(prev, name)
        prev = name
    g.add_edge(prev, END)
    return g


# -- databases and savers -------------------------------------------------------------


class Db:
    """A throw-away database: its SQLAlchemy URL, psycopg DSN or file, and its size."""

    def __init__(self, backend: str, tmpdir: str, pg_admin: str | None) -> None:
        self.backend = backend
        self.pg_admin = pg_admin  # the admin URL of the server (PostgreSQL or MySQL)
        if backend == "sqlite":
            self.path = os.path.join(tmpdir, f"{uuid.uuid4().hex}.sqlite")
            self.url = f"sqlite:///{self.path}"
        elif backend == "mysql":
            assert pg_admin
            self.name = f"bench_{uuid.uuid4().hex[:10]}"
            with mysql_admin(pg_admin) as c:
                c.cursor().execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
            self.dsn = pg_admin.rsplit("/", 1)[0] + "/" + self.name  # the official savers'
            self.url = self.dsn.replace("mysql://", "mysql+pymysql://", 1) + "?charset=utf8mb4"
        else:
            import psycopg

            assert pg_admin
            self.name = f"bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(pg_admin, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{self.name}"')
            self.dsn = pg_admin.rsplit("/", 1)[0] + "/" + self.name
            self.url = self.dsn

    def size(self, tables: list[str]) -> int:
        """Bytes used by the saver's tables (SQLite: used pages of the whole file)."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as c:
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                pages = c.execute("PRAGMA page_count").fetchone()[0]
                free = c.execute("PRAGMA freelist_count").fetchone()[0]
                page = c.execute("PRAGMA page_size").fetchone()[0]
                return int((pages - free) * page)
        if self.backend == "mysql":
            assert self.pg_admin
            with mysql_admin(self.pg_admin) as c:
                cur = c.cursor()
                total = 0
                for t in tables:
                    cur.execute(
                        "SELECT COUNT(*) FROM information_schema.TABLES "
                        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                        (self.name, t),
                    )
                    if not cur.fetchone()[0]:
                        continue
                    cur.execute(f"ANALYZE TABLE `{self.name}`.`{t}`")
                    cur.fetchall()
                    cur.execute(
                        "SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
                        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                        (self.name, t),
                    )
                    total += int(cur.fetchone()[0] or 0)
                return total
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("VACUUM")
            total = 0
            for t in tables:
                row = c.execute("SELECT pg_total_relation_size(to_regclass(%s))", (t,)).fetchone()
                total += int(row[0] or 0) if row else 0
            return total

    def drop(self) -> None:
        if self.backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            return
        assert self.pg_admin
        if self.backend == "mysql":
            with mysql_admin(self.pg_admin) as c:
                c.cursor().execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            return
        import psycopg

        assert self.pg_admin
        with psycopg.connect(self.pg_admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def mysql_admin(url: str) -> Any:
    """A PyMySQL connection (autocommit) to the server of ``url``."""
    from urllib.parse import urlsplit

    import pymysql

    u = urlsplit(url)
    return pymysql.connect(
        host=u.hostname or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        autocommit=True,
        connect_timeout=5,
    )


OURS_TABLES = ["moa_checkpoints", "moa_checkpoint_blobs", "moa_checkpoint_writes"]
OURS_TABLES += ["moa_checkpoint_heads", "moa_schema_migrations"]
PG_TABLES = ["checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"]


Opened = tuple[BaseCheckpointSaver[Any], bool, RunRegistry | None]
LEASED = "+lease"  # suffix of a kind: ours, with a lease token on every write


@asynccontextmanager
async def open_saver(kind: str, db: Db) -> AsyncIterator[Opened]:
    """(saver, is_async, registry) for ``kind`` on ``db``; the registry (set up on the
    same database) for a ``+lease`` kind only."""
    if kind.endswith(LEASED):
        async with RunRegistry.from_url(db.url) as reg:
            await reg.setup()
            async with open_saver(kind.removesuffix(LEASED), db) as (saver, is_async, _):
                yield saver, is_async, reg
        return
    if kind == "ours":
        with SQLAlchemySaver.from_url(db.url) as s:
            s.setup()
            yield s, False, None
    elif kind == "ours-async":
        async with AsyncSQLAlchemySaver.from_url(db.url) as a:
            await a.setup()
            yield a, True, None
    elif kind == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(db.path, check_same_thread=False)
        try:
            yield SqliteSaver(conn), False, None
        finally:
            conn.close()
    elif kind == "sqlite-async":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(db.path) as s2:
            yield s2, True, None
    elif kind == "postgres":
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(db.dsn) as p:
            p.setup()
            yield p, False, None
    elif kind == "mysql":
        from langgraph.checkpoint.mysql.pymysql import PyMySQLSaver

        with PyMySQLSaver.from_conn_string(db.dsn) as m:
            m.setup()
            yield m, False, None
    elif kind == "mysql-async":
        from langgraph.checkpoint.mysql.aio import AIOMySQLSaver

        async with AIOMySQLSaver.from_conn_string(db.dsn) as am:
            await am.setup()
            yield am, True, None
    elif kind == "postgres-async":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(db.dsn) as ap:
            await ap.setup()
            yield ap, True, None
    else:
        raise ValueError(kind)


def tables_of(kind: str) -> list[str]:
    return OURS_TABLES if kind.startswith("ours") else PG_TABLES


# -- scenarios ------------------------------------------------------------------------


def make_checkpoint(
    saver: BaseCheckpointSaver[Any], i: int, prev: Checkpoint | None
) -> tuple[Checkpoint, dict[str, Any]]:
    """Checkpoint ``i`` of a thread: ``value`` and ``trace`` change every step, the
    200-character ``messages`` every tenth; returns it with its new versions."""
    from langgraph.checkpoint.base import empty_checkpoint

    c = empty_checkpoint()
    old = prev["channel_versions"] if prev else {}
    versions = dict(old)
    new: dict[str, Any] = {}
    for ch in ("value", "trace") + (("messages",) if i % 10 == 0 else ()):
        versions[ch] = new[ch] = saver.get_next_version(old.get(ch), None)
    c["channel_versions"] = versions
    c["channel_values"] = {
        "value": i,
        "trace": [f"node-{j}" for j in range(10)],
        "messages": [{"role": "user", "content": f"{i // 10:04d}" + "x" * 196}],
    }
    c["versions_seen"] = {"agent": {"value": versions["value"]}}
    return c, new


async def call(saver: Any, is_async: bool, name: str, *args: Any, **kw: Any) -> Any:
    if is_async:
        return await getattr(saver, "a" + name)(*args, **kw)
    return getattr(saver, name)(*args, **kw)


class Side:
    """One saver under test, with the thread it grows."""

    def __init__(
        self, saver: BaseCheckpointSaver[Any], is_async: bool, registry: RunRegistry | None
    ) -> None:
        self.saver, self.is_async, self.registry = saver, is_async, registry
        self.lease = {LEASE_CONFIG_KEY: "bench-lease"} if registry else {}
        self.tid = "ops-" + uuid.uuid4().hex
        self.parent: str | None = None
        self.prev: Checkpoint | None = None
        self.configs: list[Any] = []
        self.latest = {"configurable": {"thread_id": self.tid, "checkpoint_ns": ""}}

    async def prepare(self) -> None:
        """Take the thread's lease for the token the writes carry (fenced side only)."""
        if self.registry is not None:
            await self.registry.acquire_lease(self.tid, self.lease[LEASE_CONFIG_KEY])

    async def put(self, i: int) -> None:
        cfg: dict[str, Any] = {
            "configurable": {"thread_id": self.tid, "checkpoint_ns": "", **self.lease}
        }
        if self.parent:
            cfg["configurable"]["checkpoint_id"] = self.parent
        c, new = make_checkpoint(self.saver, len(self.configs), self.prev)
        md = {"source": "loop", "step": len(self.configs), "parents": {}}
        stored = await call(self.saver, self.is_async, "put", cfg, c, md, new)
        self.parent, self.prev = stored["configurable"]["checkpoint_id"], c
        self.configs.append(stored)

    async def get_latest(self, _: int) -> None:
        assert await call(self.saver, self.is_async, "get_tuple", self.latest) is not None

    async def get_by_id(self, i: int) -> None:
        cfg = self.configs[(i * 7919) % len(self.configs)]
        assert await call(self.saver, self.is_async, "get_tuple", cfg) is not None

    async def list10(self, _: int) -> None:
        if self.is_async:
            got = [x async for x in self.saver.alist(self.latest, limit=10)]
        else:
            got = list(self.saver.list(self.latest, limit=10))
        assert len(got) == 10

    async def put_writes(self, i: int) -> None:
        stored = self.configs[i % len(self.configs)]
        cfg = {"configurable": {**stored["configurable"], **self.lease}}
        writes = [("value", i), ("trace", ["w"])]
        await call(self.saver, self.is_async, "put_writes", cfg, writes, str(uuid.uuid4()))


async def rounds(
    sides: dict[str, Any], op: str, total: int | None = None, budget: float = 0.0
) -> dict[str, float]:
    """Median ops/s of ``op`` per side over five rounds, alternating the sides so both see
    the same background load. Each round runs ``total / 5`` operations, or if ``total`` is
    None as many as fit in ``budget`` seconds (at least three)."""
    n_rounds = 5
    rates: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    counter = dict.fromkeys(sides, 0)
    for r in range(n_rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            fn = getattr(sides[k], op)
            t0 = time.perf_counter()
            done = 0
            while True:
                await fn(counter[k])
                counter[k] += 1
                done += 1
                elapsed = time.perf_counter() - t0
                if total is not None:
                    if done >= max(total // n_rounds, 1):
                        break
                elif done >= 3 and elapsed >= budget:
                    break
            rates[k].append(done / elapsed)
    return {k: statistics.median(v) for k, v in rates.items()}


async def bench_ops(
    kinds: tuple[str, ...], dbs: tuple[Db, ...], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """``kinds``: ours, official, ours fenced (writes only)."""
    out: dict[str, dict[str, float]] = {k: {} for k in kinds}

    def record(metric: str, rates: dict[str, float]) -> None:
        for k, v in rates.items():
            out[k][metric] = v

    async with (
        open_saver(kinds[0], dbs[0]) as a,
        open_saver(kinds[1], dbs[1]) as b,
        open_saver(kinds[2], dbs[2]) as c,
    ):
        writers = {kinds[0]: Side(*a), kinds[1]: Side(*b), kinds[2]: Side(*c)}
        for side in writers.values():
            await side.prepare()
        sides = {k: writers[k] for k in kinds[:2]}
        grown = 0
        sizes = sorted({10, min(1000, args.big), args.big})
        for size in sizes:
            if size == sizes[1]:
                record("put", await rounds(writers, "put", total=size - grown))
            else:
                for side in writers.values():
                    for i in range(size - grown):
                        await side.put(i)
            grown = size
            record(
                f"get_tuple_latest@{size}", await rounds(sides, "get_latest", budget=args.budget)
            )
        record("get_tuple_by_id", await rounds(sides, "get_by_id", budget=args.budget))
        record(f"list_limit10@{args.big}", await rounds(sides, "list10", budget=args.budget))
        record("put_writes", await rounds(writers, "put_writes", budget=args.budget))
    return out


async def bench_graph(
    kinds: tuple[str, ...], dbs: tuple[Db, ...], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with (
        open_saver(kinds[0], dbs[0]) as a,
        open_saver(kinds[1], dbs[1]) as b,
        open_saver(kinds[2], dbs[2]) as c,
    ):
        opened = {kinds[0]: a, kinds[1]: b, kinds[2]: c}
        graphs = {k: build_graph(10).compile(checkpointer=o[0]) for k, o in opened.items()}
        for reg in (o[2] for o in opened.values()):
            for i in range(-1, args.runs):  # the fenced side's runs hold their threads
                if reg is not None:
                    await reg.acquire_lease(f"run-{i}", "bench-lease")
        start = {k: db.size(tables_of(k)) for k, db in zip(kinds, dbs, strict=True)}

        class Runner:
            def __init__(self, kind: str) -> None:
                self.kind = kind

            async def run(self, i: int) -> None:
                g, is_async, reg = graphs[self.kind], opened[self.kind][1], opened[self.kind][2]
                lease = {LEASE_CONFIG_KEY: "bench-lease"} if reg else {}
                cfg = {"configurable": {"thread_id": f"run-{i}", **lease}}
                inp = {"value": 0, "trace": []}
                res = await g.ainvoke(inp, cfg) if is_async else g.invoke(inp, cfg)
                assert res["value"] == 10

        runners = {k: Runner(k) for k in kinds}
        for r in runners.values():
            await r.run(-1)  # warm up
        rates = await rounds(runners, "run", total=args.runs)
        for k, db in zip(kinds, dbs, strict=True):
            saver, is_async, reg = opened[k]
            if reg is not None:
                out[k] = {"graph_runs": rates[k]}
                continue
            cfg = {"configurable": {"thread_id": "run-0"}}
            if is_async:
                steps = len([c async for c in saver.alist(cfg)])
            else:
                steps = len(list(saver.list(cfg)))
            grown = db.size(tables_of(k)) - start[k]
            out[k] = {
                "graph_runs": rates[k],
                "bytes_per_step": grown / ((args.runs + 1) * steps),
                "checkpoints_per_run": steps,
            }
    return out


PAIRS = [
    ("sqlite", "ours", "sqlite"),
    ("sqlite", "ours-async", "sqlite-async"),
    ("postgresql", "ours", "postgres"),
    ("postgresql", "ours-async", "postgres-async"),
    ("mysql", "ours", "mysql"),
    ("mysql", "ours-async", "mysql-async"),
]


def pg_available(dsn: str | None) -> bool:
    if not dsn:
        return False
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except Exception:
        return False


def mysql_unavailable(url: str | None) -> str | None:
    """Why MySQL cannot be measured (None: it can)."""
    if not url:
        return "no --mysql URL"
    try:
        import langgraph.checkpoint.mysql  # noqa: F401
    except ImportError:
        return "langgraph-checkpoint-mysql is not installed (pip install 'langgraph-moa[bench]')"
    try:
        mysql_admin(url).close()
    except Exception as exc:
        return f"{url} unreachable ({exc})"
    return None


def installed(package: str) -> str:
    try:
        return version(package)
    except Exception:
        return "not installed"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per round of an op")
    ap.add_argument("--big", type=int, default=10_000, help="largest thread, checkpoints")
    ap.add_argument("--runs", type=int, default=100, help="10-node graph runs")
    ap.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL admin DSN ('' to skip)")
    ap.add_argument("--mysql", default=MYSQL_ADMIN, help="MySQL/MariaDB admin URL ('' to skip)")
    ap.add_argument("--backends", default="sqlite,postgresql,mysql", help="sqlite,postgresql,mysql")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = ap.parse_args()
    backends = args.backends.split(",")
    pg = args.pg if "postgresql" in backends and pg_available(args.pg) else None
    no_mysql = mysql_unavailable(args.mysql) if "mysql" in backends else "not asked for"
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "env": {
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            **{
                p: installed(p)
                for p in (
                    "langgraph",
                    "langgraph-checkpoint",
                    "langgraph-checkpoint-sqlite",
                    "langgraph-checkpoint-postgres",
                    "langgraph-checkpoint-mysql",
                    "sqlalchemy",
                    "aiosqlite",
                    "psycopg",
                    "pymysql",
                    "aiomysql",
                )
            },
        },
        "load_average": os.getloadavg(),
        "args": {k: v for k, v in vars(args).items() if k not in ("pg", "mysql", "out")},
        "pairs": [],
    }
    rows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for backend, ours, official in PAIRS:
            if backend not in backends:
                continue
            if backend == "postgresql" and pg is None:
                print(f"skipping PostgreSQL: {args.pg} unreachable", flush=True)
                continue
            if backend == "mysql" and no_mysql is not None:
                print(f"skipping MySQL: {no_mysql}", flush=True)
                continue
            admin = args.mysql if backend == "mysql" else pg
            fenced = ours + LEASED
            measured: dict[str, dict[str, float]] = {ours: {}, official: {}, fenced: {}}
            t0 = time.perf_counter()
            for scenario in (bench_ops, bench_graph):
                dbs = tuple(Db(backend, tmpdir, admin) for _ in range(3))
                try:
                    for k, r in (await scenario((ours, official, fenced), dbs, args)).items():
                        measured[k].update(r)
                finally:
                    for db in dbs:
                        db.drop()
            print(f"  {backend:10} {ours} vs {official}: {time.perf_counter() - t0:6.1f} s")
            label = f"{backend} {'async' if 'async' in ours else 'sync'}"
            pair = {"label": label, "ours": ours, "official": official, "metrics": {}}
            for metric, theirs in measured[official].items():
                if metric == "checkpoints_per_run":
                    continue
                mine = measured[ours][metric]
                ratio = theirs / mine if metric == "bytes_per_step" else mine / theirs
                pair["metrics"][metric] = {"ours": mine, "official": theirs, "ratio": ratio}
                rows.append((label, metric, mine, theirs))
                if metric in measured[fenced]:
                    leased = measured[fenced][metric]
                    pair["metrics"][metric + LEASED] = {
                        "ours": leased,
                        "official": theirs,
                        "ratio": leased / theirs,
                    }
                    rows.append((label, metric + LEASED, leased, theirs))
            results["pairs"].append(pair)
    print()
    print(f"{'saver pair':18} {'metric':24} {'ours':>12} {'official':>12} {'ratio':>7}")
    print(f"({LEASED}: ours with a lease token on every write, checked in the database)")
    for label, metric, mine, theirs in rows:
        unit_ratio = theirs / mine if metric == "bytes_per_step" else mine / theirs
        print(f"{label:18} {metric:24} {mine:12.1f} {theirs:12.1f} {unit_ratio:7.2f}")
    print("\nspeeds in operations (or runs) per second; ratio = ours/official speed, and")
    print("official/ours bytes for bytes_per_step: >= 1.00 means ours is as fast / as small")
    print(f"load average before: {results['load_average']}, after: {os.getloadavg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
