"""The placement service in-process against a real etcd, through its gRPC API: replica groups
for the nodes that register (fake registrations here), directory partitions assigned on first
use, leadership. (Placing objects is the directory partitions' business, on the nodes:
tests/node/directory.)"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from etcd3aio import Etcd3Client

from duro._etcd import EtcdProcess
from duro._pb import placement_pb2, placement_pb2_grpc
from duro.node.membership import Membership
from duro.placement.config import PlacementConfig
from duro.placement.service import PlacementService
from duro.topology.nodes import NodeInfo
from tests.cluster.etcd_fixture import assert_eventually, etcd  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

CLUSTER = "t"
NODES = [("us1", "us-east"), ("us2", "us-east"), ("eu1", "eu-west"), ("ap1", "ap-south")]


@contextlib.asynccontextmanager
async def registered_nodes(etcd: EtcdProcess, nodes=NODES) -> AsyncIterator[list[Membership]]:  # type: ignore[no-untyped-def]
    async with Etcd3Client([etcd.endpoint]) as client:
        ms = [
            Membership(client, CLUSTER, NodeInfo(nid, f"127.0.0.2:{9000 + i}", region,
                                                 capacity=100, storage_id=f"sid-{nid}"))
            for i, (nid, region) in enumerate(nodes)
        ]
        for m in ms:
            await m.start(timeout=10)
        try:
            yield ms
        finally:
            for m in ms:
                await m.stop()


def config(etcd: EtcdProcess, replica: str, **kw: object) -> PlacementConfig:
    return PlacementConfig(etcd=(etcd.endpoint,), cluster=CLUSTER, listen="127.0.0.1:0",
                           replica_id=replica, **kw)  # type: ignore[arg-type]


async def leading(svc: PlacementService) -> PlacementService:
    await assert_eventually(lambda: svc.election is not None and svc.election.is_leader(),
                            timeout=10, message="not leader")
    await assert_eventually(lambda: len(svc.nodes.nodes) >= 1, timeout=10)
    # Each registered node gets a replica group it leads (docs/replication.md).
    assert svc.groups is not None
    await assert_eventually(
        lambda: {g.home for g in svc.groups.groups.all()} == set(svc.nodes.nodes),
        timeout=10, message="nodes have no home groups")
    return svc


async def test_home_groups_with_followers_by_zone_and_region(etcd: EtcdProcess) -> None:
    async with registered_nodes(etcd), PlacementService(config(etcd, "p1")) as svc:
        await leading(svc)
        assert svc.groups is not None

        async def full() -> bool:
            return all(len(g.replicas) == 3 for g in svc.groups.groups.all())  # type: ignore[union-attr]

        await assert_eventually(full, timeout=10, message="groups did not reach 3 members")
        us1 = next(g for g in svc.groups.groups.all() if g.home == "us1")
        # The other us-east node first (same region), then the nearest region (eu-west).
        assert us1.replicas == ("us1", "us2", "eu1"), us1
        assert us1.primary == "us1" and us1.epoch == 1
        assert us1.in_sync_nodes == ("us1",)  # the others are candidates until caught up


async def test_partitions_go_to_the_groups_holding_fewest(etcd: EtcdProcess) -> None:
    async with registered_nodes(etcd), PlacementService(config(etcd, "p1")) as svc:
        await leading(svc)
        async with grpc.aio.insecure_channel(svc.address) as ch:
            stub = placement_pb2_grpc.PlacementStub(ch)
            r = await stub.AssignPartitions(placement_pb2.AssignPartitionsRequest(
                partitions=list(range(40))))
            held = Counter(r.groups)
            assert sorted(held.values()) == [10, 10, 10, 10], held
            again = await stub.AssignPartitions(placement_pb2.AssignPartitionsRequest(
                partitions=[3, 7]))
            assert list(again.groups) == [r.groups[3], r.groups[7]]  # never reassigned
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.AssignPartitions(placement_pb2.AssignPartitionsRequest(
                    partitions=[1 << 30]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            st = await stub.Status(placement_pb2.PlacementStatusRequest())
            assert st.is_leader and st.leader_id == "p1"
            assert [n.node_id for n in st.nodes] == ["ap1", "eu1", "us1", "us2"]


async def test_a_batch_spanning_transactions_keeps_what_exists(etcd: EtcdProcess) -> None:
    """250 partitions in one request (three etcd transactions), some of them already assigned
    by a previous leader that this one has not seen yet: those keep their group, the others
    spread over the groups, and each map key is written once."""
    async with registered_nodes(etcd), PlacementService(config(etcd, "p1")) as svc:
        await leading(svc)
        async with Etcd3Client([etcd.endpoint]) as client:
            for p in (0, 150, 249):  # behind the view's back, as a previous leader's writes
                await client.kv.put(f"/duro/{CLUSTER}/partitions/{p:06d}".encode(),
                                    b'{"group": 999}')
            groups = await svc.assign_partitions(list(range(250)))
            assert [groups[p] for p in (0, 150, 249)] == [999, 999, 999]
            held = Counter(g for i, g in enumerate(groups) if i not in (0, 150, 249))
            assert sum(held.values()) == 247 and max(held.values()) - min(held.values()) <= 1, held
            resp = await client.kv.get(f"/duro/{CLUSTER}/partitions/".encode(),
                                       f"/duro/{CLUSTER}/partitions0".encode())
            assert len(resp.kvs) == 250
            assert all(kv.version == 1 for kv in resp.kvs)  # none rewritten
            again = await svc.assign_partitions([0, 1, 249])
            assert again == [999, groups[1], 999]


async def test_200_concurrent_assignments_of_one_partition(etcd: EtcdProcess) -> None:
    async with registered_nodes(etcd), PlacementService(config(etcd, "p1")) as svc:
        await leading(svc)
        async with grpc.aio.insecure_channel(svc.address) as ch:
            stub = placement_pb2_grpc.PlacementStub(ch)
            rs = await asyncio.gather(*(stub.AssignPartitions(
                placement_pb2.AssignPartitionsRequest(partitions=[5])) for _ in range(200)))
        assert len({tuple(r.groups) for r in rs}) == 1
        async with Etcd3Client([etcd.endpoint]) as client:
            resp = await client.kv.get(f"/duro/{CLUSTER}/partitions/".encode(),
                                       f"/duro/{CLUSTER}/partitions0".encode())
            assert len(resp.kvs) == 1


async def test_standby_points_at_the_leader_and_takes_over(etcd: EtcdProcess) -> None:
    async with registered_nodes(etcd):
        leader = PlacementService(config(etcd, "p1", leader_ttl=2))
        await leader.start()
        try:
            await leading(leader)
            async with PlacementService(config(etcd, "p2", leader_ttl=2)) as standby:
                await assert_eventually(lambda: standby.election.leader is not None, timeout=10)  # type: ignore[union-attr]
                async with grpc.aio.insecure_channel(standby.address) as ch:
                    stub = placement_pb2_grpc.PlacementStub(ch)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.AssignPartitions(
                            placement_pb2.AssignPartitionsRequest(partitions=[1]))
                    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    md = dict(err.value.trailing_metadata() or ())
                    assert md["duro-leader-id"] == "p1"
                    assert md["duro-leader-address"] == leader.address
                    st = await stub.Status(placement_pb2.PlacementStatusRequest())
                    assert not st.is_leader and st.leader_id == "p1"
                    await leader.stop()  # resigns: the standby takes over at once
                    await leading(standby)
                    r = await stub.AssignPartitions(
                        placement_pb2.AssignPartitionsRequest(partitions=[1]))
                    assert r.groups[0] > 0
        finally:
            await leader.stop()


async def test_metrics_are_served(etcd: EtcdProcess) -> None:
    async with registered_nodes(etcd), PlacementService(config(etcd, "p1", metrics_port=0)) as svc:
        await leading(svc)
        await svc.assign_partitions([0, 1, 2])
        assert svc.metrics_port
        url = f"http://127.0.0.1:{svc.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        assert "duro_placement_partitions_assigned_total 3.0" in body
        assert "duro_placement_is_leader_bool 1.0" in body
        assert "duro_placement_groups_count 4.0" in body


def test_config_precedence(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "p.toml"
    f.write_text('[placement]\ncluster = "file"\nlisten = "127.0.0.1:1"\nleader_ttl = 4\n')
    env = {"DURO_CLUSTER": "env", "DURO_ETCD": "127.0.0.1:1,127.0.0.1:2"}
    c = PlacementConfig.load(["--config", str(f), "--listen", "127.0.0.1:7"], env)
    assert c.cluster == "env" and c.listen == "127.0.0.1:7" and c.leader_ttl == 4
    assert c.etcd == ("127.0.0.1:1", "127.0.0.1:2")
    assert PlacementConfig.load([], {}) == PlacementConfig()
