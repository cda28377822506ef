"""The serializer of the checkpointer: LangGraph's msgpack serde with a safe allowlist.

What deserializes as itself (everything else comes back as its stored data, e.g. a dict
of fields, with a logged warning; nothing is imported or called for it):

1. LangGraph's ``SAFE_MSGPACK_TYPES``: datetimes, UUID, Decimal, sets, paths, LangChain
   messages and ``Document``, ``Send``/``Command``/``Interrupt``, store items.
2. The classes you register: ``serde_allowlist=[MyModel, ...]`` or
   ``schema_allowlist(State)``, and those LangGraph passes through ``with_allowlist`` when
   it compiles a graph with ``LANGGRAPH_STRICT_MSGPACK=true`` (the graph's schema types).
3. By default also the *state classes already imported* by this process: a class found
   in the ``__dict__`` of an already-imported module (``sys.modules``; nothing is imported
   for it, no module ``__getattr__`` runs), defined there under that name, and a pydantic
   model (v2, or v1 when ``pydantic.v1`` is loaded; LangChain objects are pydantic
   models), a dataclass, an ``Enum`` or a ``NamedTuple``. That is what a graph's state
   holds, and a graph's schema module is imported before its checkpoints are read. Only
   such a class's own constructor runs, with the stored fields (so its validators or
   ``__post_init__``), never a function, builtin or other class (``os.system``,
   ``subprocess.Popen``, ``builtins.eval`` stay data). Turn this off with
   ``make_serde(trust_imported_types=False)``; it is off when ``LANGGRAPH_STRICT_MSGPACK``
   is set.

There is no pickle, in either direction.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
from collections.abc import Iterable
from typing import Any

import pydantic
from langgraph.checkpoint.serde._msgpack import STRICT_MSGPACK_ENABLED
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer, _create_msgpack_ext_hook

from langgraph_moa.persistence.errors import DecryptionError

__all__ = [
    "AES_KEY_ENV",
    "AllowlistEntry",
    "SafeSerializer",
    "imported_state_class",
    "make_serde",
    "schema_allowlist",
]

AES_KEY_ENV = "LANGGRAPH_AES_KEY"

AllowlistEntry = type | tuple[str, ...]

# pydantic's secret types, which LangGraph stores as (module, name, secret)
_ALWAYS = frozenset({("pydantic.types", "SecretStr"), ("pydantic.types", "SecretBytes")})


def schema_allowlist(*schemas: Any) -> set[tuple[str, ...]]:
    """The (module, name) of every pydantic model, dataclass and enum reachable from ``schemas``.

    Pass the graph's state schema (a TypedDict, pydantic model or dataclass) to register
    every type nested in it, e.g. ``SQLAlchemySaver(engine,
    serde_allowlist=schema_allowlist(State))``. LangChain message types are included.
    """
    from langgraph._internal._serde import build_serde_allowlist

    return build_serde_allowlist(schemas=list(schemas))


def _is_state_class(cls: type) -> bool:
    if issubclass(cls, pydantic.BaseModel) or dataclasses.is_dataclass(cls):
        return True
    if issubclass(cls, enum.Enum):
        return True
    if issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        return True  # NamedTuple
    v1 = sys.modules.get("pydantic.v1")
    return v1 is not None and issubclass(cls, v1.BaseModel)


def imported_state_class(module: str, name: str) -> type | None:
    """The class ``module.name`` if rule 3 of this module's docstring admits it, else None.

    Looks only at modules already in ``sys.modules`` and only in their ``__dict__``, so
    calling it never imports or runs anything.
    """
    mod = sys.modules.get(module)
    if mod is None or not isinstance(name, str):
        return None
    cls = getattr(mod, "__dict__", {}).get(name)
    if not isinstance(cls, type):
        return None
    if cls.__module__ != module or cls.__name__ != name:  # a re-export or an alias
        return None
    return cls if _is_state_class(cls) else None


class _Allowlist:
    """The allowlist as LangGraph's msgpack decoder consults it: ``(module, name) in it``."""

    def __init__(self, explicit: frozenset[tuple[str, ...]], trust_imported: bool) -> None:
        self.explicit = explicit | _ALWAYS
        self.trust_imported = trust_imported

    def __contains__(self, key: object) -> bool:
        if key in self.explicit:
            return True
        if not self.trust_imported or not isinstance(key, tuple) or len(key) != 2:
            return False
        module, name = key
        return isinstance(module, str) and imported_state_class(module, name) is not None


