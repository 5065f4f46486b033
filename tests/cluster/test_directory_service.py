"""The directory's partition service through its real path: routers' batched ``Resolve`` calls to
the nodes that hold the partitions (three nodes, three copies of every group, real etcd and
RocksDB). What a resolve guarantees (docs/directory.md): one entry per object however many
routers create it at once, placement by hint then caller region, lookups that create nothing,
and clear errors for bad requests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import grpc
import pytest

from duro import tls
from duro._ids import ObjectId, namespace_key
from duro._pb import directory_pb2, directory_pb2_grpc
from duro.client.router import Router
from duro.dev import LocalCluster
from duro.node.directory.server import MAX_ITEMS
from duro.topology.partitions import partition_of
from tests.cluster.conftest import MakeCluster, metric

pytestmark = [pytest.mark.cluster]

KEY = namespace_key("Counter")


def new_ids(n: int) -> list[bytes]:
    run = uuid.uuid4().hex
    return [ObjectId.from_name(KEY, f"{run}-{i}").raw for i in range(n)]


async def created(cluster: LocalCluster) -> float:
    return sum([await metric(n.ready["metrics_port"], "duro_directory_created_total")
                for n in cluster.nodes])


async def home_group(router: Router, node: str) -> int:
    return next(g.gid for g in router.groups.all() if g.home == node)


@pytest.mark.timeout(120)
async def test_resolve_creates_once_places_by_hint_then_region(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster(placement_args=("--rebalance", "false"))
    async with contextlib.AsyncExitStack() as stack:
        routers = [await stack.enter_async_context(Router(cluster.etcd.endpoint, region=r))
                   for r in cluster.regions]
        before = await created(cluster)

        # 300 new objects, each created by three routers of three regions at once (their
        # lookups batched per node): one entry each, the same everywhere.
        ids = new_ids(300)
        answers = await asyncio.gather(*(
            r.directory.resolve(oid, "COUNTER", create=True, region=r.region, fresh=True)
            for oid in ids for r in routers))
        by_id: dict[bytes, set[tuple[int, int, str]]] = {}
        for k, e in enumerate(answers):
            assert e is not None
            by_id.setdefault(ids[k // len(routers)], set()).add((e.group, e.epoch, e.region))
        assert all(len(v) == 1 for v in by_id.values()), \
            [v for v in by_id.values() if len(v) > 1][:3]
        assert await created(cluster) - before == len(ids)

        # Asked again, afresh (at the partition), from any router: the same entry.
        again = await asyncio.gather(*(routers[2].directory.resolve(oid, "COUNTER", fresh=True)
                                       for oid in ids))
        assert {oid: {(e.group, e.epoch, e.region)} for oid, e in zip(ids, again)} == by_id
        assert await created(cluster) - before == len(ids)

        # Placement: the hint's region first, else the caller's; the object goes into the home
        # group of that region's node.
        us = routers[0]
        [a, b, c] = new_ids(3)
        ea = await us.directory.resolve(a, "COUNTER", region="us-east", fresh=True)
        eb = await us.directory.resolve(b, "COUNTER", region="us-east", hint="ap-south",
                                        fresh=True)
        ec = await us.directory.resolve(c, "COUNTER", region="eu-west", fresh=True)
        assert (ea.region, ea.group) == ("us-east", await home_group(us, "us-east-0"))
        assert (eb.region, eb.group) == ("ap-south", await home_group(us, "ap-south-0"))
        assert (ec.region, ec.group) == ("eu-west", await home_group(us, "eu-west-0"))

        # A lookup without create creates nothing.
        [d] = new_ids(1)
        n0 = await created(cluster)
        assert await us.directory.resolve(d, "COUNTER", create=False, fresh=True) is None
        assert await created(cluster) == n0
        assert await us.directory.resolve(d, "", create=False, fresh=True) is None


@pytest.mark.timeout(120)
async def test_resolve_answers_bad_requests_clearly(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster(placement_args=("--rebalance", "false"))
    async with Router(cluster.etcd.endpoint, region="us-east") as router:
        settings = await router.directory.wait_settings(10)
        # Find an id held by node 0's groups and one held elsewhere (assigning as needed).
        node0 = cluster.nodes[0].ready["node_id"]
        mine = other = None
        for oid in new_ids(200):
            p = partition_of(oid, settings.partitions)
            gid = router.directory.partitions.group_of(p)
            if gid is None:
                gid = (await router.assign_partitions([p]))[0]
            primary = router.groups.get(gid).primary
            if primary == node0 and mine is None:
                mine = oid
            elif primary != node0 and other is None:
                other = (oid, primary)
            if mine is not None and other is not None:
                break
        assert mine is not None and other is not None
        async with tls.channel(cluster.nodes[0].address) as ch:  # as admin
            stub = directory_pb2_grpc.DirectoryStub(ch)
            item = directory_pb2.ResolveItem
            resp = await stub.Resolve(directory_pb2.ResolveRequest(items=[
                item(object_id=b"short", binding="COUNTER", create=True),
                item(object_id=mine, binding="", create=True),
                item(object_id=other[0], binding="COUNTER", create=True),
                item(object_id=mine, binding="COUNTER", create=True, caller_region="us-east"),
                item(object_id=mine, binding="COUNTER", create=True, caller_region="us-east"),
            ]))
            r = resp.results
            assert (r[0].error_code, r[0].error) == ("invalid", "object id must be 32 bytes")
            assert r[1].error_code == "invalid" and "binding" in r[1].error
            assert r[2].error_code == "not_here" and r[2].owner_node == other[1]
            assert r[2].owner_address == router.nodes.nodes[other[1]].address
            # The same object twice in one request: created once, the same entry twice.
            assert r[3].found and r[4].found and r[3].entry == r[4].entry
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Resolve(directory_pb2.ResolveRequest(
                    items=[item(object_id=mine)] * (MAX_ITEMS + 1)))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert str(MAX_ITEMS) in (info.value.details() or "")
        # Nothing of that was created but the one entry.
        assert await router.directory.resolve(mine, create=False, fresh=True) is not None
