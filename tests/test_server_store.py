"""``/store`` of ``moa serve`` through ``langgraph_sdk``'s store client, on three databases."""

from __future__ import annotations

from pathlib import Path

import httpx
import sqlalchemy as sa
from langgraph_sdk import get_client

from langgraph_moa.persistence.engines import get_engine, release_engine
from langgraph_moa.testing import ModelServer
from tests.test_server_support import KEY_A, KEY_B, WAIT, moa_spec, serve


async def test_store_api_and_tenants(db_url: str, tmp_path: Path) -> None:
    with ModelServer() as srv:
        for served in serve(tmp_path, [moa_spec(srv)], db_url, keys=[KEY_A, KEY_B]):
            a = get_client(url=served.url, api_key=KEY_A)
            b = get_client(url=served.url, api_key=KEY_B)
            await a.store.put_item(["memory", "alice"], "food", {"likes": "pizza", "n": 1})
            await a.store.put_item(["memory", "alice"], "drink", {"likes": "tea", "n": 2})
            await a.store.put_item(["memory", "bob"], "food", {"likes": "pasta", "n": 3}, ttl=60)
            await b.store.put_item(["memory", "alice"], "food", {"likes": "sushi", "n": 9})

            item = await a.store.get_item(["memory", "alice"], "food")
            assert item["namespace"] == ["memory", "alice"] and item["key"] == "food"
            assert item["value"] == {"likes": "pizza", "n": 1}
            assert item["created_at"] and item["updated_at"]
            # the same namespace and key are another item for tenant B
            other = await b.store.get_item(["memory", "alice"], "food")
            assert other["value"] == {"likes": "sushi", "n": 9}

            found = await a.store.search_items(["memory"], filter={"n": {"$gte": 2}})
            assert sorted(i["value"]["n"] for i in found["items"]) == [2, 3]
            assert all(i["namespace"][0] == "memory" for i in found["items"])
            page = await a.store.search_items(["memory", "alice"], limit=1, offset=1)
            assert [i["key"] for i in page["items"]] == ["food"]  # newest first: drink, food
            assert (await b.store.search_items([]))["items"][0]["value"]["likes"] == "sushi"
            assert len((await b.store.search_items([]))["items"]) == 1

            spaces = await a.store.list_namespaces(prefix=["memory"])
            assert spaces["namespaces"] == [["memory", "alice"], ["memory", "bob"]]
            assert (await a.store.list_namespaces(max_depth=1))["namespaces"] == [["memory"]]
            assert (await a.store.list_namespaces(suffix=["bob"]))["namespaces"] == [
                ["memory", "bob"]
            ]
            assert (await b.store.list_namespaces())["namespaces"] == [["memory", "alice"]]

            # an expired item is never returned (ttl in minutes; 0: expired at once)
            await a.store.put_item(["tmp"], "gone", {"v": 1}, ttl=0)
            assert await a.store.get_item(["tmp"], "gone") is None
            assert (await a.store.search_items(["tmp"]))["items"] == []
            await a.store.delete_item(["tmp"], "gone")

            await b.store.delete_item(["memory", "alice"], "food")
            assert await b.store.get_item(["memory", "alice"], "food") is None
            assert (await a.store.get_item(["memory", "alice"], "food"))["value"]["n"] == 1

            # bad input: 422 naming the problem, nothing stored
            r = httpx.put(
                f"{served.url}/store/items",
                json={"namespace": ["a.b"], "key": "k", "value": {}},
                headers={"x-api-key": KEY_A},
                timeout=WAIT,
            )
            assert r.status_code == 422 and "a.b" in r.text
            r = httpx.put(
                f"{served.url}/store/items",
                json={"namespace": ["x"], "key": "k", "value": [1], "extra": 1},
                headers={"x-api-key": KEY_A},
                timeout=WAIT,
            )
            assert r.status_code == 422 and "value" in r.text and "extra" in r.text
            r = httpx.post(
                f"{served.url}/store/items/search",
                json={"namespace_prefix": ["memory"], "filter": {"a') OR 1=1 --": 1}},
                headers={"x-api-key": KEY_A},
                timeout=WAIT,
            )
            assert r.status_code == 422 and "Invalid filter key" in r.text
            r = httpx.post(f"{served.url}/store/namespaces", json={}, headers={}, timeout=WAIT)
            assert r.status_code == 401
            assert (await a.store.list_namespaces(prefix=["x"]))["namespaces"] == []

            # what is stored: the tenant's label in front, values as JSON text
            engine = get_engine(db_url)
            try:
                with engine.connect() as conn:
                    rows = conn.execute(
                        sa.text("SELECT prefix, value FROM moa_store ORDER BY prefix, value")
                    ).all()
            finally:
                release_engine(engine)
            assert {p.split(".", 1)[1] for p, _ in rows} == {"memory.alice", "memory.bob"}
            assert len({p.split(".", 1)[0] for p, _ in rows}) == 1  # only A's items are left
            assert rows[0][0].startswith("~key-")
            assert '"likes":"pizza"' in "".join(v for _, v in rows).replace(" ", "")