def _normalize(entries: Iterable[AllowlistEntry]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for entry in entries:
        if isinstance(entry, type):
            out.append((entry.__module__, entry.__name__))
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


class SafeSerializer(JsonPlusSerializer):
    """LangGraph's ``JsonPlusSerializer`` (same stored format) with this module's allowlist.

    Args:
        allowlist: classes or ``(module, name)`` tuples that deserialize as themselves.
        trust_imported_types: also admit the imported state classes (rule 3 above);
            default: on unless ``LANGGRAPH_STRICT_MSGPACK`` is set.

    Decoding is LangGraph's own msgpack ext hook (``_create_msgpack_ext_hook``, which only
    asks ``(module, name) in allowlist``) given this module's allowlist object, so nested
    values follow the same rules; tests/test_serde.py pins that behaviour.
    """

    def __init__(
        self,
        allowlist: Iterable[AllowlistEntry] = (),
        *,
        trust_imported_types: bool | None = None,
    ) -> None:
        explicit = frozenset(_normalize(allowlist))
        trust = not STRICT_MSGPACK_ENABLED if trust_imported_types is None else trust_imported_types
        self.allowlist = _Allowlist(explicit, trust)
        super().__init__(
            allowed_msgpack_modules=explicit or None,
            __unpack_ext_hook__=_create_msgpack_ext_hook(self.allowlist),  # type: ignore[arg-type]
        )

    @property
    def trust_imported_types(self) -> bool:
        return self.allowlist.trust_imported

    def with_msgpack_allowlist(
        self, extra_allowlist: Iterable[tuple[str, ...] | type]
    ) -> SafeSerializer:
        """A serializer that also admits ``extra_allowlist`` (``saver.with_allowlist``)."""
        extra = frozenset(_normalize(extra_allowlist))
        if extra <= self.allowlist.explicit:
            return self
        return SafeSerializer(
            (self.allowlist.explicit - _ALWAYS) | extra,
            trust_imported_types=self.trust_imported_types,
        )


class _CheckedEncryption(EncryptedSerializer):
    """LangGraph's AES serializer, with a wrong key reported as such (not "MAC check failed")."""

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        try:
            return super().loads_typed(data)
        except ValueError as exc:
            if "MAC check failed" not in str(exc):
                raise
            raise DecryptionError(
                f"cannot decrypt a stored {data[0]!r} value: it was written with another AES "
                f"key (check ${AES_KEY_ENV}) or altered; nothing in the store was changed"
            ) from None


def make_serde(
    allowlist: Iterable[AllowlistEntry] = (),
    *,
    encrypt: bool | str | bytes = False,
    trust_imported_types: bool | None = None,
) -> SerializerProtocol:
    """The saver's default serializer: :class:`SafeSerializer`, optionally encrypted.

    ``encrypt=True`` wraps it in LangGraph's AES ``EncryptedSerializer`` with the key in
    ``$LANGGRAPH_AES_KEY`` (16, 24 or 32 bytes; needs the ``crypto`` extra);
    ``encrypt=<key>`` uses that key. Stored values written without encryption stay
    readable.
    """
    inner = SafeSerializer(allowlist, trust_imported_types=trust_imported_types)
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
        return _CheckedEncryption.from_pycryptodome_aes(inner, key=key)
    except ImportError:
        raise ImportError(
            "encryption needs pycryptodome: pip install 'langgraph-moa[crypto]'"
        ) from None
