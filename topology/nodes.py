"""Nodes: their registration records in etcd (:class:`NodeInfo`) and the live-node view.

A node is live while its leased key ``/duro/<cluster>/nodes/<id>`` exists (written and kept alive
by ``duro.node.membership``); its :class:`NodeInfo` carries the lease it is registered under,
which a replica group's configuration compares with (docs/replication.md).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from etcd3aio import Etcd3Client

from duro.topology.keys import node_key, nodes_prefix
from duro.topology.watch import PrefixView

__all__ = ["NodeView", "NodeInfo", "node_key", "nodes_prefix"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The registration value of one node."""

    node_id: str
    address: str  # host:port of the node's gRPC server
    region: str
    zone: str = ""
    capacity: int = 1000
    load: int = 0
    started_at: float = 0.0  # wall-clock seconds (informational)
    draining: bool = False  # being emptied (duro drain): placement puts no new object here
    storage_id: str = ""  # the node's RocksDB identity: a wiped data directory gets a new one
    replication_address: str = ""  # host:port of its replication stream listener
    lease: int = 0  # the etcd lease this registration is held by (set when written and read)
    metrics_address: str = ""  # host:port of its Prometheus /metrics ("": none; duro top)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeInfo:
        d: dict[str, Any] = json.loads(data)
        return cls(
            node_id=str(d["node_id"]),
            address=str(d["address"]),
            region=str(d.get("region", "")),
            zone=str(d.get("zone", "")),
            capacity=int(d.get("capacity", 1000)),
            load=int(d.get("load", 0)),
            started_at=float(d.get("started_at", 0.0)),
            draining=bool(d.get("draining", False)),
            storage_id=str(d.get("storage_id", "")),
            replication_address=str(d.get("replication_address", "")),
            lease=int(d.get("lease", 0)),
            metrics_address=str(d.get("metrics_address", "")),
        )


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
