"""Operator views of a cluster, read from etcd: ``duro status`` and ``duro where``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from etcd3aio import Etcd3Client

from duro._ids import ObjectId, namespace_key
from duro.client.etcdkv import get_prefix, get_value
from duro.client.router import app_key
from duro.errors import InvalidArgumentError
from duro.node.membership import NodeInfo, nodes_prefix
from duro.placement.directory import Directory, Entry, dir_prefix
from duro.placement.election import leader_key

__all__ = ["status", "where"]


async def _bindings(client: Etcd3Client, cluster: str, app: Any) -> dict[str, str]:
    if app is not None:
        from duro.client import _bindings_of

        return _bindings_of(app)
    value = await get_value(client, app_key(cluster))
    return dict(json.loads(value)) if value is not None else {}


async def status(etcd: str, cluster: str) -> dict[str, Any]:
    """Nodes (with region and object count), the placement leader, objects per region."""
    async with Etcd3Client([etcd]) as client:
        nodes = [NodeInfo.from_json(v) for _, v in await get_prefix(client, nodes_prefix(cluster))]
        leader = await get_value(client, leader_key(cluster))
        per_node: Counter[str] = Counter()
        prefix = dir_prefix(cluster)
        total = 0
        for key, value in await get_prefix(client, prefix):
            e = Entry.from_json(key[len(prefix):], value)
            per_node[e.node] += 1
            total += 1
    live = {n.node_id for n in nodes}
    return {
        "cluster": cluster,
        "leader": json.loads(leader) if leader else None,
        "objects": total,
        "nodes": [
            {"node_id": n.node_id, "address": n.address, "region": n.region, "zone": n.zone,
             "load": n.load, "capacity": n.capacity, "objects": per_node.get(n.node_id, 0)}
            for n in sorted(nodes, key=lambda n: (n.region, n.node_id))
        ],
        "down_nodes_with_objects": sorted(k for k in per_node if k not in live),
        "regions": sorted({n.region for n in nodes}),
    }


async def where(etcd: str, cluster: str, app: Any, binding: str, name: str) -> dict[str, Any]:
    """Owner node, region and epoch of ``binding``/``name`` (no entry: never called yet)."""
    async with Etcd3Client([etcd]) as client:
        bindings = await _bindings(client, cluster, app)
        if binding not in bindings:
            raise InvalidArgumentError(f"unknown binding {binding!r}; known: {sorted(bindings)}")
        oid = ObjectId.from_name(namespace_key(bindings[binding]), name)
        entry = await Directory(client, cluster).get(oid.hex())
        nodes = {n.node_id: n for n in
                 (NodeInfo.from_json(v) for _, v in await get_prefix(client, nodes_prefix(cluster)))}
    if entry is None:
        return {"binding": binding, "name": name, "id": oid.hex(), "node": None}
    node = nodes.get(entry.node)
    return {
        "binding": binding, "name": name, "id": oid.hex(), "node": entry.node,
        "region": entry.region, "epoch": entry.epoch, "live": node is not None,
        "address": node.address if node else None,
    }
