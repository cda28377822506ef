"""The serializer of the checkpointer: LangGraph's msgpack serde, strict, optionally encrypted.

Deserialization only rebuilds types that are known to be safe (LangGraph's
``SAFE_MSGPACK_TYPES``: datetimes, UUIDs, LangChain messages, ...) plus the types the
caller registers: pydantic models, dataclasses and enums of the graph state come back as
themselves, not as dicts, once registered. There is no pickle fallback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

__all__ = ["AES_KEY_ENV", "AllowlistEntry", "make_serde", "schema_allowlist"]

AES_KEY_ENV = "LANGGRAPH_AES_KEY"

AllowlistEntry = type | tuple[str, ...]


def schema_allowlist(*schemas: Any) -> set[tuple[str, ...]]:
    """The (module, name) of every pydantic model, dataclass and enum reachable from ``schemas``.

    Pass the graph's state schema (a TypedDict, pydantic model or dataclass) to register
    every type nested in it, e.g. ``SQLAlchemySaver(engine,
    serde_allowlist=schema_allowlist(State))``. LangChain message types are included.
    """
    from langgraph._internal._serde import build_serde_allowlist

    return build_serde_allowlist(schemas=list(schemas))


def _normalize(entries: Iterable[AllowlistEntry]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for entry in entries:
        if isinstance(entry, type):
            out.append((entry.__module__, entry.__qualname__))
        elif (
            isinstance(entry, tuple) and len(entry) >= 2 and all(isinstance(p, str) for p in entry)
        ):
            out.append(entry)
        else:
            raise TypeError(
                f"serde_allowlist entry {entry!r} is neither a class nor a "
                "(module, name) tuple of strings"
            )
    return out


def make_serde(
    allowlist: Iterable[AllowlistEntry] = (), *, encrypt: bool | str | bytes = False
) -> SerializerProtocol:
    """LangGraph's ``JsonPlusSerializer`` in strict mode, allowing ``allowlist`` too.

    ``encrypt=True`` wraps it in LangGraph's AES ``EncryptedSerializer`` with the key in
    ``$LANGGRAPH_AES_KEY`` (16, 24 or 32 bytes; needs the ``crypto`` extra);
    ``encrypt=<key>`` uses that key. Stored values written without encryption stay
    readable.
    """
    inner = JsonPlusSerializer(allowed_msgpack_modules=_normalize(allowlist) or None)
    if encrypt is False:
        return inner
    if encrypt is True:
        raw = os.environ.get(AES_KEY_ENV)
        if not raw:
            raise ValueError(
                f"encrypt=True needs an AES key in ${AES_KEY_ENV} (16, 24 or 32 bytes); "
                f"set it, e.g. export {AES_KEY_ENV}=$(openssl rand -hex 16)"
            )
        key = raw.encode()
    else:
        key = encrypt.encode() if isinstance(encrypt, str) else bytes(encrypt)
    if len(key) not in (16, 24, 32):
        raise ValueError(
            f"the AES key is {len(key)} bytes long; it must be 16, 24 or 32 bytes "
            f"(check ${AES_KEY_ENV})"
        )
    try:
        return EncryptedSerializer.from_pycryptodome_aes(inner, key=key)
    except ImportError:
        raise ImportError(
            "encryption needs pycryptodome: pip install 'langgraph-moa[crypto]'"
        ) from None
