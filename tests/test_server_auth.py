"""API keys and tenant isolation of ``moa serve``, over real HTTP, for every endpoint family."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

from langgraph_moa.testing import ModelServer
from tests.test_server_support import KEY_A, KEY_B, MOA, Served, moa_spec, serve, synthesis

MISSING = "9d3c1a52-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def srv() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, srv: ModelServer) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("auth")
    yield from serve(tmp, [moa_spec(srv)], f"sqlite:///{tmp / 'moa.sqlite'}", keys=[KEY_A, KEY_B])


@pytest.fixture(scope="module")
def owned(served: Served) -> dict[str, str]:
    """A thread of tenant A with one finished run."""
    with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
        thread = http.post("/threads", json={"metadata": {"owner": "a"}}).json()
        run = http.post(
            f"/threads/{thread['thread_id']}/runs/wait",
            json={"assistant_id": "moa", "input": {"task": "mine"}},
        )
        assert run.status_code == 200, run.text
        runs = http.get(f"/threads/{thread['thread_id']}/runs").json()
        state = http.get(f"/threads/{thread['thread_id']}/state").json()
    return {
        "thread_id": thread["thread_id"],
        "run_id": runs[0]["run_id"],
        "checkpoint_id": state["checkpoint"]["checkpoint_id"],
    }


def thread_endpoints(t: str, r: str, c: str) -> list[tuple[str, str, Any]]:
    """Every endpoint that names a thread: (method, path, JSON body)."""
    run = {"assistant_id": "moa", "input": {"task": "x"}}
    return [
        ("GET", f"/threads/{t}", None),
        ("PATCH", f"/threads/{t}", {"metadata": {"x": 1}}),
        ("GET", f"/threads/{t}/state", None),
        ("GET", f"/threads/{t}/state/{c}", None),
        ("POST", f"/threads/{t}/state/checkpoint", {"checkpoint": {"checkpoint_id": c}}),
        ("POST", f"/threads/{t}/state", {"values": {"task": "y"}, "as_node": "prepare"}),
        ("POST", f"/threads/{t}/history", {"limit": 5}),
        ("GET", f"/threads/{t}/history", None),
        ("POST", f"/threads/{t}/runs", run),
        ("POST", f"/threads/{t}/runs", {**run, "if_not_exists": "create"}),
        ("POST", f"/threads/{t}/runs/wait", run),
        ("POST", f"/threads/{t}/runs/stream", run),
        ("GET", f"/threads/{t}/runs", None),
        ("GET", f"/threads/{t}/runs/{r}", None),
        ("GET", f"/threads/{t}/runs/{r}/join", None),
        ("GET", f"/threads/{t}/runs/{r}/stream", None),
        ("POST", f"/threads/{t}/runs/{r}/cancel", None),
        ("DELETE", f"/threads/{t}/runs/{r}", None),
        ("POST", f"/threads/{t}/commands", {"id": 1, "method": "run.start", "params": run}),
        (
            "POST",
            f"/threads/{t}/commands",
            {"id": 2, "method": "input.respond", "params": {"interrupt_id": "i", "response": 1}},
        ),
        ("POST", f"/threads/{t}/stream/events", {"channels": ["values"]}),
        ("DELETE", f"/threads/{t}", None),
    ]


OTHER_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/threads", {}),
    ("POST", "/threads/search", {}),
    ("POST", "/threads/count", {}),
    ("POST", "/runs/wait", {"assistant_id": "moa", "input": {"task": "x"}}),
    ("POST", "/runs/stream", {"assistant_id": "moa", "input": {"task": "x"}}),
    ("POST", "/assistants/search", {}),
    ("POST", "/assistants/count", {}),
    ("GET", "/assistants/moa", None),
    ("GET", "/assistants/moa/schemas", None),
    ("GET", "/assistants/moa/graph", None),
]


def test_every_endpoint_needs_a_valid_key(served: Served, owned: dict[str, str]) -> None:
    endpoints = thread_endpoints(owned["thread_id"], owned["run_id"], owned["checkpoint_id"])
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for headers in (
            {},
            {"x-api-key": "wrong-key-0123456789abcdef"},
            {"authorization": "Bearer nope"},
        ):
            for method, path, body in endpoints + OTHER_ENDPOINTS:
                r = http.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert "Traceback" not in r.text
        assert http.get("/ok").status_code == 200
        assert http.get("/info").status_code == 200
        assert http.get("/openapi.json").status_code == 401  # docs need a key too
        # the thread is untouched by all of that
        mine = http.get(f"/threads/{owned['thread_id']}", headers={"x-api-key": KEY_A})
        assert mine.status_code == 200 and mine.json()["metadata"]["owner"] == "a"


def test_another_tenant_gets_404_everywhere(served: Served, owned: dict[str, str]) -> None:
    endpoints = thread_endpoints(owned["thread_id"], owned["run_id"], owned["checkpoint_id"])
    with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_B}, timeout=30) as http:
        for method, path, body in endpoints:
            r = http.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert owned["checkpoint_id"] not in r.text
        assert http.post("/threads/search", json={}).json() == []
        assert http.post("/threads/search", json={"ids": [owned["thread_id"]]}).json() == []
        assert http.post("/threads/search", json={"metadata": {"owner": "a"}}).json() == []
        assert http.post("/threads/count", json={}).json() == 0
        # B cannot take A's thread id either, nor learn that it exists
        assert http.post("/threads", json={"thread_id": owned["thread_id"]}).status_code == 404
        # assistants are shared
        assert http.get("/assistants/moa").status_code == 200
    with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_A}, timeout=30) as http:
        thread = http.get(f"/threads/{owned['thread_id']}").json()
        assert thread["metadata"]["owner"] == "a" and thread["status"] == "idle"
        assert len(http.get(f"/threads/{owned['thread_id']}/runs").json()) == 1


def test_a_objects_unreachable_through_b_own_thread(served: Served, owned: dict[str, str]) -> None:
    """B names its own thread but A's run or checkpoint: every lookup is 404, nothing leaks."""
    a_run, a_ckpt = owned["run_id"], owned["checkpoint_id"]
    with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_B}, timeout=60) as http:
        t = http.post("/threads", json={}).json()["thread_id"]
        done = http.post(
            f"/threads/{t}/runs/wait", json={"assistant_id": "moa", "input": {"task": "theirs"}}
        )
        assert done.status_code == 200, done.text
        crossed: list[tuple[str, str, Any]] = [
            ("GET", f"/threads/{t}/runs/{a_run}", None),
            ("GET", f"/threads/{t}/runs/{a_run}/join", None),
            ("GET", f"/threads/{t}/runs/{a_run}/stream", None),
            ("POST", f"/threads/{t}/runs/{a_run}/cancel", None),
            ("DELETE", f"/threads/{t}/runs/{a_run}", None),
            ("GET", f"/threads/{t}/state/{a_ckpt}", None),
            ("POST", f"/threads/{t}/state/checkpoint", {"checkpoint": {"checkpoint_id": a_ckpt}}),
            (
                "POST",
                f"/threads/{t}/runs/wait",
                {"assistant_id": "moa", "input": {"task": "x"}, "checkpoint_id": a_ckpt},
            ),
        ]
        for method, path, body in crossed:
            r = http.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert '"mine"' not in r.text, (method, path, r.text)  # A's input never shows
        history = http.post(
            f"/threads/{t}/history",
            json={"checkpoint": {"checkpoint_id": a_ckpt}, "limit": 10},
        )
        assert history.status_code in (200, 404) and '"mine"' not in history.text, history.text
        assert a_run not in http.get(f"/threads/{t}/runs").text
    with httpx.Client(base_url=served.url, headers={"x-api-key": KEY_A}, timeout=30) as http:
        run = http.get(f"/threads/{owned['thread_id']}/runs/{a_run}")
        assert run.status_code == 200 and run.json()["status"] == "success"
        state = http.get(f"/threads/{owned['thread_id']}/state/{a_ckpt}").json()
        assert state["values"]["task"] == "mine"


