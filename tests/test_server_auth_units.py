"""API keys, tenants and request validation of the server, in-process: the functions of
server/auth.py and server/validation.py value by value, and the app (``create_app`` over
ASGI, SQLite) with the status and the body of every refusal and tenant A's objects addressed
through tenant B's own ids. Fast; the mutation run of the server's auth
(``bench/mutation.py auth``) uses it: the ``moa serve`` subprocess of
tests/test_server_auth.py and tests/test_server_hostile.py runs the installed code, not the
mutants."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import HTTPException
from langgraph.checkpoint.base import empty_checkpoint
from starlette.requests import Request

from langgraph_moa.persistence import AsyncSQLAlchemySaver
from langgraph_moa.server import create_app
from langgraph_moa.server.auth import (
    MIN_KEY_LENGTH,
    KeyAuth,
    NoAuth,
    load_api_keys,
    tenant_of,
)
from langgraph_moa.server.core import ApiError
from langgraph_moa.server.validation import (
    MAX_INT,
    MAX_JSON_DEPTH,
    MAX_METADATA_BYTES,
    check_body,
    check_metadata,
    check_path_ids,
    check_uuid,
    metadata_problem,
    metadata_size,
    require_checkpoint,
)
from langgraph_moa.testing import ModelServer
from tests.test_server_support import KEY_A, KEY_B, moa_spec, synthesis

MISSING_KEY = "missing API key: send `x-api-key: <key>` or `Authorization: Bearer <key>`"
ID_RULE = "is not a valid id: use a UUID, or 1-255 ASCII letters, digits and . _ : -"
KEY_RULE = "keys are non-empty and without quotes, backslashes or control characters"


def shown(value: Any) -> str:
    """How an error message shows a value: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def refused(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    return info.value


# ------------------------------------------------------------------- keys ---


def test_tenant_of_is_the_digest_prefix() -> None:
    digest = hashlib.sha256(KEY_A.encode()).hexdigest()
    assert tenant_of(KEY_A) == "key-" + digest[:16]
    assert tenant_of(KEY_B) != tenant_of(KEY_A) and len(tenant_of(KEY_B)) == 20


def test_load_api_keys_from_a_string_and_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOA_API_KEYS", raising=False)
    monkeypatch.delenv("MOA_API_KEYS_FILE", raising=False)
    assert load_api_keys() == []
    sixteen = "k" * MIN_KEY_LENGTH
    assert load_api_keys(f" {KEY_A} ,, {sixteen},{KEY_A}, ") == [KEY_A, sixteen]
    file = tmp_path / "keys"
    file.write_text(f"# the team's keys\n\n  {KEY_B}  \n#{KEY_A}\n{sixteen}\n")
    assert load_api_keys("", file) == [KEY_B, sixteen]
    assert load_api_keys(KEY_A, str(file)) == [KEY_A, KEY_B, sixteen]
    # the environment is the default, and only the default
    monkeypatch.setenv("MOA_API_KEYS", KEY_A)
    assert load_api_keys() == [KEY_A]
    monkeypatch.setenv("MOA_API_KEYS_FILE", str(file))
    assert load_api_keys() == [KEY_A, KEY_B, sixteen]
    assert load_api_keys("", "") == []
    assert load_api_keys(KEY_B, "") == [KEY_B]


def test_short_or_unreadable_keys_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        load_api_keys(f"{KEY_A},{'s' * (MIN_KEY_LENGTH - 1)}", "")
    assert str(err.value) == (
        f"an API key in MOA_API_KEYS is shorter than {MIN_KEY_LENGTH} characters; use long "
        "random keys (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
    )
    file = tmp_path / "keys"
    file.write_text(f"{KEY_A}\n# short below\ntiny\n")
    with pytest.raises(ValueError) as err:
        load_api_keys("", file)
    assert str(err.value) == f"{file}:3: API key is shorter than {MIN_KEY_LENGTH} characters"
    missing = tmp_path / "absent"
    with pytest.raises(ValueError) as err:
        load_api_keys("", missing)
    assert str(err.value) == f"cannot read the API keys file {missing}: No such file or directory"
    assert err.value.__cause__ is None and err.value.__suppress_context__


def request(headers: dict[str, str]) -> Request:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


async def test_key_auth_names_the_tenant_of_each_key() -> None:
    auth = KeyAuth([KEY_A, KEY_B])
    assert await auth(request({"x-api-key": KEY_A})) == tenant_of(KEY_A)
    assert await auth(request({"x-api-key": KEY_B})) == tenant_of(KEY_B)
    assert await auth(request({"authorization": f"Bearer {KEY_B}"})) == tenant_of(KEY_B)
    assert await auth(request({"authorization": f"bearer   {KEY_A}  "})) == tenant_of(KEY_A)
    # x-api-key first
    both = {"x-api-key": KEY_A, "authorization": f"Bearer {KEY_B}"}
    assert await auth(request(both)) == tenant_of(KEY_A)
    assert await NoAuth()(request({"x-api-key": KEY_A})) is None


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, MISSING_KEY),
        ({"authorization": f"Basic {KEY_A}"}, MISSING_KEY),
        ({"authorization": f"{KEY_A}"}, MISSING_KEY),
        ({"authorization": "Bearer    "}, MISSING_KEY),
        ({"x-api-key": "", "authorization": f"Bearer {KEY_A}"}, MISSING_KEY),
        ({"x-api-key": KEY_A + "x"}, "invalid API key"),
        ({"x-api-key": KEY_A[:-1]}, "invalid API key"),
        ({"authorization": f"Bearer {KEY_A.upper()}"}, "invalid API key"),
    ],
    ids=[
        "none",
        "basic",
        "no-scheme",
        "empty-bearer",
        "empty-x-api-key",
        "longer",
        "shorter",
        "case",
    ],
)
async def test_key_auth_refuses_with_401(headers: dict[str, str], detail: str) -> None:
    with pytest.raises(HTTPException) as info:
        await KeyAuth([KEY_A, KEY_B])(request(headers))
    assert info.value.status_code == 401 and info.value.detail == detail
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}


