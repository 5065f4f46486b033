"""mTLS on every internal listener of a real cluster (docs/security.md), through the real ports:
the nodes' gRPC ports and replication streams, the placement service and etcd refuse plaintext
callers and certificates of another CA; a valid certificate with the wrong identity cannot attach
as another edge, move or drain objects, write the directory or send replication batches."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from etcd3aio import Etcd3Client

from duro import tls
from duro._certs import ensure_ca, issue
from duro._pb import (
    directory_pb2,
    directory_pb2_grpc,
    migration_pb2,
    migration_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    placement_pb2,
    placement_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)
from duro._transport import EDGE_ID_METADATA
from duro.dev import LocalCluster
from duro.node.replication.wire import ACKS, BATCH, HELLO, encode_frame, read_frame
from duro.topology.etcdkv import etcd_client, get_value
from duro.topology.nodes import NodeInfo, node_key
from tests.cluster.conftest import MakeCluster

pytestmark = [pytest.mark.cluster]

RPC_TIMEOUT = 5.0


@pytest.fixture
async def cluster(make_cluster: MakeCluster) -> LocalCluster:
    c = await make_cluster(regions=("us-east", "eu-west"), replicas=2, tls=True)
    return c


def foreign(cluster: LocalCluster, tmp_path: Path, role: str, ident: str = "") -> tls.TlsMaterial:
    """A certificate of another CA naming a real identity of the cluster, held by a caller that
    trusts the cluster's CA (so that it is the server that refuses it, not the caller)."""
    ensure_ca(tmp_path / "other-ca")
    mine = issue(tmp_path / "other-ca", role, ident).load()
    assert cluster.client_tls is not None
    return dataclasses.replace(mine, ca_pem=cluster.client_tls.load().ca_pem)


def as_(cluster: LocalCluster, role: str, ident: str = "") -> tls.TlsMaterial:
    return cluster.issue(role, ident).load()


async def node_health(address: str, **kw: Any) -> node_pb2.HealthResponse:
    async with (tls.channel(address, **kw) if kw else grpc.aio.insecure_channel(address)) as ch:
        return await node_pb2_grpc.NodeStub(ch).Health(node_pb2.HealthRequest(),
                                                        timeout=RPC_TIMEOUT)


async def placement_status(address: str, **kw: Any) -> placement_pb2.PlacementStatusResponse:
    async with (tls.channel(address, role="placement", **kw) if kw
                else grpc.aio.insecure_channel(address)) as ch:
        return await placement_pb2_grpc.PlacementStub(ch).Status(
            placement_pb2.PlacementStatusRequest(), timeout=RPC_TIMEOUT)


async def replication_address(cluster: LocalCluster, node_id: str) -> str:
    async with cluster.etcd_client() as client:
        value = await get_value(client, node_key(cluster.cluster, node_id))
    assert value is not None
    return NodeInfo.from_json(value).replication_address


