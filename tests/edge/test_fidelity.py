"""Cloudflare fidelity through a real cluster (etcd, placement, a node and an edge as processes):
``ctx.id.name`` and argument errors through the HTTP edge, the gRPC Gateway and ``duro.client``;
the WebSocket auto-response timestamp and event timeout through the edge (docs/runtime.md)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from grpc import aio

import duro.client
from duro._ids import ObjectId, namespace_key
from duro._pb import gateway_pb2, gateway_pb2_grpc
from duro.errors import InvalidArgumentError, ObjectError
from tests.edge.conftest import start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]

APP = Path(__file__).parent / "fidelity"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    c = await start_cluster(tmp_path_factory.mktemp("fidelity"), app=APP, regions=("us-east",),
                            replicas=1, edge_args=("--no-access-log",))
    yield c
    await stop_cluster(c)


def unique_hex() -> str:
    return ObjectId.unique(namespace_key("Probe")).hex()


async def gateway_invoke(cluster, **kw) -> gateway_pb2.InvokeResponse:  # noqa: ANN001
    async with aio.insecure_channel(cluster.edges[0].ready["grpc"]) as ch:
        gw = gateway_pb2_grpc.GatewayStub(ch)
        return await gw.Invoke(gateway_pb2.InvokeRequest(**kw), timeout=30, metadata=[
            ("authorization", "Bearer " + cluster.gateway_token)])


async def test_id_name_through_the_http_edge(cluster):
    async with aiohttp.ClientSession() as http:
        async with http.get(cluster.edge_url(0) + "/probe/alice/anything") as r:
            assert r.status == 200
            assert (await r.json())["name"] == "alice"
        async with http.get(cluster.edge_url(0) + f"/probe/@{unique_hex()}/") as r:
            assert r.status == 200
            assert (await r.json())["name"] is None  # a unique id has no name


async def test_id_name_and_argument_errors_through_the_gateway(cluster):
    r = await gateway_invoke(cluster, binding="PROBE", name="bob", method="whoami")
    got = json.loads(r.result_json)
    assert got["name"] == got["constructed_as"] == "bob"
    r = await gateway_invoke(cluster, binding="PROBE", id=unique_hex(), method="whoami")
    assert json.loads(r.result_json)["name"] is None

    r = await gateway_invoke(cluster, binding="PROBE", name="bob", method="add", args_json="[]")
    assert r.error.code == "invalid_argument"
    assert "missing a required argument: 'a'" in r.error.message
    r = await gateway_invoke(cluster, binding="PROBE", name="bob", method="add",
                             args_json="[1]", kwargs_json='{"c": 2}')
    assert r.error.code == "invalid_argument"
    assert "'c'" in r.error.message
    r = await gateway_invoke(cluster, binding="PROBE", name="bob", method="raises_type_error",
                             args_json="[1]")
    assert (r.error.code, r.error.remote_type) == ("object_error", "TypeError")
    r = await gateway_invoke(cluster, binding="PROBE", name="bob", method="add",
                             args_json="[1, 2]")
    assert json.loads(r.result_json) == 3


async def test_id_name_and_argument_errors_through_the_client_library(cluster):
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        ns = c.namespace("PROBE")
        got = await ns.get_by_name("carol").whoami()
        assert got["name"] == got["constructed_as"] == "carol"
        assert (await ns.get(ns.new_unique_id()).whoami())["name"] is None
        stub = ns.get_by_name("carol")
        with pytest.raises(InvalidArgumentError, match="missing a required argument: 'a'"):
            await stub.add()
        with pytest.raises(ObjectError) as info:
            await stub.raises_type_error(2)
        assert info.value.remote_type == "TypeError"
        with pytest.raises(InvalidArgumentError, match="get_many"):
            await stub.get_several_wrongly()
        assert await stub.add(2, b=3) == 5  # the stub still works


async def receive_text(ws, timeout: float = 20.0) -> str:  # noqa: ANN001
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return msg.data


async def test_auto_response_timestamp_and_name_over_a_websocket(cluster):
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(cluster.edge_url(0) + "/room/stamps") as ws:
        await ws.send_str("ts?")
        assert await receive_text(ws) == "none"  # never auto-answered yet
        await ws.send_str("name?")
        assert await receive_text(ws) == "stamps"
        before = time.time()
        await ws.send_str("ping")
        assert await receive_text(ws) == "pong"  # answered by the edge
        # The edge tells the node when (no wake-up needed); the object reads it on its next event.
        deadline = time.monotonic() + 20
        while True:
            await ws.send_str("ts?")
            got = await receive_text(ws)
            if got != "none":
                break
            assert time.monotonic() < deadline, "the auto-response time never reached the object"
            await asyncio.sleep(0.05)
        assert before - 1 <= float(got) <= time.time() + 1
        await ws.send_str("timeout?")
        assert await receive_text(ws) == "None"


async def test_websocket_event_timeout_cancels_a_handler_that_runs_too_long(cluster):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(cluster.edge_url(0) + "/room/limited?timeout=300") as ws:
            await ws.send_str("timeout?")
            assert await receive_text(ws) == "300"
            await ws.send_str("slow 2")
            assert await receive_text(ws) == "started"
            await ws.send_str("after")
            assert await receive_text(ws) == "echo after"  # the socket and the object go on
            with pytest.raises(asyncio.TimeoutError):  # "finished" never comes: cancelled
                await ws.receive(timeout=3.0)
        async with http.ws_connect(cluster.edge_url(0) + "/room/unlimited") as ws:
            await ws.send_str("slow 0.5")  # the same handler without a limit: it finishes
            assert await receive_text(ws) == "started"
            assert await receive_text(ws) == "finished"
