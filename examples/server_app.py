"""The MoA HTTP service as an ASGI app: the LangGraph Server API over your specs.

Any LangGraph client talks to it: the ``langgraph-sdk`` Python and JS clients, Agent Chat
UI, LangGraph Studio. Each spec is an assistant, addressed by its name.

    export MOA_API_KEYS=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    uvicorn examples.server_app:app --host 0.0.0.0 --port 8123
    # or: python examples/server_app.py

    from langgraph_sdk import get_client
    client = get_client(url="http://localhost:8123", api_key=os.environ["MOA_API_KEYS"])
    thread = await client.threads.create()
    print(await client.runs.wait(thread["thread_id"], "team", input={"task": "..."}))

Settings come from the environment: ``MOA_SPECS`` (comma-separated spec files, default the
team example), ``MOA_DB_URL`` (the store: SQLite, PostgreSQL or MySQL/MariaDB), and the
API keys (``MOA_API_KEYS`` or ``MOA_API_KEYS_FILE``). ``moa serve`` does the same from
the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

from langgraph_moa.server import ServerOptions, create_app

SPECS = os.environ.get("MOA_SPECS") or str(Path(__file__).with_name("specs") / "team.yaml")

app = create_app(
    SPECS.split(","),
    db_url=os.environ.get("MOA_DB_URL", "sqlite:///moa-server.sqlite"),
    options=ServerOptions(max_concurrency=int(os.environ.get("MOA_MAX_CONCURRENCY", "8"))),
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("MOA_PORT", "8123")))
