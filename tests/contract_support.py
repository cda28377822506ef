"""The contract harness: a table of SDK calls, each run with the Python SDK
(``langgraph_sdk``), the JS SDK (``@langchain/langgraph-sdk`` under Node, installed from
the npm registry at test time like the browser tests) or raw HTTP, against a server; what
each answered is reduced to an :data:`Outcome` (status and response keys) to compare.

A :class:`Call` is one table row: its name, its SDK, the code (a Python callable of the
context, or a JS expression over ``client`` and ``ctx``), what the reference answers
(``expect``) and, where ``moa serve`` deliberately answers otherwise, what it answers
(``ours``) and why. Calls run in table order and may keep their result (``save``) for
later calls (``ctx["t"]["thread_id"]`` in Python, ``ctx.t.thread_id`` in JS).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from langgraph_sdk import get_client

from langgraph_moa.testing import ModelServer
from tests.browser_support import js_sdk_dir

Outcome = dict[str, Any]
"""``{"status": "ok" | <HTTP status>, "shape": ...}``: the shape of a dict is
``{"keys": [...]}``, of a list ``{"items": <shape of the first>}``, of a stream
``{"events": [<names>]}``, of anything else its JSON type."""


IGNORED_KEYS = {"langsmith_session_name"}
"""Keys left out of every shape: the reference's LangSmith fields (moa has no LangSmith)."""


def keys(*names: str) -> dict[str, list[str]]:
    return {"keys": sorted(names)}


def items(shape: Any) -> dict[str, Any]:
    return {"items": shape}


def events(*names: str) -> dict[str, list[str]]:
    return {"events": sorted(set(names))}


def ok(shape: Any) -> Outcome:
    return {"status": "ok", "shape": shape}


def failed(status: int) -> Outcome:
    return {"status": status, "shape": None}


class Ctx(dict[str, Any]):
    """What the Python calls see: the SDK ``client``, an ``httpx`` client ``http`` on the
    same server, the scripted model server ``srv`` and the saved results."""

    def __init__(self, client: Any, http: httpx.AsyncClient, srv: ModelServer) -> None:
        super().__init__()
        self.client = client
        self.http = http
        self.srv = srv


PyCode = Callable[[Ctx], Awaitable[Any] | AsyncIterator[Any]]


@dataclass(frozen=True)
class Call:
    """One call of the contract."""

    name: str
    sdk: Literal["py", "js", "http"]
    code: PyCode | str
    expect: Outcome | None = None
    """The reference's answer (``None``: only compared with ours)."""
    ours: Outcome | None = None
    """``moa serve``'s answer where it deliberately differs (then ``why`` says why)."""
    why: str = ""
    save: str | None = None


def shape_of(value: Any) -> Any:
    if isinstance(value, dict):
        return {"keys": sorted(set(value) - IGNORED_KEYS)}
    if isinstance(value, list):
        return {"items": shape_of(value[0]) if value else None}
    if value is None:
        return None
    return {bool: "boolean", int: "number", float: "number", str: "string"}.get(
        type(value), type(value).__name__
    )


async def run_python(url: str, calls: Sequence[Call], srv: ModelServer) -> dict[str, Outcome]:
    """Run the ``py`` and ``http`` calls in order; their outcomes by ``"<sdk> <name>"``."""
    out: dict[str, Outcome] = {}
    client = get_client(url=url, api_key=None)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        ctx = Ctx(client, http, srv)
        for call in calls:
            if call.sdk == "js":
                continue
            assert callable(call.code)
            print(f"{url} {call.sdk} {call.name}", flush=True)
            try:
                result = call.code(ctx)
                if hasattr(result, "__aiter__"):
                    parts = [p async for p in result]  # type: ignore[union-attr]
                    result = parts
                    outcome = ok({"events": sorted({p.event for p in parts})})
                else:
                    result = await result  # type: ignore[misc]
                    outcome = _response(result) if call.sdk == "http" else ok(shape_of(result))
            except httpx.HTTPStatusError as exc:
                result, outcome = None, failed(exc.response.status_code)
            except Exception as exc:  # e.g. the server dropped the connection, or an earlier
                # call this one builds on failed: a status that says so
                result, outcome = None, {"status": type(exc).__name__, "shape": None}
            if call.save:
                ctx[call.save] = result
            out[f"{call.sdk} {call.name}"] = outcome
    return out


def _response(response: httpx.Response | Outcome) -> Outcome:
    """A raw answer: its exact status and the shape of its JSON body (or an outcome the
    call made itself, e.g. from an event stream it read)."""
    if isinstance(response, dict):
        return response
    body = response.json() if response.content.strip() else None
    return {"status": response.status_code, "shape": shape_of(body)}


JS_RUNNER = """
import { Client } from "@langchain/langgraph-sdk";
const client = new Client({ apiUrl: process.argv[2], apiKey: null,
  callerOptions: { maxRetries: 0 } });
const ctx = {};
const IGNORED = %IGNORED%;
function shape(v) {
  if (Array.isArray(v)) return { items: v.length ? shape(v[0]) : null };
  if (v === null || v === undefined) return null;
  if (typeof v === "object") {
    return { keys: Object.keys(v).filter((k) => !IGNORED.includes(k)).sort() };
  }
  return typeof v;
}
async function settle(v) {
  if (v && typeof v === "object" && !Array.isArray(v) && Symbol.asyncIterator in v) {
    const names = new Set();
    for await (const part of v) names.add(part.event);
    return { events: [...names].sort() };
  }
  return shape(await v);
}
const calls = [
%CALLS%
];
for (const [name, save, fn] of calls) {
  let line;
  try {
    const value = fn();
    const result = await value;
    line = { name, status: "ok", shape: await settle(result) };
    if (save) ctx[save] = await result;
  } catch (e) {
    line = { name, status: e.status ?? String(e.message ?? e).slice(0, 300), shape: null };
  }
  console.log(JSON.stringify(line));
}
process.exit(0);
"""


def run_js(url: str, calls: Sequence[Call], tmp_path: Path) -> dict[str, Outcome]:
    """Run the ``js`` calls in one Node process with the JS SDK; outcomes by
    ``"js <name>"``."""
    body = ",\n".join(
        f"  [{json.dumps(c.name)}, {json.dumps(c.save)}, async () => ({c.code})]"
        for c in calls
        if c.sdk == "js"
    )
    root = tmp_path / "js"
    root.mkdir(exist_ok=True)
    modules = root / "node_modules"
    if not modules.exists():
        modules.symlink_to(js_sdk_dir() / "node_modules")
    script = root / "contract.mjs"
    ignored = json.dumps(sorted(IGNORED_KEYS))
    script.write_text(JS_RUNNER.replace("%CALLS%", body).replace("%IGNORED%", ignored))
    env = {**os.environ, "LANGGRAPH_API_KEY": "", "LANGSMITH_API_KEY": "", "LANGCHAIN_API_KEY": ""}
    try:
        proc = subprocess.run(
            ["node", str(script), url],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            check=False,
        )
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:  # a call hung: say which
        stdout, stderr = _text(exc.stdout), _text(exc.stderr)
    out: dict[str, Outcome] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            out[f"js {record.pop('name')}"] = record
    missing = [c.name for c in calls if c.sdk == "js" and f"js {c.name}" not in out]
    assert not missing, f"node did not report {missing}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return out


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""
