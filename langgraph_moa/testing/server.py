"""The scripted OpenAI-compatible chat-completions server (see the package docstring).

Rules and replies live in ``rules.py``, the HTTP handler in ``_http.py``; this module holds
:class:`ModelServer` (the rules, the call records, the lifecycle) and its remote client.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from langgraph_moa.testing._http import ScriptedHTTPServer
from langgraph_moa.testing.rules import ChatRequest, Rule

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = ["ModelServer", "ModelServerClient"]


class ModelServer:
    """A scripted OpenAI-compatible server on 127.0.0.1, run in a background thread.

    Args:
        rules: initial rules (:class:`Rule` or script-file mappings), tried in order.
        port: 0 for an ephemeral port.
        latency: default seconds before each answer; ``model_latency`` per model name.
        script: a JSON/YAML script file to load (see :meth:`configure`).
        log: print one access-log line per request to stderr.
    """

    def __init__(
        self,
        rules: Iterable[Rule | Mapping[str, Any]] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        model_latency: Mapping[str, float] | None = None,
        script: str | Path | None = None,
        log: bool = False,
    ) -> None:
        self.host, self.port, self.log = host, port, log
        self.latency = latency
        self.model_latency: dict[str, float] = dict(model_latency or {})
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._rules: list[Rule] = []
        self._hits: list[int] = []
        self._requests: list[ChatRequest] = []
        self._calls: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._peak_total = 0
        self._httpd: ScriptedHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if script is not None:
            self.load_script(script)
        for rule in rules:
            self.add_rule(rule)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> ModelServer:
        """Bind and serve in a daemon thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("ModelServer is already running")
        self._stopping.clear()
        self._httpd = ScriptedHTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"ModelServer:{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; delayed and stalled requests are released at once."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        with self._idle:  # let released calls record their end (bounded)
            self._idle.wait_for(lambda: not +self._in_flight, timeout=5)
        self._httpd.close_connections()
        self._httpd = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` (the root, where ``/_test/...`` lives)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://host:port/v1``."""
        return f"{self.url}/v1"

    # -- scripting ------------------------------------------------------------------------
    def add_rule(self, rule: Rule | Mapping[str, Any] | None = None, /, **kwargs: Any) -> Rule:
        """Append a rule (a :class:`Rule`, a mapping, or :class:`Rule` keyword arguments)."""
        if rule is None:
            rule = Rule(**kwargs)
        elif kwargs:
            raise TypeError("give either a rule or keyword arguments, not both")
        elif not isinstance(rule, Rule):
            rule = Rule.from_dict(rule, where=f"rules[{self.rule_count()}]")
        with self._lock:
            self._rules.append(rule)
            self._hits.append(0)
        return rule

    def configure(self, data: Any, where: str = "script") -> None:
        """Apply a script: a list of rules, or a mapping with ``rules`` (list), ``latency``,
        ``model_latency`` (name -> seconds) and ``replace`` (drop the current rules first)."""
        if isinstance(data, list):
            data = {"rules": data}
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a list of rules or a mapping, got {data!r}")
        unknown = sorted(set(data) - {"rules", "latency", "model_latency", "replace"})
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {unknown}; use rules, latency, model_latency, replace"
            )
        raw_rules = data.get("rules") or []
        if not isinstance(raw_rules, list):
            raise ValueError(f"{where}: 'rules' must be a list of rule mappings")
        rules = [Rule.from_dict(r, where=f"{where}: rules[{i}]") for i, r in enumerate(raw_rules)]
        try:
            latency = float(data.get("latency", self.latency))
            model_latency = {str(k): float(v) for k, v in (data.get("model_latency") or {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: latency values must be numbers of seconds: {exc}") from None
        with self._lock:
            if data.get("replace"):
                self._rules, self._hits = [], []
            self.latency = latency
            self.model_latency.update(model_latency)
            self._rules += rules
            self._hits += [0] * len(rules)

    def load_script(self, path: str | Path) -> None:
        """Load a ``.json`` or ``.yaml``/``.yml`` script file (format: :meth:`configure`)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read script file {path}: {exc}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"script file {path} is not valid JSON/YAML: {exc}") from None
        self.configure(data, where=str(path))

    def set_latency(self, model: str | None, seconds: float) -> None:
        """Set the default latency of ``model`` (None: of every model)."""
        with self._lock:
            if model is None:
                self.latency = seconds
            else:
                self.model_latency[model] = seconds

    def latency_for(self, model: str) -> float:
        return self.model_latency.get(model, self.latency)

    def rule_count(self) -> int:
        with self._lock:
            return len(self._rules)

    def reset(self) -> None:
        """Drop all rules and per-model latencies, and reset the counts."""
        with self._lock:
            self._rules, self._hits = [], []
            self.model_latency.clear()
        self.reset_counts()

    def reset_counts(self) -> None:
        """Forget recorded requests, call counts and peaks (in-flight calls stay counted)."""
        with self._lock:
            self._requests.clear()
            self._calls.clear()
            self._peak = Counter(self._in_flight)
            self._peak_total = sum(self._in_flight.values())

    # -- introspection --------------------------------------------------------------------
    def calls(self, model: str | None = None) -> int:
        """Chat-completion calls received (for ``model``, or in total), failures included."""
        with self._lock:
            return self._calls[model] if model is not None else sum(self._calls.values())

    @property
    def requests(self) -> list[ChatRequest]:
        """A snapshot of the recorded calls, oldest first."""
        with self._lock:
            return list(self._requests)

    def in_flight(self, model: str | None = None) -> int:
        """Calls being answered now (for ``model``, or in total)."""
        with self._lock:
            return self._in_flight[model] if model is not None else sum(self._in_flight.values())

    def max_in_flight(self, model: str | None = None) -> int:
        """Peak number of concurrent calls (for ``model``, or in total)."""
        with self._lock:
            return self._peak[model] if model is not None else self._peak_total

    def stats(self) -> dict[str, Any]:
        """Counts as served by ``GET /_test/calls``."""
        with self._lock:
            return {
                "total": sum(self._calls.values()),
                "calls": dict(self._calls),
                "in_flight": {k: v for k, v in self._in_flight.items() if v},
                "max_in_flight": dict(self._peak),
                "max_in_flight_total": self._peak_total,
                "usage": {  # of the calls answered in full
                    key: sum((r.usage or {}).get(key, 0) for r in self._requests if not r.failure)
                    for key in ("prompt_tokens", "completion_tokens", "total_tokens")
                },
            }

    def chat_model(self, model: str = "m", **kwargs: Any) -> ChatOpenAI:
        """A ``ChatOpenAI`` for this server (api_key "test", ``max_retries=0``, stream usage on)."""
        from langchain_openai import ChatOpenAI

        params: dict[str, Any] = {
            "model": model,
            "base_url": self.base_url,
            "api_key": "test",
            "max_retries": 0,
            "stream_usage": True,
        }
        return ChatOpenAI(**(params | kwargs))

    # -- used by the handler --------------------------------------------------------------
    def _begin(self, body: Any) -> tuple[ChatRequest, Rule | None]:
        if not isinstance(body, dict):
            raise ValueError("chat completions need a JSON object body")
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise ValueError("'model' is required (a non-empty string)")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("'messages' is required (a list of message objects)")
        with self._lock:
            self._calls[model] += 1
            req = ChatRequest(model=model, messages=messages, body=body, call=self._calls[model])
            self._requests.append(req)
            self._in_flight[model] += 1
            self._peak[model] = max(self._peak[model], self._in_flight[model])
            self._peak_total = max(self._peak_total, sum(self._in_flight.values()))
            for i, rule in enumerate(self._rules):
                if (rule.times is None or self._hits[i] < rule.times) and rule.matches(req):
                    self._hits[i] += 1
                    req.rule = i
                    return req, rule
        return req, None

    def _end(self, req: ChatRequest, status: int | None) -> None:
        with self._lock:
            if req.finished is not None:
                return
            req.finished, req.status = time.time(), status
            self._in_flight[req.model] -= 1
            self._idle.notify_all()


class ModelServerClient:
    """Reads and scripts a :class:`ModelServer` run by another process, over its HTTP API.

    ``url`` is the server's root or base URL (``http://127.0.0.1:PORT[/v1]``).
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        resp = httpx.request(method, self.url + path, json=body, timeout=self.timeout)
        if resp.status_code != 200:
            raise ValueError(f"{method} {path}: HTTP {resp.status_code}: {resp.text}")
        return resp.json()

    def stats(self) -> dict[str, Any]:
        """What :meth:`ModelServer.stats` gives, from ``GET /_test/calls``."""
        return dict(self._call("GET", "/_test/calls"))

    def calls(self, model: str | None = None) -> int:
        stats = self.stats()
        return int(stats["total"] if model is None else stats["calls"].get(model, 0))

    def max_in_flight(self, model: str | None = None) -> int:
        stats = self.stats()
        peaks = stats["max_in_flight"]
        return int(stats["max_in_flight_total"] if model is None else peaks.get(model, 0))

    def requests(self) -> list[dict[str, Any]]:
        """The recorded calls as :meth:`ChatRequest.to_dict` summaries."""
        return list(self._call("GET", "/_test/requests"))

    def configure(self, script: Any) -> int:
        """Send a script (rules list or mapping, see :meth:`ModelServer.configure`)."""
        return int(self._call("POST", "/_test/rules", script)["rules"])

    def reset(self) -> None:
        self._call("POST", "/_test/reset")

    def reset_counts(self) -> None:
        self._call("POST", "/_test/reset_counts")
