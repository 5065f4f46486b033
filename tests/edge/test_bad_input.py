"""Bad input gets a clear error or close code, and the edge stays healthy for everyone else."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]


async def raw_http(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


async def healthy(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/counter/healthy/increment") as r:
            assert r.status == 200


async def test_malformed_http(examples_cluster):
    url = examples_cluster.edge_url(0)
    for garbage in (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost\r\n\r\n",
                    b"NOT A REQUEST\r\n\r\n"):
        answer = await raw_http(url, garbage)
        assert answer.split(b" ", 2)[1] == b"400", answer[:80]
    await healthy(url)


async def test_unknown_binding_route_and_invalid_id(examples_cluster):
    url = examples_cluster.edge_url(0)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/nope/x/get") as r:
            body = await r.json()
            assert r.status == 404 and body["error"]["code"] == "not_found"
            assert "unknown binding 'nope'" in body["error"]["message"]
        async with http.get(f"{url}/counter") as r:
            assert r.status == 404
        async with http.get(f"{url}/counter/@not-hex/get") as r:
            body = await r.json()
            assert r.status == 400 and body["error"]["code"] == "invalid_id"
        async with http.get(f"{url}/counter/@{'ab' * 32}/get") as r:  # not this namespace's id
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_id"
        async with http.get(f"{url}/counter/byname/get") as r:
            assert r.status == 200
        async with http.get(f"{url}/counter/x/nothing") as r:  # the object's own 404
            assert r.status == 404 and await r.text() == "Not found"
        async with http.get(f"{url}/_duro/nope") as r:
            assert r.status == 404
    await healthy(url)


async def test_invalid_json_messages(examples_cluster):
    url = examples_cluster.edge_url(0)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{url}/counter/badjson/websocket")
        assert json.loads(await ws.receive_str())["type"] == "current"
        for bad in ("{not json", "[1, 2]", "42"):
            await ws.send_str(bad)
            assert json.loads(await asyncio.wait_for(ws.receive_str(), 10)) == {
                "type": "error", "error": "message must be a JSON object"}
        await ws.send_str(json.dumps({"type": "increment"}))  # the socket still works
        assert json.loads(await asyncio.wait_for(ws.receive_str(), 10))["type"] == "update"
        chat = await http.ws_connect(f"{url}/chat/badjson/websocket?userId=u&username=u")
        assert json.loads(await chat.receive_str())["type"] == "history"
        await chat.send_str("not json")
        assert json.loads(await asyncio.wait_for(chat.receive_str(), 10))["type"] == "error"
        await ws.close()
        await chat.close()
        # a bank deposit with an invalid JSON body: the object's own 400
        async with http.post(f"{url}/bank/badjson/deposit", data=b"{oops") as r:
            assert 400 <= r.status < 500
    await healthy(url)


async def test_oversized_frame_closes_with_1009(examples_cluster):
    url = examples_cluster.edge_url(0)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{url}/counter/big/websocket", max_msg_size=0)
        other = await http.ws_connect(f"{url}/counter/big/websocket")
        for s in (ws, other):
            assert json.loads(await s.receive_str())["type"] == "current"
        try:  # the edge refuses it from the frame header, while the client is still sending
            await ws.send_bytes(b"x" * (32 * 1024 * 1024 + 1))
        except ConnectionError:
            pass
        msg = await asyncio.wait_for(ws.receive(), 30)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009
        await other.send_str(json.dumps({"type": "increment"}))
        assert json.loads(await asyncio.wait_for(other.receive_str(), 10)) == {
            "type": "update", "value": 1}
        await other.close()
    await healthy(url)


async def test_websocket_without_edge_support_is_refused_over_http(examples_cluster):
    """Plain GET of a WebSocket route (no Upgrade): the object's own answer, not a hang."""
    url = examples_cluster.edge_url(0)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/counter/plain/websocket") as r:
            assert r.status >= 400
