"""An object with sockets moves to another region (live migration): its sockets stay connected,
the edge re-binds them to the new owner, and a broadcast there reaches every one of them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from duro.client.admin import migrate, where

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict:
    return json.loads(await asyncio.wait_for(ws.receive_str(), 10))


async def test_sockets_follow_a_migrated_object(examples_cluster):
    c = examples_cluster
    async with aiohttp.ClientSession() as http:
        socks = [await http.ws_connect(f"{c.edge_url(i % 2)}/counter/moving/websocket")
                 for i in range(6)]
        for ws in socks:
            assert await recv(ws) == {"type": "current", "value": 0}
        await socks[0].send_str(json.dumps({"type": "increment"}))
        for ws in socks:
            assert await recv(ws) == {"type": "update", "value": 1}
        before = await where(c.etcd.endpoint, c.cluster, c.app, "COUNTER", "moving")
        target = "eu-west" if before["region"] == "us-east" else "us-east"
        res = await migrate(c.etcd.endpoint, c.cluster, c.app, "COUNTER", "moving",
                            to_region=target)
        assert res["outcome"] == "released", res
        after = await where(c.etcd.endpoint, c.cluster, c.app, "COUNTER", "moving")
        assert after["region"] == target and after["node"] != before["node"]
        assert all(not ws.closed for ws in socks)
        await asyncio.sleep(0.5)  # the edges' directory watch sees the move
        await socks[3].send_str(json.dumps({"type": "increment"}))  # one socket speaks...
        for ws in socks:  # ...and all of them, silent ones included, hear the new owner
            assert await recv(ws) == {"type": "update", "value": 2}
        for ws in socks:
            await ws.close()
