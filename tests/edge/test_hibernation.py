"""Hibernation end to end: 1,000 sockets on one object survive its eviction; auto-responses are
answered at the edge without waking it; sends wait for the output gate; closes arrive promptly."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from duro.client import connect
from duro.client.connection import NodeConnection
from tests.cluster.etcd_fixture import assert_eventually

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(180)]


async def active_objects(cluster) -> int:
    total = 0
    for spec in cluster.nodes:
        conn = NodeConnection(spec.address)
        try:
            total += (await conn.health()).active_objects
        finally:
            await conn.close()
    return total


async def room_stats(cluster, name: str) -> dict:
    async with connect(etcd=cluster.etcd.endpoint, app=cluster.app, region="us-east") as c:
        return await c.namespace("ROOM").get_by_name(name).stats()


async def evicted(cluster) -> None:
    async def idle() -> bool:
        return await active_objects(cluster) == 0

    await assert_eventually(idle, timeout=15, interval=0.2, message="objects were not evicted")


async def test_thousand_sockets_survive_eviction(room_cluster):
    url = room_cluster.edge_url(0) + "/room/big"
    n = 1000
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        socks = await asyncio.gather(*(
            http.ws_connect(f"{url}/ws?i={i}&tags=g{i % 10}", max_msg_size=0) for i in range(n)))
        await evicted(room_cluster)  # the room is gone from memory; its sockets are still open
        assert all(not ws.closed for ws in socks)

        await socks[17].send_str("broadcast")  # wakes it: a new instance (constructor again)
        got = await asyncio.gather(*(asyncio.wait_for(ws.receive_str(), 20) for ws in socks))
        msgs = [json.loads(m) for m in got]
        assert [m["att"] for m in msgs] == list(range(n))  # every socket, its own attachment
        assert {m["acts"] for m in msgs} == {2}

        await evicted(room_cluster)
        await socks[3].send_str("broadcast:g3")  # tags survive too
        tagged = [ws for i, ws in enumerate(socks) if i % 10 == 3]
        got = await asyncio.gather(*(asyncio.wait_for(ws.receive_str(), 20) for ws in tagged))
        assert sorted(json.loads(m)["att"] for m in got) == list(range(3, n, 10))
        await socks[0].send_str("count")
        count = json.loads(await asyncio.wait_for(socks[0].receive_str(), 10))
        assert count == {"type": "count", "n": n, "tags": ["g0"]}

        # closing clients reach the object promptly, with its code and the socket's attachment
        await asyncio.gather(*(ws.close(code=4000 + (i % 3)) for i, ws in enumerate(socks[:10])))

        async def closes_seen() -> bool:
            return len((await room_stats(room_cluster, "big"))["closes"]) == 10

        await assert_eventually(closes_seen, timeout=10, message="web_socket_close not delivered")
        stats = await room_stats(room_cluster, "big")
        assert stats["sockets"] == n - 10
        assert stats["closes"]["4"] == [4001, "", True]
        await asyncio.gather(*(ws.close() for ws in socks[10:]))


async def test_auto_response_does_not_wake_the_object(room_cluster):
    url = room_cluster.edge_url(0) + "/room/auto"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{url}/ws?i=1")
        await ws.send_str("auto")
        await ws.send_str("echo-me")
        assert await asyncio.wait_for(ws.receive_str(), 10) == "echo-me"
        before = (await room_stats(room_cluster, "auto"))["acts"]
        await evicted(room_cluster)
        for _ in range(5):
            await ws.send_str("ping")
            assert await asyncio.wait_for(ws.receive_str(), 5) == "pong"
        assert await active_objects(room_cluster) == 0  # answered by the edge, object still asleep
        assert (await room_stats(room_cluster, "auto"))["acts"] == before + 1  # only stats woke it
        await ws.close()


async def test_object_close_send_and_binary(room_cluster):
    url = room_cluster.edge_url(0) + "/room/misc"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{url}/ws?i=5")
        await ws.send_bytes(b"\x00\x01binary")
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == b"\x00\x01binary"
        await ws.send_str("store:v1")  # a send made after a write leaves once it is durable
        assert json.loads(await asyncio.wait_for(ws.receive_str(), 10)) == {
            "type": "stored", "value": "v1"}
        await ws.send_str("close")
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4000
        assert msg.extra == "bye from object"


async def test_slow_client_is_closed_and_others_unaffected(room_cluster):
    url = room_cluster.edge_url(0) + "/room/slow"
    async with aiohttp.ClientSession() as http:
        slow = await http.ws_connect(f"{url}/ws?i=1", max_msg_size=0, autoclose=False)
        fast = await http.ws_connect(f"{url}/ws?i=2")
        # the slow client never reads: its TCP window fills, then the edge's bounded queue
        slow_transport = slow._response.connection.transport  # type: ignore[union-attr]
        slow_transport.pause_reading()
        await slow.send_str("flood:400,65536")  # 25 MiB towards a client that does not read

        async def slow_closed() -> bool:
            closes = (await room_stats(room_cluster, "slow"))["closes"]
            return "1" in closes

        await assert_eventually(slow_closed, timeout=20, message="slow client not closed")
        closes = (await room_stats(room_cluster, "slow"))["closes"]
        assert closes["1"][0] == 1008 and "slow" in closes["1"][1]
        # the other client is served as before
        await fast.send_str("echo")
        assert await asyncio.wait_for(fast.receive_str(), 5) == "echo"
        # and the slow one, once it reads again, finds the close frame with 1008
        slow_transport.resume_reading()
        code = None
        while True:
            msg = await asyncio.wait_for(slow.receive(), 10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else None
                break
        assert code in (1008, None)  # 1008, unless the edge had to drop the connection
        await fast.close()


async def test_sockets_survive_node_restart(room_cluster):
    """The edge keeps its sockets while their node restarts and re-registers them (tags and
    attachments) on the new process; the object then sees every socket again. (Runs last: it
    kills the module's node.)"""
    url = room_cluster.edge_url(0) + "/room/restart"
    async with aiohttp.ClientSession() as http:
        socks = [await http.ws_connect(f"{url}/ws?i={i}&tags=t{i % 2}") for i in range(20)]
        await socks[0].send_str("count")
        assert json.loads(await asyncio.wait_for(socks[0].receive_str(), 10))["n"] == 20
        await room_cluster.kill_node(0)
        await room_cluster.start_node(0)
        assert all(not ws.closed for ws in socks)

        async def sent() -> bool:  # the first message may race the node's re-registration
            await socks[5].send_str("count")
            try:
                msg = json.loads(await asyncio.wait_for(socks[5].receive_str(), 2))
            except asyncio.TimeoutError:
                return False
            return msg == {"type": "count", "n": 20, "tags": ["t1"]}

        await assert_eventually(sent, timeout=20, interval=0.2, message="not re-registered")
        await socks[1].send_str("broadcast:t0")
        got = await asyncio.gather(*(asyncio.wait_for(socks[i].receive_str(), 10)
                                     for i in range(0, 20, 2)))
        assert sorted(json.loads(m)["att"] for m in got) == list(range(0, 20, 2))
        for ws in socks:
            await ws.close()
