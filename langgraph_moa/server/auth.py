"""API keys: who is calling, as a tenant id that owns the threads it creates.

Keys come from ``MOA_API_KEYS`` (comma-separated) and/or a file (``MOA_API_KEYS_FILE`` or
``--api-keys-file``: one key per line, ``#`` comments). A request carries its key as
``x-api-key: <key>`` (what ``langgraph-sdk`` sends for ``api_key=``) or
``Authorization: Bearer <key>``. Only SHA-256 digests of the keys are kept in memory and
compared in constant time. The tenant of a key is ``key-`` plus the first 16 hex digits
of its digest: stable across restarts, and it reveals nothing of the key.

An embedding application with its own identity passes ``authenticate=`` to
:func:`langgraph_moa.server.create_app`: an async callable that takes the request and
returns the tenant id, or raises ``HTTPException(401)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from fastapi import HTTPException, Request

__all__ = [
    "Authenticator",
    "KeyAuth",
    "NoAuth",
    "load_api_keys",
    "tenant_of",
]

Authenticator = Callable[[Request], Awaitable[str | None]]
"""Resolves a request to its tenant id (``None``: the single tenant of an open server)."""

MIN_KEY_LENGTH = 16


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def tenant_of(key: str) -> str:
    """The tenant id of an API key."""
    return "key-" + _digest(key).hex()[:16]


def load_api_keys(keys: str | None = None, keys_file: str | Path | None = None) -> list[str]:
    """API keys from a comma-separated string and/or a file; environment by default
    (``MOA_API_KEYS``, ``MOA_API_KEYS_FILE``). Raises ``ValueError`` for a short key."""
    keys = keys if keys is not None else os.environ.get("MOA_API_KEYS")
    keys_file = keys_file if keys_file is not None else os.environ.get("MOA_API_KEYS_FILE")
    found = [k.strip() for k in (keys or "").split(",") if k.strip()]
    if keys_file:
        path = Path(keys_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read the API keys file {path}: {exc.strerror}") from None
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                if len(line) < MIN_KEY_LENGTH:
                    raise ValueError(
                        f"{path}:{number}: API key is shorter than {MIN_KEY_LENGTH} characters"
                    )
                found.append(line)
    for key in found:
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(
                f"an API key in MOA_API_KEYS is shorter than {MIN_KEY_LENGTH} characters; "
                "use long random keys (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)"
            )
    return list(dict.fromkeys(found))


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


class KeyAuth:
    """Accepts the configured keys; each key is its own tenant."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._tenants = {_digest(k): tenant_of(k) for k in keys}
        if not self._tenants:
            raise ValueError(
                "no API keys configured: set MOA_API_KEYS or --api-keys-file, or run "
                "`moa serve --no-auth` on 127.0.0.1"
            )

    async def __call__(self, request: Request) -> str | None:
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                key = token.strip()
        if not key:
            raise _unauthorized(
                "missing API key: send `x-api-key: <key>` or `Authorization: Bearer <key>`"
            )
        digest = _digest(key)
        tenant = None
        for known, name in self._tenants.items():
            if hmac.compare_digest(known, digest):
                tenant = name
        if tenant is None:
            raise _unauthorized("invalid API key")
        return tenant


class NoAuth:
    """Everyone is the one tenant (``None``): only for a server on 127.0.0.1."""

    async def __call__(self, request: Request) -> str | None:
        return None
