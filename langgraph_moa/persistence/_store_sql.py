"""Tables and SQL of the long-term memory store (:mod:`.store`), one code path for the
sync and the async store: every function takes a sync :class:`~sqlalchemy.Connection`
(the async store runs them through ``AsyncConnection.run_sync``).

Namespaces are stored as their labels joined by ``.`` (LangGraph forbids ``.`` in a
label), values as JSON text, embeddings as little-endian float32 bytes. Filters and
cosine similarity are evaluated in Python over the rows SQL narrowed down by
namespace prefix, so they mean the same on SQLite, PostgreSQL and MySQL/MariaDB.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.types import TypeEngine

__all__ = ["items", "vectors"]

PREFIX_MAX = 384
KEY_MAX = 256
FIELD_MAX = 120  # prefix + key + field = 760 chars: under MySQL's 3072-byte key limit


def _text_key(length: int) -> TypeEngine[str]:
    """A key column compared byte-wise on every backend (case- and accent-sensitive)."""
    return (
        sa.String(length)
        .with_variant(sa.String(length, collation="C"), "postgresql")
        .with_variant(
            mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
        )
    )


def _ts() -> TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


_ARGS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
}
metadata = sa.MetaData()
items = sa.Table(
    "moa_store",
    metadata,
    sa.Column("prefix", _text_key(PREFIX_MAX), primary_key=True),
    sa.Column("key", _text_key(KEY_MAX), primary_key=True),
    sa.Column(
        "value", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False
    ),
    sa.Column("created_at", _ts(), nullable=False),
    sa.Column("updated_at", _ts(), nullable=False),
    sa.Column("expires_at", _ts(), nullable=True),
    sa.Column("ttl_minutes", sa.Double, nullable=True),
    sa.Index("ix_moa_store_expires_at", "expires_at"),
    sa.Index("ix_moa_store_updated_at", "updated_at"),
    **_ARGS,
)
vectors = sa.Table(
    "moa_store_vectors",
    metadata,
    sa.Column("prefix", _text_key(PREFIX_MAX), primary_key=True),
    sa.Column("key", _text_key(KEY_MAX), primary_key=True),
    sa.Column("field", _text_key(FIELD_MAX), primary_key=True),
    sa.Column(
        "embedding",
        sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
        nullable=False,
    ),
    **_ARGS,
)


def create_tables(conn: Connection) -> None:
    """Migration step 1 of the ``store`` component."""
    items.create(conn, checkfirst=True)
    vectors.create(conn, checkfirst=True)


# -- encoding -------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def join_ns(namespace: Sequence[str]) -> str:
    return ".".join(namespace)


def split_ns(prefix: str) -> tuple[str, ...]:
    return tuple(prefix.split(".")) if prefix else ()


def pack(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack(raw: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def dumps(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


def loads(text: str) -> dict[str, Any]:
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}


# -- queries --------------------------------------------------------------------------


def under(column: Any, namespace: Sequence[str]) -> Any:
    """``column`` is the namespace ``namespace`` or one below it."""
    if not namespace:
        return sa.true()
    joined = join_ns(namespace)
    return sa.or_(column == joined, column.startswith(joined + ".", autoescape=True))


def live(now_: datetime, omit_expired: bool) -> Any:
    if not omit_expired:
        return sa.true()
    return sa.or_(items.c.expires_at.is_(None), items.c.expires_at > now_)


def get_rows(
    conn: Connection, keys: Sequence[tuple[str, str]], omit_expired: bool
) -> dict[tuple[str, str], sa.Row[Any]]:
    """The rows of ``(prefix, key)`` pairs, by pair."""
    found: dict[tuple[str, str], sa.Row[Any]] = {}
    wanted = sorted(set(keys))
    t = now()
    for i in range(0, len(wanted), 200):
        chunk = wanted[i : i + 200]
        cond = sa.or_(*(sa.and_(items.c.prefix == p, items.c.key == k) for p, k in chunk))
        for row in conn.execute(sa.select(items).where(cond, live(t, omit_expired))):
            found[(row.prefix, row.key)] = row
    return found


def refresh(conn: Connection, rows: Iterable[sa.Row[Any]]) -> None:
    """Restart the TTL clock of ``rows`` that have a TTL."""
    t = now()
    params = [
        {"p": r.prefix, "k": r.key, "e": t + timedelta(minutes=r.ttl_minutes)}
        for r in rows
        if r.ttl_minutes is not None
    ]
    if params:
        stmt = (
            items.update()
            .where(items.c.prefix == sa.bindparam("p"), items.c.key == sa.bindparam("k"))
            .values(expires_at=sa.bindparam("e"))
        )
        conn.execute(stmt, params)


def scan(
    conn: Connection, namespace: Sequence[str], omit_expired: bool, batch: int = 500
) -> Iterator[sa.Row[Any]]:
    """The items under ``namespace``, most recently updated first, fetched in pages."""
    query = (
        sa.select(items)
        .where(under(items.c.prefix, namespace), live(now(), omit_expired))
        .order_by(items.c.updated_at.desc(), items.c.prefix, items.c.key)
    )
    offset = 0
    while True:
        rows = conn.execute(query.limit(batch).offset(offset)).all()
        yield from rows
        if len(rows) < batch:
            return
        offset += batch


def vectors_of(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[bytes]]:
    found: dict[tuple[str, str], list[bytes]] = {}
    for i in range(0, len(keys), 200):
        chunk = keys[i : i + 200]
        cond = sa.or_(*(sa.and_(vectors.c.prefix == p, vectors.c.key == k) for p, k in chunk))
        for row in conn.execute(
            sa.select(vectors.c.prefix, vectors.c.key, vectors.c.embedding).where(cond)
        ):
            found.setdefault((row.prefix, row.key), []).append(row.embedding)
    return found


def upsert(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]], update: Sequence[str]
) -> None:
    backend = conn.dialect.name
    if backend in ("postgresql", "sqlite"):
        ins = (postgresql if backend == "postgresql" else sqlite).insert(table)
        stmt: Any = ins.on_conflict_do_update(
            index_elements=[c.name for c in table.primary_key.columns],
            set_={c: ins.excluded[c] for c in update},
        )
    else:
        mins = mysql.insert(table)
        stmt = mins.on_duplicate_key_update({c: mins.inserted[c] for c in update})
    conn.execute(stmt, rows)


def put_rows(
    conn: Connection,
    puts: Sequence[tuple[str, str, dict[str, Any] | None, float | None]],
    embedded: dict[tuple[str, str], list[tuple[str, list[float]]]],
) -> None:
    """Write ``(prefix, key, value or None to delete, ttl minutes)``; replace the vectors
    of every written item by ``embedded[(prefix, key)]``."""
    t = now()
    for i in range(0, len(puts), 200):
        chunk = puts[i : i + 200]
        cond = sa.or_(*(sa.and_(vectors.c.prefix == p, vectors.c.key == k) for p, k, _, _ in chunk))
        conn.execute(vectors.delete().where(cond))
        gone = [(p, k) for p, k, v, _ in chunk if v is None]
        if gone:
            cond = sa.or_(*(sa.and_(items.c.prefix == p, items.c.key == k) for p, k in gone))
            conn.execute(items.delete().where(cond))
    rows = [
        {
            "prefix": p,
            "key": k,
            "value": dumps(v),
            "created_at": t,
            "updated_at": t,
            "expires_at": None if ttl is None else t + timedelta(minutes=ttl),
            "ttl_minutes": ttl,
        }
        for p, k, v, ttl in puts
        if v is not None
    ]
    if rows:
        upsert(conn, items, rows, ["value", "updated_at", "expires_at", "ttl_minutes"])
    vec_rows = [
        {"prefix": p, "key": k, "field": field[:FIELD_MAX], "embedding": pack(vec)}
        for (p, k), fields in embedded.items()
        for field, vec in fields
    ]
    if vec_rows:
        upsert(conn, vectors, vec_rows, ["embedding"])


def sweep(conn: Connection) -> int:
    """Delete the expired items and their vectors; the number of items deleted."""
    t = now()
    expired = sa.select(items.c.prefix).where(
        items.c.prefix == vectors.c.prefix,
        items.c.key == vectors.c.key,
        items.c.expires_at.is_not(None),
        items.c.expires_at <= t,
    )
    conn.execute(vectors.delete().where(expired.exists()))
    result = conn.execute(
        items.delete().where(items.c.expires_at.is_not(None), items.c.expires_at <= t)
    )
    return int(result.rowcount or 0)


def prefixes(conn: Connection, namespace: Sequence[str], omit_expired: bool) -> list[str]:
    query = (
        sa.select(items.c.prefix)
        .where(under(items.c.prefix, namespace), live(now(), omit_expired))
        .distinct()
    )
    return [r[0] for r in conn.execute(query)]


# -- Python-side evaluation -------------------------------------------------------------


_FILTER_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_filter(filter_: dict[str, Any]) -> None:
    """Refuse filter keys the official stores refuse (letters, digits, ``_ . -``)."""
    for key in filter_:
        if not isinstance(key, str) or not _FILTER_KEY.match(key):
            raise ValueError(
                f"Invalid filter key: {key!r}. Filter keys must contain only alphanumeric "
                "characters, underscores, dots, and hyphens."
            )


def matches(value: Any, filter_: dict[str, Any]) -> bool:
    """Whether a stored value matches a search filter (LangGraph's semantics: equality,
    nested dicts, or ``$eq``/``$ne``/``$gt``/``$gte``/``$lt``/``$lte`` operators; a
    dotted key ``a.b`` looks into nested objects)."""
    if not isinstance(value, dict):
        return False
    return all(_compare(_at(value, k), v) for k, v in filter_.items())


def _at(value: dict[str, Any], key: str) -> Any:
    if key in value:
        return value[key]
    node: Any = value
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _compare(item: Any, want: Any) -> bool:
    if isinstance(want, dict):
        if any(k.startswith("$") for k in want):
            return all(_operator(item, op, arg) for op, arg in want.items())
        return isinstance(item, dict) and all(_compare(item.get(k), v) for k, v in want.items())
    if isinstance(want, (list, tuple)):
        return (
            isinstance(item, (list, tuple))
            and len(item) == len(want)
            and all(_compare(i, w) for i, w in zip(item, want, strict=True))
        )
    return bool(item == want)


def _operator(item: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return bool(item == arg)
    if op == "$ne":
        return bool(item != arg)
    if op not in ("$gt", "$gte", "$lt", "$lte"):
        raise ValueError(f"unsupported filter operator {op!r} (use $eq $ne $gt $gte $lt $lte)")
    try:
        a, b = float(item), float(arg)
    except (TypeError, ValueError):
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def cosine(query: Sequence[float], vector: Sequence[float], qnorm: float) -> float:
    dot = sum(a * b for a, b in zip(query, vector, strict=False))
    norm = math.sqrt(sum(b * b for b in vector))
    return dot / (qnorm * norm) if qnorm > 0 and norm > 0 else 0.0
