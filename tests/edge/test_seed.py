"""The seed article's scenario through real edges, nodes and etcd, as a browser would run it."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from duro.client.connection import NodeConnection

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.receive_str(), timeout))


async def test_chat_two_clients(examples_cluster):
    url = examples_cluster.edge_url(0)
    room = "/chat/seed-room"
    async with aiohttp.ClientSession() as http:
        alice = await http.ws_connect(f"{url}{room}/websocket?userId=u1&username=alice")
        assert await recv(alice) == {"type": "history", "messages": []}
        # bob joins through the other region's edge: the same room object
        bob = await http.ws_connect(
            f"{examples_cluster.edge_url(1)}{room}/websocket?userId=u2&username=bob")
        assert (await recv(bob))["type"] == "history"
        assert await recv(alice) == {"type": "user_joined", "userId": "u2", "username": "bob",
                                     "userCount": 2}
        await alice.send_str(json.dumps({"type": "message", "content": "hi bob"}))
        for ws in (alice, bob):
            msg = await recv(ws)
            assert msg["type"] == "message"
            assert {k: msg["message"][k] for k in ("userId", "username", "content")} == {
                "userId": "u1", "username": "alice", "content": "hi bob"}
        await bob.send_str(json.dumps({"type": "typing"}))
        assert await recv(alice) == {"type": "typing", "userId": "u2", "username": "bob"}
        await bob.send_str(json.dumps({"type": "message", "content": "hello alice"}))
        assert (await recv(alice))["message"]["content"] == "hello alice"
        assert (await recv(bob))["message"]["content"] == "hello alice"

        # history on join, and the HTTP endpoint
        carol = await http.ws_connect(f"{url}{room}/websocket?userId=u3&username=carol")
        hist = await recv(carol)
        assert [m["content"] for m in hist["messages"]] == ["hi bob", "hello alice"]
        for ws in (alice, bob):
            assert (await recv(ws))["type"] == "user_joined"
        async with http.get(f"{url}{room}/messages") as r:
            assert r.status == 200
            assert [m["content"] for m in (await r.json())["messages"]] == ["hi bob", "hello alice"]

        # user_left when a client disconnects (promptly: the socket does not linger)
        await bob.close()
        for ws in (alice, carol):
            assert await recv(ws, 5.0) == {"type": "user_left", "userId": "u2", "username": "bob",
                                           "userCount": 2}
        # missing parameters: the article's 400
        async with http.get(f"{url}{room}/websocket?userId=u9",
                            headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                     "Sec-WebSocket-Version": "13"}) as r:
            assert r.status == 400 and await r.text() == "Missing userId or username"
        await alice.close()
        await carol.close()


async def test_counter_broadcast_to_all_sockets(examples_cluster):
    urls = [examples_cluster.edge_url(0), examples_cluster.edge_url(1)]
    async with aiohttp.ClientSession() as http:
        socks = [await http.ws_connect(f"{urls[i % 2]}/counter/bcast/websocket") for i in range(6)]
        for ws in socks:
            assert await recv(ws) == {"type": "current", "value": 0}
        await socks[3].send_str(json.dumps({"type": "increment"}))
        for ws in socks:
            assert await recv(ws) == {"type": "update", "value": 1}
        async with http.get(f"{urls[1]}/counter/bcast/increment") as r:
            assert json.loads(await r.text()) == {"value": 2}
        async with http.get(f"{urls[0]}/counter/bcast/get") as r:
            assert json.loads(await r.text()) == {"value": 2}
        for ws in socks:
            await ws.close()


async def test_counter_equals_acknowledged_increments(examples_cluster):
    urls = [examples_cluster.edge_url(0), examples_cluster.edge_url(1)]
    acked = 0
    values: list[int] = []

    async def client(i: int) -> None:
        nonlocal acked
        async with aiohttp.ClientSession() as http:
            for _ in range(25):
                async with http.get(f"{urls[i % 2]}/counter/concurrent/increment") as r:
                    assert r.status == 200
                    values.append(json.loads(await r.text())["value"])
                    acked += 1

    await asyncio.gather(*(client(i) for i in range(64)))
    assert acked == 64 * 25
    assert sorted(values) == list(range(1, acked + 1))  # each increment acknowledged exactly once
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{urls[0]}/counter/concurrent/get") as r:
            assert json.loads(await r.text()) == {"value": acked}


async def test_calls_carry_the_edge_region(examples_cluster):
    """A new object is placed in the region of the edge that first called it."""
    from duro.client.admin import where

    for i, region in enumerate(("us-east", "eu-west")):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{examples_cluster.edge_url(i)}/counter/placed-{region}/get") as r:
                assert r.status == 200
        info = await where(examples_cluster.etcd.endpoint, "duro", str(examples_cluster.app),
                           "COUNTER", f"placed-{region}")
        assert info["region"] == region, info


async def test_edge_health_and_metrics(examples_cluster):
    url = examples_cluster.edge_url(0)
    async with aiohttp.ClientSession() as http:
        admin = examples_cluster.edge_admin_url(0)
        async with http.get(f"{admin}/health") as r:
            body = await r.json()
            assert body["region"] == "us-east" and body["status"] == "serving"
            assert all(body["nodes"].values()) and len(body["nodes"]) == 2
        async with http.get(f"{admin}/metrics") as r:
            text = await r.text()
            for name in ("duro_edge_http_requests_total", "duro_edge_websocket_connections",
                         "duro_edge_upstream_latency_seconds_bucket",
                         "duro_edge_websocket_frames_in_total"):
                assert name in text
    # The access log: one line per request, with the request line, status and duration.
    marker = "/counter/access-log-probe/get?q=1"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}{marker}") as r:
            assert r.status == 200
        async with http.get(f"{url}/nobinding/x/get") as r:
            assert r.status == 404
    log_path = examples_cluster.edges[0].log_path
    for _ in range(100):
        lines = log_path.read_text(errors="replace").splitlines()
        hits = [ln for ln in lines if "duro.edge.access" in ln and marker in ln]
        misses = [ln for ln in lines if "duro.edge.access" in ln and "/nobinding/x/get" in ln]
        if hits and misses:
            break
        await asyncio.sleep(0.05)
    assert len(hits) == 1 and len(misses) == 1, lines[-5:]
    assert f'"GET {marker} HTTP/1.1" 200 ' in hits[0] and " INFO " in hits[0]
    assert '"GET /nobinding/x/get HTTP/1.1" 404 ' in misses[0]
    for spec in examples_cluster.nodes:  # nodes still healthy
        conn = NodeConnection(spec.address)
        try:
            assert (await conn.health()).status == "serving"
        finally:
            await conn.close()
