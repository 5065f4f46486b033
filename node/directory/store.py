"""A directory partition's entries in the keys of the replica group that holds it.

``0x10 | gid | 0x04 | p | id`` → :meth:`Entry.encode`; ``0x10 | gid | 0x05 | p`` → msgpack
``[counter, count]``: ``counter`` is at least every epoch any entry of the partition ever had (a
re-created object's entry starts above it), ``count`` the number of entries. Reads go to RocksDB;
writes are operation lists for ``GroupCommitter.write_raw`` (replicated with the group).
"""

from __future__ import annotations

from duro import _codec
from duro.node.storage import layout
from duro.node.storage.engine import StorageEngine
from duro.node.storage.object_storage import DELETE, PUT
from duro.topology.directory_entry import Entry

__all__ = ["PartitionMeta", "read_entry", "read_meta", "entry_put", "meta_put", "put_ops",
           "delete_ops", "count_entries"]


class PartitionMeta:
    __slots__ = ("counter", "count")

    def __init__(self, counter: int = 0, count: int = 0) -> None:
        self.counter = counter
        self.count = count

    def encode(self) -> bytes:
        return _codec.encode([self.counter, self.count])


def read_meta(engine: StorageEngine, gid: int, p: int) -> PartitionMeta:
    raw = engine.get(layout.dir_meta_key(gid, p))
    if raw is None:
        return PartitionMeta()
    counter, count = _codec.decode(raw)
    return PartitionMeta(int(counter), int(count))


def read_entry(engine: StorageEngine, gid: int, p: int, oid: bytes) -> Entry | None:
    raw = engine.get(layout.dir_key(gid, p, oid))
    return None if raw is None else Entry.decode(oid.hex(), raw)


def entry_put(gid: int, p: int, entry: Entry) -> list:
    return [PUT, layout.dir_key(gid, p, bytes.fromhex(entry.object_id)), entry.encode()]


def meta_put(gid: int, p: int, meta: PartitionMeta) -> list:
    return [PUT, layout.dir_meta_key(gid, p), meta.encode()]


def put_ops(gid: int, p: int, entry: Entry, meta: PartitionMeta) -> list[list]:
    return [entry_put(gid, p, entry), meta_put(gid, p, meta)]


def delete_ops(gid: int, p: int, oid: bytes, meta: PartitionMeta) -> list[list]:
    return [[DELETE, layout.dir_key(gid, p, oid)],
            [PUT, layout.dir_meta_key(gid, p), meta.encode()]]


def count_entries(engine: StorageEngine, gid: int) -> int:
    """Entries of every partition this group holds here (``duro status``; a scan of metas)."""
    lo = layout.group_prefix(gid) + layout.DIR_META
    total = 0
    for _k, v in engine.scan(lo, layout.prefix_end(lo)):
        total += int(_codec.decode(v)[1])
    return total
