"""Hostile requests against ``moa serve`` (issue 13): every case of the issue's "Why" with
the status and message it now gets, the tenant race, and database outages."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from langgraph_moa.server.core import ApiError
from langgraph_moa.server.validation import (
    MAX_JSON_DEPTH,
    MAX_METADATA_BYTES,
    check_path_ids,
)
from langgraph_moa.testing import ModelServer
from tests.test_server_support import KEY_A, KEY_B, Served, moa_spec, serve

RUN = {"assistant_id": "moa", "input": {"task": "x"}}


@pytest.fixture(scope="module")
def srv() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, srv: ModelServer) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hostile")
    yield from serve(tmp, [moa_spec(srv)], f"sqlite:///{tmp / 'moa.sqlite'}", keys=[KEY_A, KEY_B])


@pytest.fixture(scope="module")
def thread(served: Served) -> str:
    """A thread of tenant A with one finished run."""
    with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
        tid = http.post("/threads", json={}).json()["thread_id"]
        done = http.post(f"/threads/{tid}/runs/wait", json=RUN)
        assert done.status_code == 200, done.text
    return tid


def _raw(obj: str) -> bytes:
    return obj.encode()


# (name, method, path, body: JSON-able or raw bytes, status, part of the detail)
CASES: list[tuple[str, str, str, Any, int, str]] = [
    (
        "offset >= 2**63",
        "POST",
        "/threads/search",
        {"offset": 2**63},
        422,
        "body.offset: integer outside",
    ),
    (
        "limit >= 2**63",
        "POST",
        "/threads/search",
        {"limit": 2**63},
        422,
        "body.limit: integer outside",
    ),
    (
        "offset 1e23",
        "POST",
        "/threads/search",
        _raw('{"offset": 1e23}'),
        422,
        "exceeded maximum size",
    ),
    (
        "offset >= 2**63 in a query",
        "GET",
        "/threads/{t}/runs?offset=9223372036854775808",
        None,
        422,
        "less than or equal",
    ),
    (
        "JSON nested 300 levels",
        "POST",
        "/threads",
        _raw('{"metadata": {"a": ' + "[" * 300 + "]" * 300 + "}}"),
        422,
        f"JSON nested more than {MAX_JSON_DEPTH} levels",
    ),
    (
        "lone surrogate in metadata",
        "POST",
        "/threads",
        _raw('{"metadata": {"a": "\\ud800"}}'),
        422,
        "body.metadata.a: contains a lone surrogate",
    ),
    (
        "lone surrogate in a metadata key",
        "PATCH",
        "/threads/{t}",
        _raw('{"metadata": {"\\udfff": 1}}'),
        422,
        "contains a lone surrogate",
    ),
    (
        "integer over 64 bits in metadata",
        "POST",
        "/threads",
        {"metadata": {"n": 2**64}},
        422,
        "body.metadata.n: integer outside the 64-bit range",
    ),
    ("NaN in metadata", "POST", "/threads", _raw('{"metadata": {"n": NaN}}'), 422, "NaN"),
    (
        "quote in a metadata key",
        "POST",
        "/threads",
        {"metadata": {'a"b': 1}},
        422,
        "keys are non-empty and without quotes",
    ),
    (
        "quote in a searched metadata key",
        "POST",
        "/threads/search",
        {"metadata": {'a"b': 1}},
        422,
        "keys are non-empty and without quotes",
    ),
    (
        "NUL in metadata",
        "POST",
        "/threads",
        {"metadata": {"a": "x\u0000y"}},
        422,
        "body.metadata.a: contains a NUL character",
    ),
    (
        "NUL in run input",
        "POST",
        "/threads/{t}/runs",
        {**RUN, "input": {"task": "a\u0000"}},
        422,
        "contains a NUL character",
    ),
    (
        "non-Latin-1 thread id in a run URL",
        "POST",
        "/threads/ŧħřęäđ/runs/wait",
        {**RUN, "if_not_exists": "create"},
        422,
        "is not a valid id",
    ),
    ("NUL in a path", "GET", "/threads/a%00b", None, 422, "is not a valid id"),
    (
        "run URL with an id POST /threads refuses",
        "POST",
        "/threads/not-a-uuid/runs",
        {**RUN, "if_not_exists": "create"},
        422,
        "thread_id must be a UUID",
    ),
    ("run id that is not a UUID", "GET", "/threads/{t}/runs/bogus", None, 422, "run_id must be"),
    (
        "bogus checkpoint_id on a run",
        "POST",
        "/threads/{t}/runs",
        {**RUN, "checkpoint_id": "1f0c0000-0000-6000-8000-000000000000"},
        404,
        "Checkpoint '1f0c0000-0000-6000-8000-000000000000' not found in thread",
    ),
    (
        "bogus checkpoint in a run's checkpoint",
        "POST",
        "/threads/{t}/runs/wait",
        {**RUN, "checkpoint": {"checkpoint_id": "bogus"}},
        404,
        "Checkpoint 'bogus' not found",
    ),
    (
        "checkpoint_id on a thread to be created",
        "POST",
        "/threads/9d3c1a52-0000-4000-8000-0000000000aa/runs",
        {**RUN, "if_not_exists": "create", "checkpoint_id": "1f0c0000-0000-6000-8000-00000000"},
        404,
        "not found in thread 9d3c1a52-0000-4000-8000-0000000000aa",
    ),
    ("state at a bogus checkpoint", "GET", "/threads/{t}/state/bogus", None, 404, "not found"),
    (
        "history before a bogus checkpoint",
        "POST",
        "/threads/{t}/history",
        {"before": "bogus"},
        404,
        "not found",
    ),
    (
        "run metadata over the cap",
        "POST",
        "/threads/{t}/runs",
        {**RUN, "metadata": {"big": "x" * 40_000}, "config": {"metadata": {"b": "y" * 40_000}}},
        422,
        "the run's metadata would be",
    ),
    ("docs without a key", "GET", "/docs", None, 401, "missing API key"),
    ("redoc without a key", "GET", "/redoc", None, 401, "missing API key"),
    ("openapi without a key", "GET", "/openapi.json", None, 401, "missing API key"),
    (
        "Last-Event-ID of 40 digits",
        "GET",
        "/threads/{t}/runs/{r}/stream",
        None,
        200,
        "",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_request(
    case: tuple[str, str, str, Any, int, str], served: Served, thread: str, srv: ModelServer
) -> None:
    name, method, path, body, status, detail = case
    headers = {} if "without a key" in name else {"x-api-key": KEY_A}
    with httpx.Client(base_url=served.url, headers=headers, timeout=60) as http:
        run_id = http.get(f"/threads/{thread}/runs").json()[0]["run_id"] if headers else ""
        threads = http.post("/threads/count", json={}).json() if headers else 0
        calls = srv.calls()
        if name.startswith("Last-Event-ID"):
            headers["last-event-id"] = "9" * 40
        kwargs: dict[str, Any] = {"headers": headers}
        if isinstance(body, bytes):
            kwargs["content"] = body
            kwargs["headers"] = {**headers, "content-type": "application/json"}
        elif body is not None:
            kwargs["json"] = body
        r = http.request(method, path.format(t=thread, r=run_id), **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        if detail:
            assert detail in json.dumps(r.json()["detail"], ensure_ascii=False), r.text
        # refused before anything ran: no model call, the thread's runs unchanged
        assert srv.calls() == calls
        if headers:
            assert len(http.get(f"/threads/{thread}/runs").json()) == 1
            assert http.post("/threads/count", json={}).json() == threads  # none created
            assert http.post("/threads/search", json={"metadata": {"a": 1}}).status_code == 200


def test_metadata_cap_is_cumulative(served: Served) -> None:
    chunk = "x" * (MAX_METADATA_BYTES // 8)
    with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
        tid = http.post("/threads", json={}).json()["thread_id"]
        statuses = [
            http.patch(f"/threads/{tid}", json={"metadata": {f"k{i}": chunk}}).status_code
            for i in range(40)
        ]
        assert statuses[:7] == [200] * 7 and set(statuses[8:]) == {422}, statuses
        refused = http.patch(f"/threads/{tid}", json={"metadata": {"more": chunk}})
        assert "the thread's metadata would be" in refused.json()["detail"]
        stored = http.get(f"/threads/{tid}").json()["metadata"]
        assert len(json.dumps(stored)) <= MAX_METADATA_BYTES + 100
        # a run on it cannot add much either
        big = http.post(f"/threads/{tid}/runs", json={**RUN, "metadata": {"m": chunk * 2}})
        assert big.status_code == 422 and "the run's metadata would be" in big.text


def test_docs_need_a_key_unless_public(served: Served, tmp_path: Path, srv: ModelServer) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert http.get(path).status_code == 401
            assert http.get(path, headers={"x-api-key": KEY_B}).status_code == 200
        schema = http.get("/openapi.json", headers={"x-api-key": KEY_B}).json()
        assert "/threads/{thread_id}/runs/stream" in schema["paths"]
    public = Served(
        tmp_path, [moa_spec(srv)], f"sqlite:///{tmp_path}/p.sqlite", keys=[KEY_A],
        extra=["--public-docs"],
    ).start()  # fmt: skip
    try:
        with httpx.Client(base_url=public.url, timeout=30) as http:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert http.get(path).status_code == 200, path
            assert http.post("/threads/search", json={}).status_code == 401
    finally:
        public.stop()


def test_stateless_stream_location_exists(served: Served) -> None:
    with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
        with http.stream("POST", "/runs/stream", json={**RUN, "on_completion": "keep"}) as response:
            assert response.status_code == 200
            location = response.headers["location"]
            content = response.headers["content-location"]
            body = response.read().decode()
        assert "event: metadata" in body
        assert location == f"{content}/stream" and location.startswith("/threads/")
        assert http.get(content).json()["status"] == "success"
        followed = http.get(location)
        assert followed.status_code == 200
        assert followed.headers["content-type"].startswith("text/event-stream")


# ------------------------------------------------------------ tenant race ---


async def _race(url: str, rounds: int) -> list[str]:
    """Tenant A creates thread X while tenant B starts a run on X with
    ``if_not_exists: create``; returns every round where both succeeded or B saw A's data."""
    crossings: list[str] = []
    a = httpx.AsyncClient(base_url=url, headers={"x-api-key": KEY_A}, timeout=60)
    b = httpx.AsyncClient(base_url=url, headers={"x-api-key": KEY_B}, timeout=60)
    async with a, b:
        for i in range(rounds):
            tid = str(uuid.uuid4())
            create, run = await asyncio.gather(
                a.post("/threads", json={"thread_id": tid, "metadata": {"secret": "A"}}),
                b.post(
                    f"/threads/{tid}/runs",
                    json={**RUN, "if_not_exists": "create", "multitask_strategy": "enqueue"},
                ),
            )
            codes = (create.status_code, run.status_code)
            if codes not in ((200, 404), (404, 200)) or "secret" in run.text:
                crossings.append(f"round {i}: {codes} {run.text[:200]}")
            owner_a = (await a.get(f"/threads/{tid}")).status_code == 200
            owner_b = (await b.get(f"/threads/{tid}")).status_code == 200
            if owner_a == owner_b or owner_a != (codes[0] == 200):
                crossings.append(f"round {i}: A sees it {owner_a}, B sees it {owner_b}")
    return crossings


