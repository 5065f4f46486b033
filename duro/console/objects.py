"""The object inspector's data (docs/console.md): find an object by binding and name (or its id)
and describe it, as a plain dict.

Where it is comes from the directory (the entry at its partition, asked fresh) and etcd (its
replica group: members, in sync, live); what it holds from its owner's ``NodeInspect.Inspect``
(node/inspect_service.py): keys, stored bytes, alarm, open sockets, decayed calls by region (the
migration planner's statistic; only while the object is in memory), move history.
"""

from __future__ import annotations

from typing import Any

import grpc
from etcd3aio import Etcd3Client

from duro._ids import ObjectId, namespace_key
from duro.client.admin import _group_view, _groups
from duro.console.snapshot import NodeSampler, move_dict
from duro.errors import InvalidArgumentError
from duro.topology.etcdkv import get_prefix
from duro.topology.groups import primary_gone
from duro.topology.nodes import NodeInfo, nodes_prefix
from duro.topology.replication_settings import ReplicationSettings, read_settings

__all__ = ["inspect_object", "object_id_of"]


def object_id_of(bindings: dict[str, str], binding: str, name: str = "",
                 object_id: str = "") -> bytes:
    """The 32-byte id of ``binding``/``name``, or of ``object_id`` (64 hex digits)."""
    if object_id:
        try:
            raw = bytes.fromhex(object_id.strip())
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise InvalidArgumentError("an object id is 64 hex digits")
        return raw
    if binding not in bindings:
        raise InvalidArgumentError(f"unknown binding {binding!r}; known: {sorted(bindings)}")
    if not name:
        raise InvalidArgumentError("give a name or an id")
    return ObjectId.from_name(namespace_key(bindings[binding]), name).raw


async def inspect_object(client: Etcd3Client, router: Any, cluster: str,
                         bindings: dict[str, str], sampler: NodeSampler, *, binding: str = "",
                         name: str = "", object_id: str = "") -> dict[str, Any]:
    """Where the object is and what it holds. ``router``: a :class:`duro.client.Router` (for its
    directory client). ``found`` is False for an object never called (or that stored nothing
    and left the directory)."""
    oid = object_id_of(bindings, binding, name, object_id)
    out: dict[str, Any] = {"id": oid.hex(), "binding": binding or None, "name": name or None}
    entry = await router.directory.resolve(oid, create=False, fresh=True)
    if entry is None:
        return {**out, "found": False}
    nodes = {n.node_id: n for n in (NodeInfo.from_json(v) for _, v in
                                     await get_prefix(client, nodes_prefix(cluster)))}
    groups = await _groups(client, cluster)
    settings = await read_settings(client, cluster) or ReplicationSettings()
    g = groups.get(entry.group)
    owner = g.primary if g is not None else entry.node
    node = nodes.get(owner)
    out.update(found=True, binding=entry.binding, epoch=entry.epoch, region=entry.region,
               group=_group_view(g, nodes, settings.floor) if g is not None else None,
               node=owner, zone=node.zone if node else None,
               live=node is not None and (g is None or primary_gone(g, nodes) is None))
    if not out["live"] or node is None:
        return {**out, "state": None, "error": "no node serves it right now"}
    try:
        r = await sampler.inspect(node.address, oid)
    except grpc.RpcError as exc:
        return {**out, "state": None, "error": f"{exc.code().name}: {exc.details()}"}
    if not r.owned:  # moved between the lookup and the question: the next refresh finds it
        return {**out, "state": None, "error": f"{owner} does not serve it now (moving?)"}
    out["state"] = {
        "active": r.active, "moving": r.moving, "keys": r.keys, "keys_capped": r.keys_capped,
        "stored_bytes": r.stored_bytes, "alarm_at": r.alarm_at if r.has_alarm else None,
        "sockets": r.sockets, "regions": {x.region: round(x.calls, 2) for x in r.regions},
        "history": [move_dict(m) for m in r.history],
    }
    return out
