"""The console's admin actions (docs/console.md): move an object, drain or undrain a node, made
with the admin certificate the edge holds for them (``tls``; the process's own without TLS).

The same operations as ``duro migrate`` / ``drain`` / ``undrain`` (client/admin.py), asked of
the nodes' ``Migration`` service, which admits only members and admins (node/access.py).
"""

from __future__ import annotations

from typing import Any

from etcd3aio import Etcd3Client

from duro.client.admin import _choose_target, _groups, _move, drain, set_draining
from duro.errors import InvalidArgumentError
from duro.topology.etcdkv import get_prefix
from duro.topology.groups import primary_gone
from duro.topology.nodes import NodeInfo, nodes_prefix

__all__ = ["ConsoleActions"]


class ConsoleActions:
    def __init__(self, *, etcd_endpoint: str, etcd: Etcd3Client, router: Any, cluster: str,
                 tls: Any) -> None:
        self.etcd_endpoint = etcd_endpoint
        self.etcd, self.router, self.cluster, self.tls = etcd, router, cluster, tls

    async def _nodes(self) -> dict[str, NodeInfo]:
        return {n.node_id: n for n in (NodeInfo.from_json(v) for _, v in
                                       await get_prefix(self.etcd, nodes_prefix(self.cluster)))}

    async def migrate(self, oid: bytes, *, to_node: str | None = None,
                      to_region: str | None = None) -> dict[str, Any]:
        """Move the object (live) to ``to_node`` or the least-loaded node of ``to_region``."""
        if not to_node and not to_region:
            raise InvalidArgumentError("give to_node or to_region")
        entry = await self.router.directory.resolve(oid, create=False, fresh=True)
        if entry is None:
            raise InvalidArgumentError("the object was never called: nothing to move")
        nodes = await self._nodes()
        g = (await _groups(self.etcd, self.cluster)).get(entry.group)
        owner = g.primary if g is not None else entry.node
        if g is None or primary_gone(g, nodes) is not None or owner not in nodes:
            return {"from": owner, "outcome": "error",
                    "detail": "no node serves it right now; retry in a moment"}
        if to_node:
            if to_node not in nodes:
                raise InvalidArgumentError(f"node {to_node!r} is not live")
            target = to_node
        else:
            target = _choose_target(nodes, owner, to_region)
        res = await _move(nodes[owner].address, oid, entry.binding, target, self.tls)
        return {"id": oid.hex(), "binding": entry.binding, "from": owner, "to": target, **res}

    async def set_draining(self, node_id: str, draining: bool) -> dict[str, Any]:
        node = (await self._nodes()).get(node_id)
        if node is None:
            raise InvalidArgumentError(f"node {node_id!r} is not live")
        return {"node": node_id, "draining": await set_draining(node.address, draining, self.tls)}

    async def drain(self, node_id: str) -> dict[str, Any]:
        return await drain(self.etcd_endpoint, self.cluster, node_id, tls=self.tls)
