"""A node that does not come back, and no replica to fail over to (``replicas = 1``): its sockets
are closed with 1012 (service restart) after ``node_loss_grace``, and the edge keeps serving
everything else."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import pytest_asyncio

from tests.edge.conftest import TEST_APP, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    c = await start_cluster(tmp_path_factory.mktemp("edge-loss"), app=TEST_APP,
                            regions=("us-east",), replicas=1,
                            edge_args=("--node-loss-grace", "2"))
    yield c
    await stop_cluster(c)


async def test_sockets_of_a_lost_node_close_with_1012(cluster):
    url = cluster.edge_url(0) + "/room/lost"
    async with aiohttp.ClientSession() as http:
        socks = [await http.ws_connect(f"{url}/ws?i={i}") for i in range(5)]
        await socks[0].send_str("hello")
        assert await asyncio.wait_for(socks[0].receive_str(), 10) == "hello"
        await cluster.kill_node(0)
        for ws in socks:
            msg = await asyncio.wait_for(ws.receive(), 20)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1012, msg
            assert "node unavailable" in msg.extra
        async with http.get(cluster.edge_admin_url(0) + "/health") as r:
            assert r.status == 200 and (await r.json())["sockets"] == 0
