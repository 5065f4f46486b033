"""Operator views of a cluster, read from etcd: ``duro status`` and ``duro where``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from etcd3aio import Etcd3Client

from duro._ids import ObjectId, namespace_key
from duro._transport import message_limits
from duro.client.router import app_key
from duro.errors import InvalidArgumentError
from duro.topology.etcdkv import _PROCESS, etcd_client, get_prefix, get_value
from duro.topology.groups import GroupConfig, groups_prefix, primary_gone
from duro.topology.keys import leader_key
from duro.topology.nodes import NodeInfo, nodes_prefix
from duro.topology.partitions import DirectorySettings, partitions_prefix, read_directory_settings
from duro.topology.replication_settings import ReplicationSettings, read_settings

__all__ = ["status", "read_status", "where", "migrate", "drain", "undrain", "set_draining"]


async def _bindings(client: Etcd3Client, cluster: str, app: Any) -> dict[str, str]:
    if app is not None:
        from duro.client import _bindings_of

        return _bindings_of(app)
    value = await get_value(client, app_key(cluster))
    return dict(json.loads(value)) if value is not None else {}


async def _groups(client: Etcd3Client, cluster: str) -> dict[int, GroupConfig]:
    return {g.gid: g for g in (GroupConfig.from_json(v) for _, v in
                               await get_prefix(client, groups_prefix(cluster)))}


def _group_view(g: GroupConfig, nodes: dict[str, NodeInfo], floor: int) -> dict[str, Any]:
    gone = primary_gone(g, nodes)
    return {
        "gid": g.gid, "epoch": g.epoch, "primary": g.primary, "serving": gone is None,
        "replicas": [{"node": m, "in_sync": g.sid_of(m) is not None, "live": m in nodes}
                     for m in g.replicas],
        "in_sync": len(g.in_sync), "under_replicated": len(g.in_sync) < len(g.replicas),
        "writable": gone is None and len(g.in_sync) >= floor,
        **({"why_not_serving": gone} if gone else {}),
    }


async def status(etcd: str, cluster: str) -> dict[str, Any]:
    """Nodes (region, load, the groups they lead, draining or not), replica groups (members,
    sync, directory partitions held), the placement leader, and which groups are
    under-replicated or have no serving primary, which nodes are draining. Everything is read
    from etcd: O(nodes + partitions), whatever the number of objects (docs/directory.md)."""
    async with etcd_client(etcd) as client:
        return await read_status(client, cluster)


async def read_status(client: Etcd3Client, cluster: str, *,
                      partitions: bool = True) -> dict[str, Any]:
    """:func:`status` with an etcd client the caller holds (the console keeps one open).
    ``partitions=False`` skips counting the directory partitions each group holds (one read of
    every partition's key: the console, sampling every second, leaves it out)."""
    nodes = {n.node_id: n for n in (NodeInfo.from_json(v) for _, v in
                                     await get_prefix(client, nodes_prefix(cluster)))}
    leader = await get_value(client, leader_key(cluster))
    groups = await _groups(client, cluster)
    settings = await read_settings(client, cluster) or ReplicationSettings()
    directory = await read_directory_settings(client, cluster) or DirectorySettings()
    held: Counter[int] = Counter(
        int(json.loads(v)["group"]) for _, v in
        await get_prefix(client, partitions_prefix(cluster))) if partitions else Counter()
    views = [_group_view(g, nodes, settings.floor) for g in sorted(groups.values(),
                                                                   key=lambda g: g.gid)]
    for v in views:
        v["partitions"] = held.get(v["gid"], 0) if partitions else None
    return {
        "cluster": cluster,
        "leader": json.loads(leader) if leader else None,
        "replication": {"replicas": settings.replicas, "min_in_sync": settings.min_in_sync},
        "directory": {"partitions": directory.partitions,
                      "assigned": sum(held.values()) if partitions else None,
                      "importing_legacy": directory.legacy},
        "nodes": [
            {"node_id": n.node_id, "address": n.address, "region": n.region, "zone": n.zone,
             "load": n.load, "capacity": n.capacity,
             "leads": sorted(g.gid for g in groups.values() if g.primary == n.node_id),
             "draining": n.draining}
            for n in sorted(nodes.values(), key=lambda n: (n.region, n.node_id))
        ],
        "groups": views,
        "under_replicated_groups": [v["gid"] for v in views if v["under_replicated"]],
        "groups_without_primary": [v["gid"] for v in views if not v["serving"]],
        "draining_nodes": sorted(n.node_id for n in nodes.values() if n.draining),
        "regions": sorted({n.region for n in nodes.values()}),
    }


async def where(etcd: str, cluster: str, app: Any, binding: str, name: str) -> dict[str, Any]:
    """The object's directory entry (group, epoch, region), asked at its partition, and where
    its group is served: the primary and each member, live and in sync or not. No entry: never
    called yet, or it held nothing and left the directory."""
    from duro.client.router import Router  # noqa: PLC0415

    async with etcd_client(etcd) as client:
        bindings = await _bindings(client, cluster, app)
        if binding not in bindings:
            raise InvalidArgumentError(f"unknown binding {binding!r}; known: {sorted(bindings)}")
        oid = ObjectId.from_name(namespace_key(bindings[binding]), name)
        async with Router(client, cluster=cluster) as router:
            entry = await router.directory.resolve(oid.raw, create=False, fresh=True)
        nodes = {n.node_id: n for n in
                 (NodeInfo.from_json(v) for _, v in await get_prefix(client, nodes_prefix(cluster)))}
        groups = await _groups(client, cluster)
        settings = await read_settings(client, cluster) or ReplicationSettings()
    if entry is None:
        return {"binding": binding, "name": name, "id": oid.hex(), "node": None}
    out: dict[str, Any] = {"binding": binding, "name": name, "id": oid.hex(),
                           "region": entry.region, "epoch": entry.epoch}
    g = groups.get(entry.group)
    node_id = g.primary if g is not None else entry.node
    if g is not None:
        out["group"] = _group_view(g, nodes, settings.floor)
    node = nodes.get(node_id)
    live = node is not None and (g is None or primary_gone(g, nodes) is None)
    out.update(node=node_id, live=live, address=node.address if node and live else None)
    return out


# -- moving objects ------------------------------------------------------------------------------

def _choose_target(nodes: dict[str, NodeInfo], exclude: str, region: str | None,
                   near: str = "") -> str:
    from duro.topology.placement_policy import Candidate, NoLiveNodeError, choose_node

    cands = [Candidate(n.node_id, n.region, n.zone, n.load, n.capacity)
             for n in nodes.values()
             if n.node_id != exclude and not n.draining and (region is None or n.region == region)]
    try:
        return choose_node(cands, caller_region=region or near)
    except NoLiveNodeError:
        where = f"region {region!r}" if region else "the cluster"
        raise InvalidArgumentError(f"no live node in {where} to move to") from None


async def _move(address: str, oid: bytes, binding: str, target: str,
                material: Any = _PROCESS) -> dict[str, Any]:
    import grpc

    from duro._pb import migration_pb2, migration_pb2_grpc

    async with _channel(address, material) as channel:
        stub = migration_pb2_grpc.MigrationStub(channel)
        try:
            r = await stub.Move(migration_pb2.MoveRequest(object_id=oid, binding=binding,
                                                          target_node=target), timeout=120.0)
        except grpc.aio.AioRpcError as exc:
            return {"outcome": "error", "detail": f"{exc.code().name}: {exc.details()}"}
    return {"outcome": r.outcome, "detail": r.detail, "epoch": r.new_epoch,
            "held_ms": round(r.held_ms, 2), "keys": r.keys, "bytes": r.bytes}


async def migrate(etcd: str, cluster: str, app: Any, binding: str, name: str, *,
                  to_region: str | None = None, to_node: str | None = None,
                  tls: Any = _PROCESS) -> dict[str, Any]:
    """Move one object to a node (or the least-loaded node of a region), live. ``tls``: the
    certificate to ask the owner with (default: this process's; the console passes the admin
    one it holds)."""
    info = await where(etcd, cluster, app, binding, name)
    if not info.get("node"):
        raise InvalidArgumentError(f"{binding}/{name} was never called: nothing to move")
    if not info.get("live"):
        why = (info.get("group") or {}).get("why_not_serving", "its node is not live")
        return {"from": info["node"], "to": to_node or to_region, "outcome": "error",
                "detail": f"no node serves it right now ({why}); retry in a moment"}
    nodes = await _live_nodes(etcd, cluster)
    if to_node:
        if to_node not in nodes:
            raise InvalidArgumentError(f"node {to_node!r} is not live")
        target = to_node
    else:
        target = _choose_target(nodes, info["node"], to_region)
    result = await _move(info["address"], bytes.fromhex(info["id"]), binding, target, tls)
    return {"from": info["node"], "to": target, **result}


async def _live_nodes(etcd: str, cluster: str) -> dict[str, NodeInfo]:
    async with etcd_client(etcd) as client:
        return {n.node_id: n for n in (NodeInfo.from_json(v) for _, v in
                                       await get_prefix(client, nodes_prefix(cluster)))}


def _channel(address: str, material: Any) -> Any:
    from duro import tls as _tls

    if material is _PROCESS:
        return _tls.channel(address, options=message_limits())
    return _tls.channel(address, tls=material, options=message_limits())


async def undrain(etcd: str, cluster: str, node_id: str, *, tls: Any = _PROCESS
                  ) -> dict[str, Any]:
    """The inverse of :func:`drain`: mark ``node_id`` as not draining, so that placement puts
    new objects on it again (the objects drained away stay where they went; the rebalancer may
    bring some back by their traffic)."""
    node = (await _live_nodes(etcd, cluster)).get(node_id)
    if node is None:
        raise InvalidArgumentError(f"node {node_id!r} is not live")
    draining = await set_draining(node.address, False, tls)
    return {"node": node_id, "draining": draining, "was_draining": node.draining}


async def set_draining(address: str, draining: bool, tls: Any = _PROCESS) -> bool:
    """Ask the node at ``address`` to mark itself draining or not (written to etcd before it
    answers); returns the flag it now has."""
    from duro._pb import migration_pb2, migration_pb2_grpc

    async with _channel(address, tls) as channel:
        r = await migration_pb2_grpc.MigrationStub(channel).SetDraining(
            migration_pb2.DrainingRequest(draining=draining), timeout=10.0)
    return bool(r.draining)


async def drain(etcd: str, cluster: str, node_id: str, *, concurrency: int = 8,
                progress: Any = None, tls: Any = _PROCESS) -> dict[str, Any]:
    """Move every object off ``node_id`` (marked draining first), reporting progress."""
    import asyncio

    from duro._pb import migration_pb2, migration_pb2_grpc

    nodes = await _live_nodes(etcd, cluster)
    source = nodes.get(node_id)
    if source is None:
        raise InvalidArgumentError(f"node {node_id!r} is not live")
    async with _channel(source.address, tls) as channel:
        stub = migration_pb2_grpc.MigrationStub(channel)
        await stub.SetDraining(migration_pb2.DrainingRequest(draining=True), timeout=10.0)
        owned = (await stub.Owned(migration_pb2.OwnedRequest(), timeout=60.0)).objects
    others = {k: v for k, v in nodes.items() if k != node_id}
    done = {"moved": 0, "failed": 0, "total": len(owned)}
    sem = asyncio.Semaphore(concurrency)

    async def one(obj: Any) -> None:
        async with sem:
            target = _choose_target(others, node_id, None, near=source.region)
            res = await _move(source.address, obj.object_id, obj.binding, target, tls)
            done["moved" if res["outcome"] == "released" else "failed"] += 1
            if progress is not None:
                progress(done, obj.object_id.hex(), target, res)

    await asyncio.gather(*(one(o) for o in owned))
    return {"node": node_id, **done}