@pytest.mark.slow
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_tenant_race_has_no_crossings(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, srv: ModelServer
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'race.sqlite'}"
        if database == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    for served in serve(tmp_path, [moa_spec(srv)], url, keys=[KEY_A, KEY_B]):
        crossings = asyncio.run(_race(served.url, 200))
        assert crossings == [], crossings[:5]


# -------------------------------------------------------- database outages ---


@pytest.mark.postgres
def test_database_outage_is_503_with_retry_after(
    pg_url: str, tmp_path: Path, srv: ModelServer
) -> None:
    import psycopg

    for served in serve(tmp_path, [moa_spec(srv)], pg_url, keys=[KEY_A]):
        with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
            assert http.post("/threads/search", json={}).status_code == 200
            name = pg_url.rsplit("/", 1)[1]
            admin = pg_url.rsplit("/", 1)[0].replace("postgresql+psycopg", "postgresql")
            with psycopg.connect(f"{admin}/test", autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            try:
                down = http.post("/threads/search", json={})
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == "1"
                assert "retry shortly" in down.json()["detail"]
            finally:
                with psycopg.connect(f"{admin}/test", autocommit=True) as conn:
                    conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert http.post("/threads/search", json={}).status_code == 200


@pytest.mark.slow
@pytest.mark.postgres
async def test_exhausted_pool_is_503_with_retry_after(pg_url: str, srv: ModelServer) -> None:
    """Every connection of the server's pool taken (here by the test itself, on the same
    shared engine): a request waits the pool's timeout, then gets 503, not a 500."""
    from contextlib import AsyncExitStack

    from langgraph_moa.persistence.engines import get_async_engine, release_async_engine
    from langgraph_moa.server import create_app

    app = create_app([moa_spec(srv)], db_url=pg_url, api_keys=[KEY_A], ui=False)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.state.moa,
        httpx.AsyncClient(
            transport=transport, base_url="http://moa", headers={"x-api-key": KEY_A}, timeout=120
        ) as http,
    ):
        assert (await http.post("/threads/search", json={})).status_code == 200
        engine = get_async_engine(pg_url)  # the server's engine: one pool per database
        try:
            pool = engine.sync_engine.pool
            async with AsyncExitStack() as held:
                for _ in range(pool.size() + pool._max_overflow):  # type: ignore[attr-defined]
                    await held.enter_async_context(engine.connect())
                busy = await http.post("/threads/search", json={})
            assert busy.status_code == 503, busy.text
            assert busy.headers["retry-after"] == "1"
            assert (await http.post("/threads/search", json={})).status_code == 200
        finally:
            await release_async_engine(engine)


def test_an_id_with_a_trailing_newline_is_refused() -> None:
    """`$` matches before a final newline: ids are matched whole."""
    check_path_ids({"thread_id": "abc", "checkpoint_id": "1f0-a"})
    for bad in ("abc\n", "abc\r\n", "a\nb"):
        with pytest.raises(ApiError) as info:
            check_path_ids({"thread_id": bad})
        assert info.value.status == 422 and "not a valid id" in str(info.value.detail)