def test_key_auth_needs_a_key() -> None:
    with pytest.raises(ValueError) as err:
        KeyAuth([])
    assert str(err.value) == (
        "no API keys configured: set MOA_API_KEYS or --api-keys-file, or run "
        "`moa serve --no-auth` on 127.0.0.1"
    )


# ------------------------------------------------------------- path ids ---


def test_path_ids() -> None:
    run = str(uuid.uuid4())
    check_path_ids({"thread_id": "a" * 255, "checkpoint_id": "1f0-a.b:c_d", "run_id": run})
    check_path_ids({"thread_id": None, "cron_id": run, "other": "??"})
    assert check_uuid(run, "run_id") == run
    for name in ("thread_id", "checkpoint_id"):
        for bad in ("a" * 256, "-a", ".a", "a/b", "a b", "ä", ""):
            err = refused(check_path_ids, {name: bad})
            assert err.status == 422 and err.detail == f"{name} {shown(bad)} {ID_RULE}"
    for name in ("run_id", "cron_id"):
        err = refused(check_path_ids, {"thread_id": "ok", name: "bogus"})
        assert err.status == 422 and err.detail == f"{name} must be a UUID, got 'bogus'"
    assert refused(check_uuid, 7, "x").detail == "x must be a UUID, got 7"
    assert refused(check_uuid, None, "y").detail == "y must be a UUID, got None"
    long = "z" * 100
    assert refused(check_uuid, long, "t").detail == f"t must be a UUID, got {repr(long)[:77]}..."
    whole = "q" * 78  # its repr is 80 characters: shown whole
    assert refused(check_uuid, whole, "t").detail == f"t must be a UUID, got {whole!r}"


# ------------------------------------------------------------------ bodies ---


def nested(levels: int) -> bytes:
    return ("[" * levels + "]" * levels).encode()