async def test_sdk_with_keys_and_bearer(served: Served, srv: ModelServer) -> None:
    a = get_client(url=served.url, api_key=KEY_A)
    b = get_client(url=served.url, api_key=None, headers={"Authorization": f"Bearer {KEY_B}"})
    thread = await b.threads.create()
    values = await b.runs.wait(thread["thread_id"], "moa", input={"task": "bearer"})
    assert values["answer"] == synthesis(srv, "bearer")
    parts = [p async for p in b.runs.stream(thread["thread_id"], "moa", input={"task": "s"})]
    assert parts[0].event == "metadata"
    with pytest.raises(NotFoundError):
        await a.threads.get(thread["thread_id"])
    with pytest.raises(NotFoundError):
        await a.threads.get_history(thread["thread_id"])
    with pytest.raises(NotFoundError):
        await a.runs.list(thread["thread_id"])
    ids_a = {t["thread_id"] for t in await a.threads.search(limit=100)}
    ids_b = {t["thread_id"] for t in await b.threads.search(limit=100)}
    assert thread["thread_id"] in ids_b and not ids_a & ids_b
    stateless = await a.runs.wait(None, "moa", input={"task": "no thread"})
    assert stateless["answer"] == synthesis(srv, "no thread")


def test_serve_refuses_unsafe_settings(tmp_path: Path) -> None:
    def serve_with(
        *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MOA, "serve", "--preset", "layered", "--db", f"sqlite:///{tmp_path}/x.sqlite", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", **(env or {})},
        )

    open_to_all = serve_with("--no-auth", "--host", "0.0.0.0")
    assert open_to_all.returncode == 2 and "--no-auth is only allowed" in open_to_all.stderr
    no_keys = serve_with("--host", "127.0.0.1")
    assert no_keys.returncode == 2 and "no API keys" in no_keys.stderr
    short = serve_with(env={"MOA_API_KEYS": "short"})
    assert short.returncode == 2 and "shorter than 16" in short.stderr
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\ntiny\n")
    bad_file = serve_with("--api-keys-file", str(keys_file))
    assert bad_file.returncode == 2 and f"{keys_file}:2" in bad_file.stderr
