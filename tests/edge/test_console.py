"""The console's HTTP side on a real cluster (docs/console.md): the live feed over server-sent
events, the inspector's answers and errors, and the admin actions' authentication."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(180)]


async def read_sse(resp: aiohttp.ClientResponse, want: str, timeout: float = 20.0) -> dict:
    """The data of the next event named ``want``."""
    async def read() -> dict:
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == want:
                return json.loads(line[6:])
        raise AssertionError("stream ended")
    return await asyncio.wait_for(read(), timeout)


async def test_feed_pushes_snapshots_and_changes(examples_cluster):
    c = examples_cluster
    base = c.edge_admin_url(0) + "/console"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/api/events") as events:
            assert events.headers["Content-Type"].startswith("text/event-stream")
            snap = (await read_sse(events, "snapshot"))["snapshot"]
            assert {n["node_id"] for n in snap["nodes"]} == {n.name for n in c.nodes}
            assert all(n["healthy"] and n["sample"]["serving"] for n in snap["nodes"])
            assert [r["region"] for r in snap["regions"]] == sorted(c.regions)
            assert snap["leader"]["id"].startswith("placement")
            # A change made elsewhere (drain through the console's action) arrives as an event.
            node = c.nodes[0].name
            hdr = {"Authorization": f"Bearer {c.console_token}"}
            async with s.post(f"{base}/api/undrain", json={"node": node}, headers=hdr) as r:
                assert r.status == 200 and (await r.json())["draining"] is False
            async with s.post(f"{base}/api/drain", json={"node": node}, headers=hdr) as r:
                assert r.status == 202, await r.text()
            ev = await read_sse(events, "event")
            while ev["kind"] != "draining":
                ev = await read_sse(events, "event")
            assert ev["node"] == node
            async with s.post(f"{base}/api/undrain", json={"node": node}, headers=hdr) as r:
                assert r.status == 200 and (await r.json())["draining"] is False
            ev = await read_sse(events, "event")
            while ev["kind"] != "undrained":
                ev = await read_sse(events, "event")
            snap = (await read_sse(events, "snapshot"))["snapshot"]
            assert snap["draining_nodes"] == []


async def test_actions_need_the_console_admin_token(examples_cluster):
    c = examples_cluster
    base = c.edge_admin_url(0) + "/console/api"
    body = {"binding": "COUNTER", "name": "x", "to_region": "eu-west"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/session") as r:
            assert (await r.json())["actions"] is True
        for headers in ({}, {"Authorization": "Bearer not-the-token-at-all-0123"},
                        {"Authorization": f"Basic {c.console_token}"},
                        {"Authorization": f"Bearer {c.gateway_token}"}):  # a Gateway token: no
            async with s.post(f"{base}/migrate", json=body, headers=headers) as r:
                assert r.status == 401, (headers, await r.text())
                assert (await r.json())["error"]["code"] == "unauthenticated"
        ok = {"Authorization": f"Bearer {c.console_token}"}
        for bad, why in (({"binding": "NOPE", "name": "x", "to_region": "eu-west"}, "NOPE"),
                         ({"binding": "COUNTER", "id": "zz", "to_region": "eu-west"}, "hex"),
                         ({"binding": "COUNTER", "name": "never-called", "to_region": "eu-west"},
                          "never called"),
                         ({"binding": "COUNTER", "name": "x"}, "to_node")):
            async with s.post(f"{base}/migrate", json=bad, headers=ok) as r:
                assert r.status == 400 and why in (await r.json())["error"]["message"]
        async with s.post(f"{base}/migrate", data=b"[not json", headers=ok) as r:
            assert r.status == 400
        async with s.post(f"{base}/migrate", data=b"{" + b" " * 10_000 + b"}", headers=ok) as r:
            assert r.status == 413
        async with s.post(f"{base}/drain", json={"node": "no-such-node"}, headers=ok) as r:
            assert r.status == 400 and "not live" in await r.text()
        async with s.put(f"{base}/migrate", json=body, headers=ok) as r:
            assert r.status == 405


async def test_inspector_answers_and_errors(examples_cluster):
    c = examples_cluster
    base = c.edge_admin_url(0) + "/console"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{c.edge_url(0)}/counter/inspect-me/increment") as r:
            assert r.status == 200
        async with s.get(f"{base}/api/object", params={"binding": "COUNTER",
                                                       "name": "inspect-me"}) as r:
            o = await r.json()
        assert o["found"] and o["node"] in {n.name for n in c.nodes}
        assert o["state"]["keys"] == 1 and o["state"]["history"] == []
        async with s.get(f"{base}/api/object", params={"id": o["id"]}) as r:  # by id
            assert (await r.json())["node"] == o["node"]
        async with s.get(f"{base}/api/object", params={"binding": "COUNTER",
                                                       "name": "nobody-called-me"}) as r:
            assert r.status == 200 and (await r.json())["found"] is False
        for params in ({"binding": "COUNTER", "id": "12"}, {"binding": "NOPE", "name": "a"},
                       {"binding": "COUNTER"}):
            async with s.get(f"{base}/api/object", params=params) as r:
                assert r.status == 400
            async with s.get(f"{base}/api/object/events", params=params) as r:
                assert r.status == 400
        async with s.get(f"{base}/api/object/events", params={"id": o["id"]}) as r:
            assert (await read_sse(r, "object"))["id"] == o["id"]
        for path in ("/static/../../etc/passwd", "/static/.hidden.js", "/static/nope.js",
                     "/nothing"):
            async with s.get(base + path) as r:
                assert r.status == 404
        async with s.get(f"{base}/") as r:
            assert r.status == 200 and "default-src 'self'" in r.headers[
                "Content-Security-Policy"]
