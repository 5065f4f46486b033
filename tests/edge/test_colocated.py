"""Co-located edges (``duro node --edge``, what ``duro dev`` runs by default): the seed article's
scenario through edges that run inside their region's node, and the in-process shortcut they take
to that node's objects (docs/architecture.md, "Co-located edge").

The seed tests are collected here a second time, against a cluster whose edges are co-located
(the ``examples_cluster`` fixture below overrides the separate-edge one of conftest.py).
"""

from __future__ import annotations

import json

import aiohttp
import grpc
import pytest
import pytest_asyncio
from grpc import aio

from duro._pb import gateway_pb2
from tests.cluster.conftest import metric
from tests.edge.conftest import EXAMPLES, start_cluster, stop_cluster
from tests.edge.test_seed import (  # noqa: F401 (collected here against co-located edges)
    test_calls_carry_the_edge_region,
    test_chat_two_clients,
    test_counter_broadcast_to_all_sockets,
    test_counter_equals_acknowledged_increments,
)

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def examples_cluster(tmp_path_factory):
    cluster = await start_cluster(tmp_path_factory.mktemp("edge-colocated"), app=EXAMPLES,
                                  colocated_edges=True)
    assert [e.name for e in cluster.edges] == ["us-east-0", "eu-west-0"]  # nodes, not edges
    yield cluster
    await stop_cluster(cluster)


async def test_calls_to_the_edges_own_node_stay_in_process(examples_cluster):
    """An object placed on the node whose edge takes the request is called in-process (the
    node's router counts the hop as local); one on another node through gRPC, as before."""
    node = examples_cluster.nodes[0]
    port = node.ready["metrics_port"]
    before = await metric(port, "duro_client_local_calls_total")
    url = examples_cluster.edge_url(0)
    async with aiohttp.ClientSession() as http:
        for i in range(20):
            async with http.get(f"{url}/counter/local-path/increment") as r:
                assert r.status == 200 and json.loads(await r.text()) == {"value": i + 1}
        # placed in eu-west by its first call there, then called from us-east: over gRPC
        async with http.get(f"{examples_cluster.edge_url(1)}/counter/far/increment") as r:
            assert r.status == 200
        async with http.get(f"{url}/counter/far/increment") as r:
            assert json.loads(await r.text()) == {"value": 2}
    assert await metric(port, "duro_client_local_calls_total") - before == 20


async def test_gateway_of_a_colocated_edge(examples_cluster):
    c = examples_cluster
    async with aio.insecure_channel(c.edges[0].ready["grpc"]) as ch:
        call = ch.unary_unary("/duro.v1.Gateway/Invoke")
        req = gateway_pb2.InvokeRequest(binding="COUNTER", name="gw", method="increment")
        md = (("authorization", f"Bearer {c.gateway_token}"),)
        for want in (1, 2):
            r = gateway_pb2.InvokeResponse.FromString(
                await call(req.SerializeToString(), metadata=md, timeout=30))
            assert json.loads(r.result_json) == want
        with pytest.raises(aio.AioRpcError) as err:
            await call(req.SerializeToString(), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_stopping_the_node_closes_its_edges_sockets_with_1001(examples_cluster):
    """The node stops its edge first: clients get a close frame 1001 (going away) before the
    process goes (this is the last test of the module: the cluster is below its floor after).
    """
    c = examples_cluster
    url = c.edge_url(1)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{url}/chat/closing/websocket?userId=u1&username=ann")
        assert json.loads((await ws.receive(timeout=10)).data)["type"] == "history"
        await c.stop_node(1)
        msg = await ws.receive(timeout=15)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1001,
                                                   "edge shutting down"), msg
