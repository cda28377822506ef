"""``python -m langgraph_moa.testing``: run the test model server standalone."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from langgraph_moa.testing.server import ModelServer


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; print the base URL first (one line on stdout)."""
    parser = argparse.ArgumentParser(
        prog="python -m langgraph_moa.testing",
        description="Scripted OpenAI-compatible model server for tests and benches.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): an ephemeral port")
    parser.add_argument("--script", help="JSON or YAML script file of rules")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--log", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)
    try:
        srv = ModelServer(
            host=args.host, port=args.port, latency=args.latency, script=args.script, log=args.log
        )
        srv.start()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(srv.base_url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