def test_bodies_within_the_limits_are_parsed() -> None:
    for empty in (b"", b"  \n"):
        assert check_body(empty) is None
    assert check_body(b"{not json") is None  # FastAPI answers that itself
    assert check_body(b'{"a": [1, "x", null, true, 1.5]}') == {"a": [1, "x", None, True, 1.5]}
    deepest = json.loads(nested(MAX_JSON_DEPTH))
    assert check_body(nested(MAX_JSON_DEPTH)) == deepest
    extremes = {"max": MAX_INT, "min": -MAX_INT - 1}
    assert check_body(json.dumps(extremes).encode()) == extremes


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            nested(MAX_JSON_DEPTH + 1),
            f"body{'.0' * MAX_JSON_DEPTH}: JSON nested more than 32 levels",
        ),
        (
            b'{"a": {"b": ' + nested(31) + b"}}",
            "body.a.b" + ".0" * 30 + ": JSON nested more than 32 levels",
        ),
        (nested(100_000), "body: JSON nested more than 32 levels"),
        (b'"\xff"', "body: not UTF-8 text; send JSON encoded as UTF-8"),
        (b'{"n": NaN}', "body: NaN is not a JSON number; send a finite number or null"),
        (b"[-Infinity]", "body: -Infinity is not a JSON number; send a finite number or null"),
        (
            json.dumps({"a": [0, MAX_INT + 1]}).encode(),
            "body.a.1: integer outside the 64-bit range",
        ),
        (json.dumps({"a": -MAX_INT - 2}).encode(), "body.a: integer outside the 64-bit range"),
        (
            json.dumps({"k" * 50: {"x": "a\u0000"}}).encode(),
            f"body.{'k' * 40}.x: contains a NUL character; send valid UTF-8 text",
        ),
        (b'{"a": ["ok", "\\udc00"]}', "body.a.1: contains a lone surrogate; send valid UTF-8 text"),
        (
            b'{"a\\u0000b": 1}',
            "body: key 'a\\x00b': contains a NUL character; send valid UTF-8 text",
        ),
        (b'["\\ud800x"]', "body.0: contains a lone surrogate; send valid UTF-8 text"),
    ],
    ids=[
        "too-deep",
        "too-deep-path",
        "recursion",
        "not-utf8",
        "nan",
        "infinity",
        "int-over",
        "int-under",
        "nul",
        "surrogate",
        "nul-key",
        "high-surrogate",
    ],
)
def test_bodies_over_the_limits_are_refused_by_place(body: bytes, detail: str) -> None:
    err = refused(check_body, body)
    assert err.status == 422 and err.detail == detail


# --------------------------------------------------------------- metadata ---


def test_metadata_keys_and_size() -> None:
    assert metadata_size(None) == 0 and metadata_size({}) == 0
    assert metadata_size({"a": "é", "b": [1, 2]}) == len('{"a":"é","b":[1,2]}'.encode())
    assert metadata_problem(None, "m") is None and metadata_problem({"ok": {'"': 1}}, "m") is None
    for key in ("", 'a"b', "a\\b", "a\x00", "\x1f", "\ud800", 5):
        problem = metadata_problem({"fine": 1, key: 1}, "the run's metadata")  # type: ignore[dict-item]
        assert problem == f"the run's metadata key {key!r}: {KEY_RULE}", problem
    # the cap counts bytes of compact JSON: exactly the cap fits, one byte more does not
    fits = {"k": "x" * (MAX_METADATA_BYTES - len('{"k":""}'))}
    assert metadata_size(fits) == MAX_METADATA_BYTES and metadata_problem(fits, "m") is None
    check_metadata(fits, "m")
    over = {"k": fits["k"] + "é"}
    size = MAX_METADATA_BYTES + 2
    expected = (
        f"the thread's metadata would be {size} bytes of JSON; at most {MAX_METADATA_BYTES} "
        "(what is stored and what is added count together)"
    )
    assert metadata_problem(over, "the thread's metadata") == expected
    err = refused(check_metadata, over, "the thread's metadata")
    assert err.status == 422 and err.detail == expected
    err = refused(check_metadata, {"": 1}, "metadata")
    assert err.status == 422 and err.detail == f"metadata key '': {KEY_RULE}"


async def test_require_checkpoint_looks_in_the_named_thread(tmp_path: Path) -> None:
    async with AsyncSQLAlchemySaver.from_url(f"sqlite:///{tmp_path / 'c.sqlite'}") as saver:
        await saver.setup()
        ckpt = empty_checkpoint()
        conf = {"configurable": {"thread_id": "mine", "checkpoint_ns": ""}}
        await saver.aput(conf, ckpt, {}, {})  # type: ignore[arg-type]
        cid = ckpt["id"]
        await require_checkpoint(saver, "mine", cid)
        await require_checkpoint(saver, "mine", None)
        await require_checkpoint(saver, "mine", "")
        await require_checkpoint(None, "mine", "anything")  # no checkpointer: nothing to check
        for thread, bad in (("theirs", cid), ("mine", "0" * 32), ("mine", "bad id!")):
            with pytest.raises(ApiError) as info:
                await require_checkpoint(saver, thread, bad)
            assert info.value.status == 404
            assert info.value.detail == f"Checkpoint {bad!r} not found in thread {thread}"


