"""Directory partitions: which partition an object id belongs to, and where each partition lives.

* ``partition_of(id, n)``: the first four bytes of the id (a keyed hash itself) mod ``n``.
* The **partition map** in etcd: ``/duro/<cluster>/partitions/<p>`` → ``{"group": gid}``, created
  by the placement leader when the partition is first used (create-if-absent, guarded by its
  leadership) and never rewritten; :class:`PartitionView` follows it by watch.
* :class:`DirectorySettings` at ``/duro/<cluster>/settings/directory``: the number of partitions
  (fixed when the cluster is created) and whether a directory from before partitions is still
  being imported (docs/directory.md, "Upgrading").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from etcd3aio import Etcd3Client
from etcd3aio._protobuf import Compare

from duro.topology.etcdkv import get_value
from duro.topology.keys import directory_settings_key, partition_key, partitions_prefix
from duro.topology.watch import PrefixView

__all__ = [
    "DEFAULT_PARTITIONS",
    "DirectorySettings",
    "PartitionView",
    "assign_partition",
    "assign_partitions",
    "directory_settings_key",
    "partition_key",
    "partition_of",
    "partitions_prefix",
    "read_directory_settings",
]

DEFAULT_PARTITIONS = 1024


def partition_of(object_id: bytes, partitions: int) -> int:
    return int.from_bytes(object_id[:4], "big") % partitions


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    partitions: int = DEFAULT_PARTITIONS
    legacy: bool = False  # per-object etcd entries of an older version are still being imported

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DirectorySettings:
        d = json.loads(raw)
        n = int(d.get("partitions", DEFAULT_PARTITIONS))
        if not 1 <= n <= 1 << 20:
            raise ValueError(f"partitions must be between 1 and 2**20, got {n}")
        return cls(partitions=n, legacy=bool(d.get("legacy", False)))


async def read_directory_settings(client: Etcd3Client, cluster: str) -> DirectorySettings | None:
    raw = await get_value(client, directory_settings_key(cluster))
    return None if raw is None else DirectorySettings.from_json(raw)


async def assign_partition(client: Etcd3Client, cluster: str, p: int, gid: int,
                           guard: object) -> int:
    """Create partition ``p``'s map key naming ``gid`` unless it exists; return its group."""
    key = partition_key(cluster, p)
    kv = client.kv
    resp = await kv.txn(
        [Compare(result=Compare.EQUAL, target=Compare.CREATE, key=key.encode(),
                 create_revision=0), guard.compare()],  # type: ignore[attr-defined]
        [kv.txn_op_put(key, json.dumps({"group": gid}).encode())],
        [kv.txn_op_get(key)], timeout=5.0, max_attempts=1)
    if resp.succeeded:
        return gid
    kvs = resp.responses[0].response_range.kvs
    if not kvs:
        raise RuntimeError("not the placement leader any more")
    return int(json.loads(kvs[0].value)["group"])


TXN_KEYS = 100  # partitions per transaction: etcd allows 128 compares and 128 ops by default


async def assign_partitions(client: Etcd3Client, cluster: str, wanted: dict[int, int],
                            guard: object) -> dict[int, int]:
    """Create each partition's map key (``wanted``: partition -> group) unless it exists, up to
    ``TXN_KEYS`` in one transaction; return every partition's group, as written or as found."""
    out: dict[int, int] = {}
    items = sorted(wanted.items())
    kv = client.kv
    for i in range(0, len(items), TXN_KEYS):
        chunk = items[i:i + TXN_KEYS]
        keys = [partition_key(cluster, p).encode() for p, _ in chunk]
        resp = await kv.txn(
            [*(Compare(result=Compare.EQUAL, target=Compare.CREATE, key=k, create_revision=0)
               for k in keys), guard.compare()],  # type: ignore[attr-defined]
            [kv.txn_op_put(k, json.dumps({"group": gid}).encode())
             for k, (_, gid) in zip(keys, chunk)],
            [], timeout=5.0, max_attempts=1)
        if resp.succeeded:
            out.update(chunk)
            continue
        # Another leader's assignment got there first for some of them, or we lead no more:
        # one by one, which tells the two apart and keeps what exists.
        for p, gid in chunk:
            out[p] = await assign_partition(client, cluster, p, gid, guard)
    return out


def _parse(name: str, raw: bytes, _rev: int, _lease: int) -> int:
    return int(json.loads(raw)["group"])


class PartitionView(PrefixView[int]):
    """partition -> the group that holds it, by watch."""

    def __init__(self, client: Etcd3Client, cluster: str) -> None:
        super().__init__(client, partitions_prefix(cluster), _parse, name="partition-view")

    def group_of(self, p: int) -> int | None:
        return self.items.get(f"{p:06d}")
