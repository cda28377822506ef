"""Real headless Chromium (Debian's ``chromium``, driven by Playwright) against ``moa serve``:
a page on another origin holds a two-turn chat through the official JS SDK; the dashboard
follows a run from running to done live; approving a paused run from the browser resumes
it to success. Each page is screenshotted (tmp dir and ``bench/results/screenshots/``)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.testing import ChatRequest, ModelServer
from tests.browser_support import StaticSite, launch, screenshot, sdk_bundle
from tests.test_conversation import Q1, Q2, check_second_turn
from tests.test_server_support import KEY_A, Served, moa_spec

pytestmark = pytest.mark.slow
TIMEOUT = 60_000  # ms; a last guard, every wait is on a DOM state


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


@pytest.fixture(scope="module")
def srv() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticSite]:
    """chat.html and the bundled JS SDK on their own origin."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(sdk_bundle(), root / "sdk.js")
    shutil.copy(Path(__file__).parent / "browser" / "chat.html", root / "chat.html")
    with StaticSite(root) as static:
        yield static


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, srv: ModelServer, site: StaticSite
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    chat = moa_spec(srv)
    approve = moa_spec(srv, name="moa-approve", interrupt_before_synthesis=True)
    server = Served(
        tmp,
        [chat, approve],
        f"sqlite:///{tmp / 'moa.sqlite'}",
        keys=[KEY_A],
        extra=["--cors-origin", site.origin],
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(browser: Any, srv: ModelServer) -> Iterator[Any]:
    srv.reset()
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(TIMEOUT)
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


def login(page: Any, served: Served) -> None:
    page.goto(f"{served.url}/ui")
    page.fill("#key", KEY_A)
    page.click("button[type=submit]")
    page.wait_for_url(f"{served.url}/ui")


def test_js_sdk_two_turn_chat_from_another_origin(
    page: Any, served: Served, site: StaticSite, srv: ModelServer, tmp_path: Path
) -> None:
    srv.add_rule(model="synth", template="ANSWER to [{last_user}] {digest}")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{site.origin}/chat.html?api={served.url}&key={KEY_A}&assistant=moa")
    page.fill("#question", Q1)
    page.click("#send")
    page.wait_for_selector("#status:text('done 2')")
    turn1 = srv.requests
    page.fill("#question", Q2)
    page.click("#send")
    page.wait_for_selector("#status:text('done 4')")
    screenshot(page, tmp_path, "js-sdk-chat")

    texts = page.locator(".msg").all_inner_texts()
    assert texts[0] == Q1 and texts[2] == Q2
    assert texts[1].startswith(f"ANSWER to [{Q1}]") and texts[3].startswith(f"ANSWER to [{Q2}]")
    assert page.inner_text("#error") == "" and not errors
    old = {r.model: {"content": f"{r.model} answer {r.digest}"} for r in turn1}
    check_second_turn(srv.requests[len(turn1) :], old, Q2, texts[1])


def test_dashboard_follows_a_run_live(
    page: Any, served: Served, srv: ModelServer, tmp_path: Path
) -> None:
    release = threading.Event()

    def held(req: ChatRequest) -> str:
        release.wait(120)
        return "the synthesis, released"

    srv.add_rule(model="synth", reply=held)
    login(page, served)
    page.goto(f"{served.url}/ui/new")
    page.fill("#task", "Follow me live")
    page.click("#start")
    page.wait_for_url("**/ui/runs/**")
    try:
        page.wait_for_selector("#run-status.running")
        page.wait_for_selector(".cell[data-agent=a1][data-state=done]")
        page.wait_for_selector(".cell[data-agent=synthesizer][data-state=running]")
        screenshot(page, tmp_path, "run-running")
    finally:
        release.set()
    page.wait_for_selector("#run-status.success")  # the live view, no reload
    page.wait_for_selector("#answer:has-text('the synthesis, released')")
    assert page.locator(".cell[data-state=done]").count() == 3
    screenshot(page, tmp_path, "run-done")

    page.goto(f"{served.url}/ui")
    row = page.locator("#runs tbody tr").first
    assert "Follow me live" in row.inner_text() and "success" in row.inner_text()
    screenshot(page, tmp_path, "dashboard")

    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(served.url + (row.locator("a").first.get_attribute("href") or ""))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, tmp_path, "run-phone")


def test_approve_a_paused_run_from_the_browser(
    page: Any, served: Served, srv: ModelServer, tmp_path: Path
) -> None:
    login(page, served)
    page.goto(f"{served.url}/ui/new")
    page.select_option("#assistant", "moa-approve")
    page.fill("#task", "Pause before the synthesis")
    page.click("#start")
    page.wait_for_selector("#run-status.interrupted")
    page.wait_for_selector("#approve")
    page.fill("#p-a1", "a1, edited in the browser")
    screenshot(page, tmp_path, "run-paused")
    page.click("#approve")
    page.wait_for_selector("#run-status.success")
    synth = [r for r in srv.requests if r.model == "synth"]
    assert len(synth) == 1 and "a1, edited in the browser" in synth[0].system
    assert page.locator(".cell[data-agent=a1] .text").inner_text() == "a1, edited in the browser"
    screenshot(page, tmp_path, "run-approved")

    page.click("a[href^='/ui/threads/']")
    page.select_option("#assistant", "moa")  # the follow-up without a pause
    page.fill("#message", "A follow-up on the same thread")
    page.click("#send")
    page.wait_for_selector(".msg.ai >> nth=1")
    assert page.locator(".msg").count() == 4
    screenshot(page, tmp_path, "chat")
