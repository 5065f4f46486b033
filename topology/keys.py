"""Every etcd key of the cluster's topology, in one place (the records' modules re-export theirs).

    /duro/<cluster>/nodes/<node id>             a node's registration (nodes.NodeInfo), leased
    /duro/<cluster>/groups/<gid:010d>           a replica group's configuration (groups.GroupConfig)
    /duro/<cluster>/partitions/<p:06d>          a directory partition's assignment (partitions)
    /duro/<cluster>/settings/directory          the directory's settings (partitions)
    /duro/<cluster>/settings/replication        the replication settings (replication_settings)
    /duro/<cluster>/placement/leader            the placement leader's record (its election)
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "nodes_prefix", "node_key", "groups_prefix", "group_key", "partitions_prefix",
    "partition_key", "settings_prefix", "directory_settings_key", "replication_settings_key", "leader_key",
]


def _under(path: str) -> Callable[[str], str]:
    """The function giving ``/duro/<cluster>/<path>`` for a cluster."""

    def key(cluster: str) -> str:
        return f"/duro/{cluster}/{path}"

    key.__name__ = key.__qualname__ = path.strip("/").replace("/", "_")
    return key


nodes_prefix = _under("nodes/")
groups_prefix = _under("groups/")
partitions_prefix = _under("partitions/")
settings_prefix = _under("settings/")
directory_settings_key = _under("settings/directory")
replication_settings_key = _under("settings/replication")
leader_key = _under("placement/leader")


def node_key(cluster: str, node_id: str) -> str:
    return f"{nodes_prefix(cluster)}{node_id}"


def group_key(cluster: str, gid: int) -> str:
    return f"{groups_prefix(cluster)}{gid:010d}"


def partition_key(cluster: str, p: int) -> str:
    return f"{partitions_prefix(cluster)}{p:06d}"
