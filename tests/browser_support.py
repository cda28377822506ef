"""Helpers of the browser tests: Debian's headless Chromium driven by Playwright, the
official JS SDK bundled with esbuild from the npm registry, a static site on another
origin, and screenshots."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_SERVICES

JS_SDK = "1.15.0"
"""``@langchain/langgraph-sdk`` version bundled for the pages."""
ESBUILD = "0.28.2"
HERE = Path(__file__).parent
SCREENSHOTS = HERE.parent / "bench" / "results" / "screenshots"


def _missing(what: str) -> None:
    msg = f"{what}; .ci/run installs it"
    if REQUIRE_SERVICES:
        pytest.fail(msg)
    pytest.skip(msg)


def chromium_path() -> str:
    """Debian's chromium (Playwright's own browser download does not work here)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("no chromium on PATH (apt-get install -y chromium)")
    return str(found)


def js_sdk_dir() -> Path:
    """A directory whose ``node_modules`` holds the JS SDK (and esbuild), installed once
    per version with npm from the registry and cached (``MOA_BROWSER_CACHE``)."""
    cache = Path(
        os.environ.get("MOA_BROWSER_CACHE") or Path.home() / ".cache" / "langgraph-moa" / "browser"
    )
    root = cache / f"langgraph-sdk-{JS_SDK}-esbuild-{ESBUILD}"
    if (root / "node_modules" / "@langchain" / "langgraph-sdk" / "package.json").exists():
        return root
    npm = shutil.which("npm")
    if npm is None:
        _missing("no npm on PATH (apt-get install -y npm)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "package.json").write_text(json.dumps({"name": "moa-browser-tests", "private": True}))
    packages = [f"@langchain/langgraph-sdk@{JS_SDK}", f"esbuild@{ESBUILD}"]
    subprocess.run(
        [str(npm), "install", "--no-audit", "--no-fund", "--silent", *packages],
        cwd=root,
        check=True,
        timeout=600,
    )
    return root


def sdk_bundle() -> Path:
    """``sdk.js``: the JS SDK as one browser script (``window.LangGraphClient``), built
    once per version with esbuild and cached next to :func:`js_sdk_dir`'s packages."""
    root = js_sdk_dir()
    bundle = root / "sdk.js"
    if bundle.exists():
        return bundle
    shutil.copy(HERE / "browser" / "sdk-entry.js", root / "entry.js")
    subprocess.run(
        [
            str(root / "node_modules" / ".bin" / "esbuild"),
            "entry.js",
            "--bundle",
            "--format=iife",
            "--platform=browser",
            "--target=es2020",
            "--minify",
            "--outfile=sdk.tmp.js",
        ],
        cwd=root,
        check=True,
        timeout=300,
    )
    (root / "sdk.tmp.js").replace(bundle)
    return bundle


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticSite:
    """A directory served on 127.0.0.1 on its own port: another origin than ``moa serve``."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_Quiet, directory=str(directory))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StaticSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def launch() -> Iterator[Any]:
    """A headless Chromium browser (for a fixture)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright Python package is missing (dev extra)")
    path = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a full-page screenshot in the test's tmp dir and copy it to
    ``bench/results/screenshots/`` (the CI artifact)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)
    return path
