"""What browsers get from ``moa serve`` over real HTTP: CORS only for the named origins,
JSON bodies sent as text/plain (Agent Chat UI's passthrough), and the dashboard's login,
tenant scoping and same-origin forms."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from langgraph_moa.testing import ChatRequest, ModelServer
from tests.test_server_support import KEY_A, KEY_B, WAIT, Served, moa_spec, serve

PAGE = "http://127.0.0.1:5173"


@pytest.fixture
def served(
    tmp_path: Path, model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    monkeypatch.setenv("MOA_CORS_ORIGINS", f"{PAGE}, http://other.example/")
    routed = moa_spec(
        model_server, name="moa-routed", routing={"mode": "router", "model": "router"}
    )
    routed["models"]["router"] = {"model": "router", "base_url": model_server.base_url}
    yield from serve(
        tmp_path,
        [moa_spec(model_server), routed],
        f"sqlite:///{tmp_path / 'm.sqlite'}",
        keys=[KEY_A, KEY_B],
    )


def test_cors_preflight_and_exposed_headers(served: Served) -> None:
    asked = "x-api-key,content-type,last-event-id,authorization"
    preflight = httpx.options(
        f"{served.url}/threads/search",
        headers={
            "Origin": PAGE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
        timeout=WAIT,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == PAGE
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert all(h in allowed for h in asked.split(","))

    refused = httpx.options(
        f"{served.url}/threads",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=WAIT,
    )
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

    created = httpx.post(
        f"{served.url}/threads/{'0' * 8}-0000-4000-8000-{'0' * 12}/runs",
        json={"assistant_id": "moa", "input": {"task": "x"}, "if_not_exists": "create"},
        headers={"Origin": PAGE, "x-api-key": KEY_A},
        timeout=WAIT,
    )
    assert created.status_code == 200, created.text
    assert created.headers["access-control-allow-origin"] == PAGE
    exposed = created.headers["access-control-expose-headers"].lower()
    assert "content-location" in exposed and "location" in exposed.split(", ")
    assert created.headers["content-location"].startswith("/threads/")


def test_cors_is_off_unless_origins_are_named(tmp_path: Path, model_server: ModelServer) -> None:
    for served in serve(tmp_path, [moa_spec(model_server)], f"sqlite:///{tmp_path / 'm.sqlite'}"):
        preflight = httpx.options(
            f"{served.url}/threads",
            headers={"Origin": PAGE, "Access-Control-Request-Method": "POST"},
            timeout=WAIT,
        )
        assert preflight.status_code == 405
        assert "access-control-allow-origin" not in preflight.headers
        plain = httpx.get(f"{served.url}/info", headers={"Origin": PAGE}, timeout=WAIT)
        assert "access-control-allow-origin" not in plain.headers


def test_json_body_sent_as_text_plain(served: Served) -> None:
    headers = {"x-api-key": KEY_A, "content-type": "text/plain;charset=UTF-8"}
    thread = httpx.post(
        f"{served.url}/threads",
        content=b'{"metadata": {"via": "proxy"}}',
        headers=headers,
        timeout=WAIT,
    )
    assert thread.status_code == 200, thread.text
    assert thread.json()["metadata"] == {"via": "proxy"}
    tid = thread.json()["thread_id"]
    body = b'{"assistant_id": "moa", "input": {"messages": [{"type": "human", "content": "hi"}]}}'
    done = httpx.post(
        f"{served.url}/threads/{tid}/runs/wait", content=body, headers=headers, timeout=60
    )
    assert done.status_code == 200, done.text
    assert done.json()["answer"].startswith("synth answer")
    bad = httpx.post(f"{served.url}/threads", content=b"not json", headers=headers, timeout=WAIT)
    assert bad.status_code == 422


def _login(served: Served, key: str) -> httpx.Client:
    client = httpx.Client(base_url=served.url, timeout=60)
    r = client.post("/ui/login", data={"key": key})
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    return client


def test_dashboard_login_and_tenants(served: Served) -> None:
    anonymous = httpx.get(f"{served.url}/ui", timeout=WAIT)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ui/login"
    wrong = httpx.post(f"{served.url}/ui/login", data={"key": "x" * 20}, timeout=WAIT)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    huge = httpx.post(f"{served.url}/ui/login", data={"key": "x" * 100_000}, timeout=WAIT)
    assert huge.status_code == 413

    a, b = _login(served, KEY_A), _login(served, KEY_B)
    started = a.post("/ui/new", data={"assistant": "moa", "task": "tenant A's question"})
    assert started.status_code == 303
    run_page = started.headers["location"]
    live = a.get(run_page + "/live")  # follows the run to its end
    assert "event: end" in live.text and "success" in live.text

    page = a.get(run_page)
    assert "tenant A&#39;s question" in page.text and 'data-state="done"' in page.text
    assert "tenant A&#39;s question" in a.get("/ui").text
    assert "tenant A&#39;s question" in a.get("/ui?status=success&spec=moa").text
    assert "tenant A&#39;s question" not in a.get("/ui?status=error").text
    assert "tenant A" not in b.get("/ui").text  # B sees only B's runs
    assert b.get(run_page).status_code == 404
    assert b.post(run_page + "/cancel").status_code == 404
    # the pages take the API's id rules: a malformed id is a 422 page, never a lookup
    thread_id = run_page.split("/")[3]
    for path in (f"/ui/runs/{thread_id}/not-a-uuid", "/ui/runs/a%20b/" + run_page[-36:]):
        bad = a.get(path)
        assert bad.status_code == 422, bad.text
        assert "is not a valid id" in bad.text or "must be a UUID" in bad.text, bad.text
    assert a.get("/ui/threads/" + "x" * 256).status_code == 422

    forged = a.post(
        "/ui/new", data={"assistant": "moa", "task": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert forged.status_code == 403


def _follow(client: httpx.Client, run_page: str) -> str:
    """Wait for the run to stop (its live view ends); its final status."""
    live = client.get(run_page + "/live")
    assert live.status_code == 200
    return live.text.rsplit("event: end", 1)[1].split("data: ", 1)[1].split()[0]


def test_dashboard_cancel_resume_and_fork(served: Served, model_server: ModelServer) -> None:
    release, held = threading.Event(), threading.Event()

    def hold(req: ChatRequest) -> str:
        held.set()
        release.wait(60)
        return f"synthesis of [{req.last_user}]"

    model_server.add_rule(model="synth", reply=hold, times=1)
    model_server.add_rule(model="synth", template="synthesis of [{last_user}]")
    a = _login(served, KEY_A)
    run_page = a.post("/ui/new", data={"assistant": "moa", "task": "B-trees?"}).headers["location"]
    assert held.wait(60)
    assert a.post(run_page + "/cancel").status_code == 303
    assert _follow(a, run_page) == "cancelled"
    release.set()
    page = a.get(run_page).text
    assert 'id="resume"' in page and 'data-agent="a1" data-state="done"' in page

    proposer_calls = model_server.calls("p1") + model_server.calls("p2")
    resumed = a.post(run_page + "/resume").headers["location"]
    assert resumed != run_page and _follow(a, resumed) == "success"
    assert model_server.calls("p1") + model_server.calls("p2") == proposer_calls  # kept
    thread_id = run_page.split("/")[3]

    second = a.post(
        "/ui/chat", data={"assistant": "moa", "thread_id": thread_id, "message": "LSM-trees?"}
    )
    assert second.headers["location"] == f"/ui/threads/{thread_id}"
    runs = httpx.get(
        f"{served.url}/threads/{thread_id}/runs", headers={"x-api-key": KEY_A}, timeout=WAIT
    ).json()
    turn2 = f"/ui/runs/{thread_id}/{runs[0]['run_id']}"
    assert _follow(a, turn2) == "success"

    forked = a.post(turn2 + "/fork").headers["location"]
    assert forked.startswith(f"/ui/runs/{thread_id}/") and _follow(a, forked) == "success"
    state = httpx.get(
        f"{served.url}/threads/{thread_id}/state", headers={"x-api-key": KEY_A}, timeout=WAIT
    )
    messages = [(m["type"], m["content"]) for m in state.json()["values"]["messages"]]
    # the fork ran turn 2 again from where it started: no third turn
    assert messages == [
        ("human", "B-trees?"),
        ("ai", "synthesis of [B-trees?]"),
        ("human", "LSM-trees?"),
        ("ai", "synthesis of [LSM-trees?]"),
    ]
    chat = a.get(f"/ui/threads/{thread_id}").text
    assert chat.count('class="msg human"') == 2 and chat.count('class="msg ai"') == 2


def _view_with(client: httpx.Client, run_page: str, text: str) -> str:
    """The run's live view (the ``view`` events its page streams as the run changes), from
    the first one that contains ``text``."""
    with client.stream("GET", run_page + "/live") as live:
        for line in live.iter_lines():
            if line.startswith("data: {"):
                html = str(json.loads(line.removeprefix("data: "))["html"])
                if text in html:
                    return html
    raise AssertionError(f"the run's view never showed {text!r}")


def test_run_page_shows_an_answer_written_before_its_step_is_saved(
    served: Served, model_server: ModelServer
) -> None:
    """a1 answered while a2 still works: the step's checkpoint waits for the whole layer,
    so a1's proposal is only a pending write of its task. The page shows it, before and
    after a cancel."""
    release, held = threading.Event(), threading.Event()

    def hold(req: ChatRequest) -> str:
        held.set()
        release.wait(60)
        return "p2's late answer"

    model_server.add_rule(model="p1", reply="p1 says B-trees are shallow")
    model_server.add_rule(model="p2", reply=hold, times=1)
    a = _login(served, KEY_A)
    run_page = a.post("/ui/new", data={"assistant": "moa", "task": "B-trees?"}).headers["location"]
    assert held.wait(60)
    done = 'data-agent="a1" data-state="done"'
    page = _view_with(a, run_page, done)
    assert done in page and "p1 says B-trees are shallow" in page
    assert 'data-agent="a2" data-state="running"' in page
    assert a.post(run_page + "/cancel").status_code == 303
    assert _follow(a, run_page) == "cancelled"
    release.set()
    page = a.get(run_page).text
    assert done in page and "p1 says B-trees are shallow" in page
    assert 'data-agent="a2" data-state="stopped"' in page and 'id="resume"' in page

    resumed = a.post(run_page + "/resume").headers["location"]
    assert _follow(a, resumed) == "success"
    assert model_server.calls("p1") == 1  # a1's answer was kept
    # the cancelled run's page now shows its own last checkpoint (not the thread's latest,
    # and not live), where a1's proposal is still a pending write of its task
    page = a.get(run_page).text
    assert done in page and "p1 says B-trees are shallow" in page
    page = a.get(resumed).text
    assert 'data-agent="a2" data-state="done"' in page and done in page


def test_run_page_shows_plan_failures_and_notes(served: Served, model_server: ModelServer) -> None:
    plan = {
        "plan": [
            {"agent": "a1", "subtask": "list the facts"},
            {"agent": "a2", "subtask": "check them"},
        ]
    }
    model_server.add_rule(model="router", json=plan)
    model_server.add_rule(model="p2", fail=400)
    a = _login(served, KEY_A)
    started = a.post("/ui/new", data={"assistant": "moa-routed", "task": "Facts?"})
    assert started.status_code == 303, started.text
    run_page = started.headers["location"]
    assert _follow(a, run_page) == "success"
    page = a.get(run_page).text
    assert "Router plan (2 subtasks)" in page
    assert "<b>a1</b>: list the facts" in page and "<b>a2</b>: check them" in page
    assert 'data-agent="a2" data-state="failed"' in page and "Error code: 400" in page
    assert 'data-agent="a1" data-state="done"' in page
    assert "<h2>Notes</h2>" in page and "layer 1: a2 failed" in page


def test_serve_refuses_a_cors_origin_that_is_no_url(tmp_path: Path) -> None:
    import subprocess

    from tests.test_server_support import MOA

    db = f"sqlite:///{tmp_path / 'm.sqlite'}"
    done = subprocess.run(
        [MOA, "serve", "--no-auth", "--db", db, "--cors-origin", "localhost:3000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "CORS origin 'localhost:3000' must be '*' or a URL" in done.stderr