# ------------------------------------------------------ the app, in-process ---


@pytest.fixture(scope="module")
def srv() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@asynccontextmanager
async def app_clients(
    tmp_path: Path, srv: ModelServer
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient]]:
    """Clients of tenant A, tenant B and of no one, on one app with keys A and B."""
    app = create_app(
        [moa_spec(srv)],
        db_url=f"sqlite:///{tmp_path / 'moa.sqlite'}",
        api_keys=[KEY_A, KEY_B],
        ui=False,
    )
    transport = httpx.ASGITransport(app=app)

    def client(headers: dict[str, str]) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=transport, base_url="http://moa", headers=headers, timeout=120
        )

    async with (
        app.state.moa,
        client({"x-api-key": KEY_A}) as a,
        client({"authorization": f"Bearer {KEY_B}"}) as b,
        client({}) as anyone,
    ):
        yield a, b, anyone


async def test_app_keys_and_tenants(tmp_path: Path, srv: ModelServer) -> None:
    async with app_clients(tmp_path, srv) as (a, b, anyone):
        for headers, detail in (
            ({}, MISSING_KEY),
            ({"x-api-key": "wrong-key-0123456789abcdef"}, "invalid API key"),
            ({"authorization": "Bearer nope"}, "invalid API key"),
        ):
            r = await anyone.post("/threads", json={}, headers=headers)
            assert r.status_code == 401 and r.json() == {"detail": detail}
            assert r.headers["www-authenticate"] == "Bearer"
        mine = (await a.post("/threads", json={"metadata": {"owner": "a"}})).json()
        theirs = (await b.post("/threads", json={"metadata": {"owner": "b"}})).json()
        assert (await a.post("/threads/count", json={})).json() == 1
        assert (await b.post("/threads/count", json={})).json() == 1
        found = (await a.post("/threads/search", json={})).json()
        assert [t["thread_id"] for t in found] == [mine["thread_id"]]
        same_b = {"x-api-key": KEY_B}  # B's key in the other header: the same tenant
        got = await anyone.get(f"/threads/{theirs['thread_id']}", headers=same_b)
        assert got.status_code == 200 and got.json()["metadata"] == {"owner": "b"}
        hidden = await a.get(f"/threads/{theirs['thread_id']}")
        assert hidden.status_code == 404
        assert hidden.json() == {"detail": f"Thread with ID {theirs['thread_id']} not found"}


