"""A scripted, deterministic OpenAI-compatible model server for tests, over real HTTP.

Clients talk to it as to any OpenAI endpoint (``ChatOpenAI(base_url=srv.base_url,
api_key="test")``); rules decide what each call gets::

    from langgraph_moa.testing import ModelServer, Rule

    with ModelServer(latency=0.05) as srv:
        srv.add_rule(model="judge", last_user=r"capital of France", reply="Paris")
        srv.add_rule(model="flaky", fail=429, retry_after=0.1, times=2)  # then default reply
        srv.add_rule(model="slow", delay=0.5, template="{model} saw {digest}")
        srv.add_rule(reply=lambda req: req.last_user.upper(), system="shout")
        llm = srv.chat_model("judge")  # ChatOpenAI on this server, max_retries=0
        assert llm.invoke("What is the capital of France?").content == "Paris"
        assert srv.calls("judge") == 1 and srv.max_in_flight("judge") == 1

Behaviour:

* Rules are tried in order; the first match answers. Unmatched calls get the default reply
  ``"<model> answer <digest>"`` (digest: 8 hex digits of the SHA-256 of the prompt text), or,
  when the request forces a tool call or asks for ``json_schema`` output, a deterministic
  value built from the schema, so ``with_structured_output`` works without any rule.
* Tokens are whitespace-separated words: ``prompt_tokens`` counts the words of every
  message's text content, ``completion_tokens`` those of the reply text plus the tool calls'
  argument JSON. ``max_tokens``/``max_completion_tokens`` cut the reply to that many words
  (``finish_reason="length"``); ``stop`` sequences cut it too.
* ``stream: true`` answers with OpenAI's SSE chunks (one per word), a usage chunk when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``.
* Each connection has its own thread, so delayed calls overlap; ``in_flight``/``max_in_flight``
  show it. Stopping the server releases pending delays and stalls.

HTTP endpoints besides ``POST /v1/chat/completions`` and ``GET /v1/models``:
``GET /_test/calls`` (counts, in-flight, peaks, usage sums), ``GET /_test/requests``,
``POST /_test/rules`` (a rule list or a script mapping, see :meth:`ModelServer.configure`),
``POST /_test/reset`` and ``POST /_test/reset_counts``; :class:`ModelServerClient` wraps them
for a server run by another process.

Standalone: ``python -m langgraph_moa.testing --port 8765 --script rules.yaml --latency 0.3``
prints the base URL and serves until interrupted. Script file (JSON or YAML)::

    latency: 0.1
    model_latency: {slow: 1.0}
    rules:
      - {model: "proposer-.*", last_user: "France", reply: "Paris", delay: 0.2}
      - {model: flaky, fail: 503, times: 1}
      - {model: judge, json: {"score": 7}}
      - {model: tooly, tool_calls: [{name: get_weather, arguments: {city: Paris}}]}

Pytest: ``pytest_plugins = ["langgraph_moa.testing.pytest_plugin"]`` gives a ``model_server``
fixture (a started :class:`ModelServer`, fresh for every test).
"""

from langgraph_moa.testing.rules import (
    FAILURES,
    TEMPLATE_FIELDS,
    ChatRequest,
    Reply,
    Rule,
    count_tokens,
    sample_json,
)
from langgraph_moa.testing.server import ModelServer, ModelServerClient

__all__ = [
    "FAILURES",
    "TEMPLATE_FIELDS",
    "ChatRequest",
    "ModelServer",
    "ModelServerClient",
    "Reply",
    "Rule",
    "count_tokens",
    "sample_json",
]
