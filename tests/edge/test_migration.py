"""Objects with sockets move between regions (live migration) while their clients talk.

The sockets stay connected; the new owner knows every socket from the migration snapshot (a
broadcast right after the move reaches silent ones too); a message a client sends during the move
runs exactly once, in order; the old owner's frames reach the clients before the new owner's
(docs/migration.md, "WebSockets"; docs/edge.md, "An object moves").
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import duro.client
import pytest
import pytest_asyncio
from duro.client.admin import migrate, where

from tests.edge.conftest import EXAMPLES, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(180)]

REGIONS = ("us-east", "eu-west", "ap-south")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def three_regions(tmp_path_factory):
    """The examples on three regions: one node and one edge each."""
    cluster = await start_cluster(tmp_path_factory.mktemp("edge-migration"), app=EXAMPLES,
                                  regions=REGIONS, edge_args=("--no-access-log",))
    yield cluster
    await stop_cluster(cluster)


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict:
    return json.loads(await asyncio.wait_for(ws.receive_str(), 10))


async def move_to_next_region(c, binding: str, name: str) -> dict:
    before = await where(c.etcd.endpoint, c.cluster, c.app, binding, name)
    target = REGIONS[(REGIONS.index(before["region"]) + 1) % len(REGIONS)]
    res = await migrate(c.etcd.endpoint, c.cluster, c.app, binding, name, to_region=target)
    assert res["outcome"] == "released", res
    after = await where(c.etcd.endpoint, c.cluster, c.app, binding, name)
    assert after["region"] == target and after["node"] != before["node"]
    return res


async def test_sockets_follow_a_migrated_object(three_regions):
    """Silent sockets hear the new owner's first broadcast, with no pause for the edges' watch."""
    c = three_regions
    async with aiohttp.ClientSession() as http:
        socks = [await http.ws_connect(f"{c.edge_url(i % 3)}/counter/moving/websocket")
                 for i in range(6)]
        for ws in socks:
            assert await recv(ws) == {"type": "current", "value": 0}
        await socks[0].send_str(json.dumps({"type": "increment"}))
        for ws in socks:
            assert await recv(ws) == {"type": "update", "value": 1}
        for value in (2, 3, 4):
            await move_to_next_region(c, "COUNTER", "moving")
            assert all(not ws.closed for ws in socks)
            # At once (no sleep for the edges' directory watch): one socket speaks...
            await socks[value % 6].send_str(json.dumps({"type": "increment"}))
            for ws in socks:  # ...and all of them, silent ones included, hear the new owner
                assert await recv(ws) == {"type": "update", "value": value}
        for ws in socks:
            await ws.close()


N_CLIENTS = 100
N_SENDERS = 6
MOVES = 5
SEND_EVERY = 0.02  # s, per sender


async def test_chat_room_migrates_under_traffic_nothing_lost_or_reordered(three_regions):
    """100 clients over three edges in one chat room; six of them send numbered messages without
    pause while the room moves between regions five times (and an RPC posts right after each
    move). Afterwards: nobody disconnected, every client received every broadcast exactly once,
    all in the same order (the room's), and each sender's messages in the order it sent them."""
    c = three_regions
    room = "migrating-room"
    got: list[list[tuple[str, str]]] = [[] for _ in range(N_CLIENTS)]
    dropped: dict[int, str] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def join(i: int) -> aiohttp.ClientWebSocketResponse:
            url = (f"{c.edge_url(i % len(REGIONS))}/chat/{room}/websocket"
                   f"?userId=u{i}&username=user{i}")
            ws = await http.ws_connect(url, autoping=True)
            first = await recv(ws)
            assert first["type"] == "history"
            return ws

        socks: list[aiohttp.ClientWebSocketResponse] = []
        for start in range(0, N_CLIENTS, 20):
            socks += await asyncio.gather(*(join(i) for i in range(start, start + 20)))

        async def read(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if data["type"] == "message":
                    m = data["message"]
                    got[i].append((m["userId"], m["content"]))
            dropped[i] = f"closed with {ws.close_code}"

        readers = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(socks)]
        sent = {f"u{i}": 0 for i in range(N_SENDERS)}
        sent["rpc"] = 0
        stop = asyncio.Event()

        async def speak(i: int) -> None:
            uid = f"u{i}"
            while not stop.is_set():
                sent[uid] += 1
                await socks[i].send_str(json.dumps(
                    {"type": "message", "content": f"{uid}#{sent[uid]}"}))
                await asyncio.sleep(SEND_EVERY)

        senders = [asyncio.ensure_future(speak(i)) for i in range(N_SENDERS)]
        async with duro.client.connect(etcd=c.etcd.endpoint, region="us-east") as client:
            stub = client.namespace("CHAT").get_by_name(room)
            await asyncio.sleep(0.5)
            moves = []
            for _ in range(MOVES):
                moves.append(await move_to_next_region(c, "CHAT", room))
                # The new owner broadcasts at once: every socket hears it, silent ones included.
                sent["rpc"] += 1
                await stub.post("rpc", "rpc", f"rpc#{sent['rpc']}")
                await asyncio.sleep(0.4)
            stop.set()
            await asyncio.gather(*senders)

        total = sum(sent.values())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(len(g) < total for g in got) and not dropped:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up now

        assert not dropped, f"clients disconnected: {dropped}"
        assert all(not ws.closed for ws in socks)
        expected = {(uid, f"{uid}#{n}") for uid, count in sent.items() for n in range(1, count + 1)}
        reference = got[0]
        assert len(reference) == len(set(reference)), "a message was delivered twice"
        missing = expected - set(reference)
        assert not missing, f"{len(missing)} of {total} messages missing, e.g. {sorted(missing)[:5]}"
        assert set(reference) == expected
        for i, g in enumerate(got):
            assert g == reference, (
                f"client {i} saw {len(g)} messages in another order than client 0 ({total})")
        for uid, count in sent.items():  # each sender's messages in the order it sent them
            mine = [content for u, content in reference if u == uid]
            assert mine == [f"{uid}#{n}" for n in range(1, count + 1)], uid
        # The global order is the room's: its stored history ends with the same messages.
        async with http.get(f"{c.edge_url(0)}/chat/{room}/messages") as r:
            stored = [(m["userId"], m["content"]) for m in (await r.json())["messages"]]
        assert stored == reference[-len(stored):]
        held = [round(m.get("held_ms", 0), 1) for m in moves]
        print(f"{total} messages to {N_CLIENTS} clients across {MOVES} moves; held ms: {held}")
        for ws in socks:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