async def test_app_a_objects_unreachable_through_b_own_ids(
    tmp_path: Path, srv: ModelServer
) -> None:
    """B names its own thread and A's run or checkpoint: 404 naming what B asked for, no
    trace of A's input, and nothing of A's changed."""
    async with app_clients(tmp_path, srv) as (a, b, _):
        ta = (await a.post("/threads", json={})).json()["thread_id"]
        done = await a.post(
            f"/threads/{ta}/runs/wait", json={"assistant_id": "moa", "input": {"task": "mine"}}
        )
        assert done.status_code == 200 and done.json()["answer"] == synthesis(srv, "mine")
        a_run = (await a.get(f"/threads/{ta}/runs")).json()[0]["run_id"]
        a_ckpt = (await a.get(f"/threads/{ta}/state")).json()["checkpoint"]["checkpoint_id"]
        tb = (await b.post("/threads", json={})).json()["thread_id"]
        ran = await b.post(
            f"/threads/{tb}/runs/wait", json={"assistant_id": "moa", "input": {"task": "theirs"}}
        )
        assert ran.status_code == 200 and ran.json()["answer"] == synthesis(srv, "theirs")
        calls = srv.calls()
        run_gone = {"detail": f"Run with ID {a_run} not found"}
        ckpt_gone = {"detail": f"Checkpoint {a_ckpt!r} not found in thread {tb}"}
        for method, path, body, expected in [
            ("GET", f"/threads/{tb}/runs/{a_run}", None, run_gone),
            ("GET", f"/threads/{tb}/runs/{a_run}/join", None, run_gone),
            ("POST", f"/threads/{tb}/runs/{a_run}/cancel", None, run_gone),
            ("DELETE", f"/threads/{tb}/runs/{a_run}", None, run_gone),
            ("GET", f"/threads/{tb}/state/{a_ckpt}", None, ckpt_gone),
            (
                "POST",
                f"/threads/{tb}/state/checkpoint",
                {"checkpoint": {"checkpoint_id": a_ckpt}},
                ckpt_gone,
            ),
            (
                "POST",
                f"/threads/{tb}/runs/wait",
                {"assistant_id": "moa", "input": {"task": "x"}, "checkpoint_id": a_ckpt},
                ckpt_gone,
            ),
            (
                "POST",
                f"/threads/{tb}/history",
                {"before": {"configurable": {"checkpoint_id": a_ckpt}}},
                ckpt_gone,
            ),
            (
                "GET",
                f"/threads/{ta}/runs/{a_run}",
                None,
                {"detail": f"Thread with ID {ta} not found"},
            ),
        ]:
            r = await b.request(method, path, json=body)
            assert (r.status_code, r.json()) == (404, expected), (method, path, r.text)
        assert srv.calls() == calls  # nothing ran
        # B's thread still has its one run and checkpoints of its own only
        runs_b = (await b.get(f"/threads/{tb}/runs")).json()
        assert [r["run_id"] for r in runs_b] != [a_run] and len(runs_b) == 1
        history_b = (await b.post(f"/threads/{tb}/history", json={"limit": 100})).json()
        assert a_ckpt not in {h["checkpoint"]["checkpoint_id"] for h in history_b}
        assert "mine" not in json.dumps(history_b)
        # A's run and checkpoint are whole, and A reads them through its own thread
        run = await a.get(f"/threads/{ta}/runs/{a_run}")
        assert run.status_code == 200 and run.json()["status"] == "success"
        state = (await a.get(f"/threads/{ta}/state/{a_ckpt}")).json()
        assert state["values"]["task"] == "mine"
        assert state["values"]["answer"] == synthesis(srv, "mine")


async def test_app_refuses_hostile_requests_before_anything_runs(
    tmp_path: Path, srv: ModelServer
) -> None:
    async with app_clients(tmp_path, srv) as (a, _, _):
        tid = (await a.post("/threads", json={"metadata": {"n": 1}})).json()["thread_id"]
        calls = srv.calls()
        run = {"assistant_id": "moa", "input": {"task": "x"}}
        for method, path, body, status, detail in [
            ("GET", "/threads/a b", None, 422, f"thread_id 'a b' {ID_RULE}"),
            ("GET", f"/threads/{tid}/runs/bogus", None, 422, "run_id must be a UUID, got 'bogus'"),
            (
                "POST",
                "/threads",
                b'{"metadata": {"n": NaN}}',
                422,
                "body: NaN is not a JSON number; send a finite number or null",
            ),
            (
                "POST",
                "/threads",
                json.dumps({"metadata": {"a": "x\u0000"}}).encode(),
                422,
                "body.metadata.a: contains a NUL character; send valid UTF-8 text",
            ),
            (
                "POST",
                f"/threads/{tid}/runs",
                json.dumps({**run, "input": {"task": 2**64}}).encode(),
                422,
                "body.input.task: integer outside the 64-bit range",
            ),
            (
                "POST",
                "/threads",
                b'{"metadata": ' + nested(40) + b"}",
                422,
                "body.metadata" + ".0" * 31 + ": JSON nested more than 32 levels",
            ),
            (
                "PATCH",
                f"/threads/{tid}",
                json.dumps({"metadata": {"big": "x" * (MAX_METADATA_BYTES - 10)}}).encode(),
                422,
                f"the thread's metadata would be {MAX_METADATA_BYTES + 6} bytes of JSON; at most "
                f"{MAX_METADATA_BYTES} (what is stored and what is added count together)",
            ),
            (
                "POST",
                f"/threads/{tid}/runs",
                json.dumps({**run, "checkpoint_id": "0" * 32}).encode(),
                404,
                f"Checkpoint {'0' * 32!r} not found in thread {tid}",
            ),
        ]:
            r = await a.request(
                method, path, content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == status, (path, r.text)
            assert r.json()["detail"].startswith(detail), (path, r.text)
        assert srv.calls() == calls  # refused before anything ran
        assert (await a.get(f"/threads/{tid}/runs")).json() == []
        assert (await a.post("/threads/count", json={})).json() == 1
        assert (await a.get(f"/threads/{tid}")).json()["metadata"] == {"n": 1}
