"""The live-node view: etcd membership, followed by watch.

A node is live while its leased key ``/duro/<cluster>/nodes/<id>`` exists (see
``duro.node.membership``); its :class:`NodeInfo` carries the lease it is registered under, which
a replica group's configuration compares with (docs/replication.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from etcd3aio import Etcd3Client

from duro.client.watch import PrefixView
from duro.node.membership import NodeInfo, nodes_prefix

__all__ = ["NodeView"]


def _parse(name: str, value: bytes, _rev: int, lease: int) -> NodeInfo:
    info = NodeInfo.from_json(value)
    return dataclasses.replace(info, lease=lease) if lease and info.lease != lease else info


class NodeView(PrefixView[NodeInfo]):
    """``nodes`` maps node id -> :class:`NodeInfo` for every registered (live) node."""

    def __init__(
        self,
        client: Etcd3Client,
        cluster: str,
        *,
        on_update: Callable[[str, NodeInfo | None], None] | None = None,
    ) -> None:
        super().__init__(client, nodes_prefix(cluster), _parse, name="node-view")
        if on_update is not None:
            self.callbacks.append(lambda name, _old, new: on_update(name, new))

    @property
    def nodes(self) -> dict[str, NodeInfo]:
        return self.items

    def live(self) -> list[NodeInfo]:
        return list(self.items.values())