async def send_hello_and_batch(address: str, node_id: str, cluster: str,
                               material: tls.TlsMaterial | None) -> bytes | None:
    """Open the replication stream as ``node_id``, send an (empty) batch frame, and return the
    ACKS frame's payload, or None if the listener closed the connection instead."""
    host, _, port = address.rpartition(":")
    ctx = tls.client_ssl_context(material) if material is not None else None
    try:
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=ctx,
            server_hostname=tls.server_name("node") if ctx is not None else None)
    except (OSError, asyncio.IncompleteReadError):  # the handshake failed
        return None
    try:
        writer.write(encode_frame(HELLO, replication_pb2.ReplicateHello(node_id=node_id,
                                                                        cluster=cluster)))
        writer.write(encode_frame(BATCH, replication_pb2.ReplicateBatch()))
        await writer.drain()
        kind, body = await asyncio.wait_for(read_frame(reader), RPC_TIMEOUT)
        assert kind == ACKS
        return body
    except (OSError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()


@pytest.mark.timeout(120)
async def test_plaintext_and_foreign_ca_callers_are_refused_everywhere(
    cluster: LocalCluster, tmp_path: Path,
) -> None:
    node = cluster.nodes[0]
    node_id = node.ready["node_id"]
    leader = await cluster.wait_leader()
    stream = await replication_address(cluster, node_id)
    admin = as_(cluster, "admin")

    # What a member of the cluster sees: every listener answers.
    assert (await node_health(node.address, tls=admin)).node_id == node_id
    assert (await placement_status(leader["address"], tls=admin)).is_leader
    peer = cluster.nodes[1].ready["node_id"]
    assert await send_hello_and_batch(stream, peer, cluster.cluster, as_(cluster, "node", peer))

    # A plaintext caller and a caller holding a certificate of another CA (naming a real
    # identity): refused in the handshake, before any RPC.
    for who, kw in (("plaintext", {}),
                    ("foreign CA", {"tls": foreign(cluster, tmp_path, "admin")})):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await node_health(node.address, **kw)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, who
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await placement_status(leader["address"], **kw)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, who
    assert await send_hello_and_batch(stream, peer, cluster.cluster, None) is None
    assert await send_hello_and_batch(stream, peer, cluster.cluster,
                                      foreign(cluster, tmp_path, "node", peer)) is None

    # etcd: TLS with a client certificate of the cluster CA only.
    async with cluster.etcd_client() as good:
        assert await get_value(good, node_key(cluster.cluster, node_id)) is not None
    for client in (Etcd3Client([cluster.etcd.endpoint], rpc_max_attempts=1),
                   etcd_client(cluster.etcd.endpoint, tls=foreign(cluster, tmp_path, "admin"))):
        async with client:
            with pytest.raises(Exception):  # noqa: B017 - etcd3aio's error for a failed handshake
                await client.kv.get(b"/duro/", timeout=3.0)


@pytest.mark.timeout(120)
async def test_a_certificate_cannot_act_as_another_identity(cluster: LocalCluster) -> None:
    node = cluster.nodes[0]
    node_id = node.ready["node_id"]
    other_node = cluster.nodes[1].ready["node_id"]
    client, edge = as_(cluster, "client", "app"), as_(cluster, "edge", "edge-intruder")

    async def denied(call: Any) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
        return err.value.details() or ""

    async with tls.channel(node.address, tls=client) as ch:
        # A client may call objects ...
        assert (await node_pb2_grpc.NodeStub(ch).Health(node_pb2.HealthRequest(),
                                                        timeout=RPC_TIMEOUT)).node_id == node_id
        # ... but not drain, move, write the directory or replicate.
        mig = migration_pb2_grpc.MigrationStub(ch)
        why = await denied(mig.SetDraining(migration_pb2.DrainingRequest(draining=True),
                                           timeout=RPC_TIMEOUT))
        assert "duro://client/app may not call /duro.v1.Migration/SetDraining" in why
        await denied(mig.Move(migration_pb2.MoveRequest(object_id=b"x" * 32, binding="COUNTER",
                                                        target_node=other_node),
                              timeout=RPC_TIMEOUT))
        await denied(migration_pb2_grpc.MigrationStub(ch).Drop(
            migration_pb2.DropRequest(object_id=b"x" * 32), timeout=RPC_TIMEOUT))
        await denied(directory_pb2_grpc.DirectoryStub(ch).Switch(
            directory_pb2.SwitchRequest(object_id=b"x" * 32), timeout=RPC_TIMEOUT))
        await denied(replication_pb2_grpc.ReplicationStub(ch).Fence(
            replication_pb2.FenceRequest(gid=1, epoch=99), timeout=RPC_TIMEOUT))
    async with tls.channel(node.address, tls=edge) as ch:
        await denied(replication_pb2_grpc.ReplicationStub(ch).Fence(
            replication_pb2.FenceRequest(gid=1, epoch=99), timeout=RPC_TIMEOUT))
        await denied(migration_pb2_grpc.MigrationStub(ch).SetDraining(
            migration_pb2.DrainingRequest(draining=True), timeout=RPC_TIMEOUT))
    # The node is still serving, not draining: nothing above got through.
    async with tls.channel(node.address, tls=as_(cluster, "admin")) as ch:
        health = await node_pb2_grpc.NodeStub(ch).Health(node_pb2.HealthRequest(),
                                                         timeout=RPC_TIMEOUT)
        assert health.status == "serving"
        # An admin may (the operator's duro drain): the rules are by role, not closed to all.
        owned = await migration_pb2_grpc.MigrationStub(ch).Owned(migration_pb2.OwnedRequest(),
                                                                 timeout=RPC_TIMEOUT)
        assert owned is not None

    # Replication batches as another node: the listener closes the stream without applying.
    stream = await replication_address(cluster, node_id)
    assert await send_hello_and_batch(stream, other_node, cluster.cluster,
                                      as_(cluster, "node", "not-" + other_node)) is None
    assert await send_hello_and_batch(stream, other_node, cluster.cluster, client) is None
    assert await send_hello_and_batch(stream, other_node, cluster.cluster,
                                      as_(cluster, "node", other_node)) is not None


async def open_sockets(address: str, edge_id: str, material: tls.TlsMaterial) -> Any:
    """Open ``NodeSockets.Sockets`` as ``edge_id``; return the first batch (or raise)."""
    async with tls.channel(address, tls=material) as ch:
        call = node_pb2_grpc.NodeSocketsStub(ch).Sockets(
            metadata=((EDGE_ID_METADATA, edge_id),), timeout=RPC_TIMEOUT)
        try:
            return await call.read()
        finally:
            call.cancel()


@pytest.mark.timeout(120)
async def test_an_edge_attaches_only_as_the_edge_in_its_certificate(
    cluster: LocalCluster,
) -> None:
    address = cluster.nodes[0].address
    victim = "edge-us-east"
    assert await open_sockets(address, victim, as_(cluster, "edge", victim)) is not None
    # A node attaches only as its own co-located edge (duro node --edge), never as another
    # edge; an edge certificate never as a node's co-located edge.
    assert await open_sockets(address, "node:eu-west-0",
                              as_(cluster, "node", "eu-west-0")) is not None
    for material, edge, why in (
            (as_(cluster, "edge", "edge-intruder"), victim,
             "duro://edge/edge-intruder may not attach as edge 'edge-us-east'"),
            (as_(cluster, "node", "us-east-0"), victim,
             "duro://node/us-east-0 may not attach as edge 'edge-us-east'"),
            (as_(cluster, "node", "us-east-0"), "node:eu-west-0",
             "duro://node/us-east-0 may not attach as edge 'node:eu-west-0'"),
            (as_(cluster, "edge", "node:eu-west-0"), "node:eu-west-0",
             "may not attach as edge 'node:eu-west-0'"),
            (as_(cluster, "client", "app"), victim, "may not call /duro.v1.NodeSockets")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await open_sockets(address, edge, material)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert why in (err.value.details() or "")


@pytest.mark.timeout(120)
async def test_operators_commands_run_with_the_admin_certificate(cluster: LocalCluster) -> None:
    """``duro status``/``where`` as an operator runs them: with ``--tls-*`` (an admin's)."""
    c = cluster.client_tls
    assert c is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duro.cli", "status", "--etcd", cluster.etcd.endpoint,
        "--cluster", cluster.cluster, "--tls-ca", str(c.ca), "--tls-cert", str(c.cert),
        "--tls-key", str(c.key), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    status = json.loads(out)
    assert {n["node_id"] for n in status["nodes"]} == {n.ready["node_id"] for n in cluster.nodes}
