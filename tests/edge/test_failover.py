"""WebSockets of an object whose node dies stay open at the edge and reattach to the new primary
of its replica group (docs/replication.md, docs/edge.md): the edge holds every socket and
re-registers them there, so the new primary knows all of them (its registry is rebuilt), and a
broadcast after the failover reaches every client, silent ones included."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import pytest_asyncio

from duro.client.admin import where
from tests.edge.conftest import TEST_APP, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(180)]

REGIONS = ("us-east", "eu-west", "ap-south")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    c = await start_cluster(tmp_path_factory.mktemp("edge-failover"), app=TEST_APP,
                            regions=REGIONS, edge_args=("--no-access-log",))
    yield c
    await stop_cluster(c)


async def until_reply(ws: aiohttp.ClientWebSocketResponse, send: str, want: str,
                      timeout: float) -> dict:
    """Send ``send`` until a reply of type ``want`` arrives (messages sent into the failover
    window may be lost: at-most-once, as on any broken stream)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await ws.send_str(send)
        try:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.receive_str(), 1.0))
                if msg.get("type") == want:
                    return msg
        except asyncio.TimeoutError:
            continue
    raise AssertionError(f"no {want!r} reply within {timeout} s")


async def test_sockets_stay_open_and_reattach_to_the_new_primary(cluster) -> None:
    url = cluster.edge_url(0) + "/room/failover"  # the us-east edge: the room lives in us-east
    async with aiohttp.ClientSession() as http:
        socks = [await http.ws_connect(f"{url}/ws?i={i}") for i in range(10)]
        first = await until_reply(socks[0], "count", "count", 10)
        assert first["n"] == 10
        before = await where(cluster.etcd.endpoint, cluster.cluster, cluster.app, "ROOM",
                             "failover")
        victim = cluster.node_by_id(before["node"])
        await cluster.kill_node(victim)

        # The group fails over; the edge re-binds the sockets; the new primary knows all ten.
        after = await until_reply(socks[0], "count", "count", 30)
        assert after["n"] == 10, after
        now = await where(cluster.etcd.endpoint, cluster.cluster, cluster.app, "ROOM", "failover")
        assert now["node"] != before["node"] and now["group"]["epoch"] > before["group"]["epoch"]

        await socks[3].send_str("broadcast")
        for i, ws in enumerate(socks):
            msg = json.loads(await asyncio.wait_for(ws.receive_str(), 10))
            assert msg["type"] == "b" and msg["att"] == i, msg
        assert all(not ws.closed for ws in socks)

        await cluster.start_node(victim)
        await cluster.wait_replicated(40)  # handed back: the sockets follow again
        back = await until_reply(socks[5], "count", "count", 30)
        assert back["n"] == 10
        for ws in socks:
            await ws.close()
