"""What the console reads from nodes, and the operator commands it stands beside, through real
processes (docs/console.md):

* ``NodeInspect.Inspect`` at the owner describes an object (keys, stored bytes, alarm, access
  counts by region, move history); the history moves with the object and grows with each move;
  a node that does not own it says so; a bad id is refused;
* ``NodeInspect.Sample`` counts calls and latency per binding and lists the node's recent moves;
* who may call it: members, admins and edges, not clients (mTLS identities);
* ``duro drain`` / ``duro status`` / ``duro undrain`` through the real CLI: status lists the
  draining node, undrain clears it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

import duro.client
import duro.client.admin
from duro import tls
from duro._pb import inspect_pb2, inspect_pb2_grpc
from duro.client.admin import migrate

pytestmark = [pytest.mark.cluster]

APP = Path(__file__).resolve().parent / "apps" / "migapp"


async def inspect(address: str, oid: bytes, material=None) -> inspect_pb2.InspectResponse:  # noqa: ANN001
    ch = tls.channel(address) if material is None else tls.channel(address, tls=material)
    async with ch:
        return await inspect_pb2_grpc.NodeInspectStub(ch).Inspect(
            inspect_pb2.InspectRequest(object_id=oid), timeout=10.0)


async def sample(address: str) -> inspect_pb2.SampleResponse:
    async with tls.channel(address) as ch:
        return await inspect_pb2_grpc.NodeInspectStub(ch).Sample(inspect_pb2.SampleRequest(),
                                                                 timeout=10.0)


def cli(cluster, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run(
        [sys.executable, "-m", "duro.cli", *args, "--etcd", cluster.etcd.endpoint,
         "--cluster", cluster.cluster], capture_output=True, text=True, timeout=120,
        env=dict(os.environ))


async def test_inspect_sample_and_history_follow_the_object(make_cluster) -> None:
    c = await make_cluster(app=str(APP), regions=("us-east", "eu-west"),
                           placement_args=("--rebalance", "false"))
    e = c.etcd.endpoint
    async with duro.client.connect(etcd=e, region="us-east") as client:
        stub = client.namespace("ACC").get_by_name("inspected")
        for _ in range(5):
            await stub.add(1)
        await stub.fill(20, 100)
        alarm_at = await stub.arm(3600)
    oid = stub.id.raw
    where = await duro.client.admin.where(e, c.cluster, str(APP), "ACC", "inspected")
    owner, epoch = where["node"], where["epoch"]
    other = next(n for n in c.nodes if n.name != owner)
    by_name = {n.name: n for n in c.nodes}

    r = await inspect(by_name[owner].address, oid)
    assert r.owned and r.binding == "ACC" and r.epoch == epoch and r.group == where["group"]["gid"]
    assert r.keys == 21  # "value" and 20 blobs
    assert r.stored_bytes >= 20 * 100
    assert r.has_alarm and abs(r.alarm_at - alarm_at) < 1.0
    assert r.active and {x.region: x.calls for x in r.regions}.get("us-east", 0) >= 7
    assert not r.history and not r.moving

    assert not (await inspect(other.address, oid)).owned  # not its object
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await inspect(by_name[owner].address, b"short")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    s = await sample(by_name[owner].address)
    acc = next(b for b in s.bindings if b.binding == "ACC")
    assert acc.calls >= 7 and sum(acc.buckets) == acc.calls
    assert len(s.bucket_ms) == len(acc.buckets) and s.active_objects >= 1 and s.serving

    # Moved: the history goes with it, and the source remembers the move.
    moved = await migrate(e, c.cluster, str(APP), "ACC", "inspected", to_node=other.name)
    assert moved["outcome"] == "released", moved
    r2 = await inspect(other.address, oid)
    assert r2.owned and r2.epoch == epoch + 1
    assert r2.keys == 21 and r2.stored_bytes == r.stored_bytes and r2.has_alarm
    assert [(h.from_node, h.to_node, h.epoch) for h in r2.history] == [
        (owner, other.name, epoch + 1)]
    assert abs(r2.history[0].at - time.time()) < 60
    recent = (await sample(by_name[owner].address)).recent_moves
    assert any(m.object_id == oid and m.to_node == other.name and m.outcome == "released"
               for m in recent)

    # And back: two moves, oldest first; the copy at the first owner is gone and came back.
    back = await migrate(e, c.cluster, str(APP), "ACC", "inspected", to_node=owner)
    assert back["outcome"] == "released", back
    r3 = await inspect(by_name[owner].address, oid)
    assert [(h.from_node, h.to_node) for h in r3.history] == [(owner, other.name),
                                                              (other.name, owner)]
    assert r3.keys == 21 and r3.epoch == epoch + 2
    assert not (await inspect(other.address, oid)).owned


@pytest.mark.skipif(os.environ.get("DURO_TEST_TLS", "1") in ("0", "false", "no", "off"),
                    reason="identities need mTLS")
async def test_inspect_is_for_members_admins_and_edges_only(make_cluster) -> None:
    c = await make_cluster(app=str(APP), regions=("us-east",), replicas=1)
    node = c.nodes[0].address
    oid = b"\x01" * 32
    edge = c.issue("edge", "edge-x").load()
    assert not (await inspect(node, oid, edge)).owned  # allowed (the console reads as an edge)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await inspect(node, oid, c.issue("client", "someone").load())
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_drain_status_undrain_through_the_cli(make_cluster) -> None:
    c = await make_cluster(app=str(APP), regions=("us-east", "eu-west"))
    name = c.nodes[0].name
    status = json.loads(cli(c, "status").stdout)
    assert status["draining_nodes"] == []
    drained = await asyncio.to_thread(cli, c, "drain", name)
    assert drained.returncode == 0, drained.stderr
    status = json.loads(cli(c, "status").stdout)
    assert status["draining_nodes"] == [name]
    assert next(n for n in status["nodes"] if n["node_id"] == name)["draining"] is True

    undrained = cli(c, "undrain", name)
    assert undrained.returncode == 0, undrained.stderr
    assert json.loads(undrained.stdout) == {"node": name, "draining": False, "was_draining": True}
    status = json.loads(cli(c, "status").stdout)
    assert status["draining_nodes"] == []
    assert next(n for n in status["nodes"] if n["node_id"] == name)["draining"] is False

    bad = cli(c, "undrain", "no-such-node")
    assert bad.returncode != 0 and "no-such-node" in bad.stderr
