"""``PartitionService``: this node's directory partitions — those held by the replica groups it
serves as primary (docs/directory.md).

Every operation on one object runs alone (a lock per object id while it is in use), reads the
entry from RocksDB, and writes through ``GroupCommitter.write_raw`` in the partition's group, so a
create, a switch or a forget is acknowledged only once it is durable on every in-sync copy of the
group, and only while this node still holds the lease it leads the group with. Lookups answer the
same way (after any write of that object in flight), which makes them linearizable: no deposed
primary answers with an entry that moved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator

from etcd3aio import Etcd3Client

from duro.client.etcdkv import get_value
from duro.errors import InvalidArgumentError, UnavailableError
from duro.node.directory import store
from duro.node.directory.entry import Entry
from duro.node.directory.partitions import DirectorySettings, PartitionView, partition_of
from duro.node.replication.groups import GroupConfig, GroupView
from duro.placement.policy import Candidate, NoLiveNodeError, choose_node

if TYPE_CHECKING:
    from duro.node.membership import NodeInfo
    from duro.node.replication.manager import ReplicationManager
    from duro.placement.nodes import NodeView

__all__ = ["PartitionService", "NotHere", "Unassigned", "legacy_dir_key", "legacy_entry"]

log = logging.getLogger("duro.node.directory")


def legacy_dir_key(cluster: str, oid_hex: str) -> str:
    """Where a cluster from before partitions kept an object's entry (docs/directory.md)."""
    return f"/duro/{cluster}/dir/{oid_hex}"


class NotHere(Exception):
    """This node does not serve the object's partition; ``node`` does (when known)."""

    def __init__(self, node: str, why: str) -> None:
        super().__init__(why)
        self.node = node


class Unassigned(Exception):
    """The partition has no group yet (the placement leader assigns it on first use)."""


class PartitionService:
    def __init__(
        self, node_id: str, cluster: str, etcd: Etcd3Client, mgr: ReplicationManager,
        nodes: NodeView, groups: GroupView, partitions: PartitionView,
        settings: Any,  # () -> DirectorySettings
    ) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.etcd = etcd
        self.mgr = mgr
        self.nodes = nodes
        self.groups = groups
        self.partitions = partitions
        self._settings = settings
        self._locks: dict[bytes, asyncio.Lock] = {}
        self._metas: dict[tuple[int, int], store.PartitionMeta] = {}
        self._assigned: dict[str, int] = {}  # placements per node since its last load report
        self.created = 0
        self.forgotten = 0
        self.imported = 0
        mgr.on_promoted.append(lambda prim: self._forget_metas(prim.gid))
        nodes.callbacks.append(lambda node, _old, _new: self._assigned.pop(node, None))

    @property
    def settings(self) -> DirectorySettings | None:
        return self._settings()

    def _forget_metas(self, gid: int) -> None:
        for key in [k for k in self._metas if k[0] == gid]:
            del self._metas[key]

    # -- where a partition is ------------------------------------------------------------------
    def _locate(self, oid: bytes) -> tuple[int, int]:
        """(partition, group) of ``oid``, if this node serves that group; else raise."""
        if not isinstance(oid, bytes) or len(oid) != 32:
            raise InvalidArgumentError("object id must be 32 bytes")
        if self.settings is None:
            # Not known yet: in particular whether an older directory is being imported, which
            # decides whether a missing entry may be created (docs/directory.md, "Upgrading").
            raise UnavailableError("the directory settings are not known here yet; retry")
        p = partition_of(oid, self.settings.partitions)
        gid = self.partitions.group_of(p)
        if gid is None:
            raise Unassigned(f"partition {p} has no group yet")
        if self.mgr.serving(gid) is None:
            g = self.groups.get(gid)
            raise NotHere(g.primary if g is not None else "",
                          f"partition {p} is held by group {gid}, not served here")
        return p, gid

    @asynccontextmanager
    async def _alone(self, oid: bytes) -> AsyncIterator[None]:
        lock = self._locks.get(oid)
        if lock is None:
            lock = self._locks[oid] = asyncio.Lock()
        async with lock:
            yield
        if not lock.locked() and self._locks.get(oid) is lock:
            del self._locks[oid]

    def _meta(self, gid: int, p: int) -> store.PartitionMeta:
        meta = self._metas.get((gid, p))
        if meta is None:
            meta = self._metas[(gid, p)] = store.read_meta(self.mgr.engine, gid, p)
        return meta

    def _answer(self, gid: int, value: Any) -> Any:
        """Return ``value`` only while this node still leads ``gid`` with its lease."""
        prim = self.mgr.serving(gid)
        if prim is None or not self.mgr.holds_lease(prim.config):
            raise UnavailableError(f"group {gid} is no longer served here; ask again")
        return value

    async def _write(self, gid: int, ops: list[list]) -> None:
        await self.mgr.committer.write_raw(gid, ops)

    # -- resolve ---------------------------------------------------------------------------------
    async def resolve(self, oid: bytes, binding: str, create: bool, caller_region: str = "",
                      location_hint: str = "") -> Entry | None:
        """The object's entry; created (placed) if it has none and ``create``."""
        p, gid = self._locate(oid)
        async with self._alone(oid):
            entry = store.read_entry(self.mgr.engine, gid, p, oid)
            if entry is None and self.settings.legacy:
                entry = await self._import_legacy(gid, p, oid)
            if entry is None and create:
                if not binding:
                    raise InvalidArgumentError("binding is required to create an entry")
                entry = await self._create(gid, p, oid, binding, caller_region, location_hint)
            return self._answer(gid, entry)

    async def _create(self, gid: int, p: int, oid: bytes, binding: str, region: str,
                      hint: str) -> Entry:
        target_node, target_gid = self._place(region, hint)
        meta = self._meta(gid, p)
        meta.counter += 1
        meta.count += 1
        entry = Entry(oid.hex(), sys.intern(binding), target_gid, meta.counter,
                      self.nodes.nodes[target_node].region)
        try:
            await self._write(gid, store.put_ops(gid, p, entry, meta))
        except BaseException:
            meta.count -= 1  # (the counter may stay ahead: it only has to be at least)
            raise
        self._assigned[target_node] = self._assigned.get(target_node, 0) + 1
        self.created += 1
        return entry

    def _led(self) -> dict[str, int]:
        """node id -> the group new objects placed on it go to (home group first)."""
        from duro.placement.groups import primary_gone  # noqa: PLC0415 - placement imports us

        out: dict[str, int] = {}
        nodes = self.nodes.nodes
        for g in sorted(self.groups.all(), key=lambda g: (g.home != g.primary, g.gid)):
            if g.primary not in out and primary_gone(g, nodes) is None:
                out[g.primary] = g.gid
        return out

    def _candidates(self, led: dict[str, int]) -> Iterator[Candidate]:
        for n in self.nodes.nodes.values():
            if n.draining or n.node_id not in led:
                continue
            yield _candidate(n, self._assigned.get(n.node_id, 0))

    def _place(self, region: str, hint: str) -> tuple[str, int]:
        led = self._led()
        try:
            node = choose_node(list(self._candidates(led)), region, hint)
        except NoLiveNodeError:
            raise UnavailableError("no node serves a replica group right now; retry") from None
        return node, led[node]

    # -- legacy entries (upgrading) --------------------------------------------------------------
    async def _import_legacy(self, gid: int, p: int, oid: bytes) -> Entry | None:
        key = legacy_dir_key(self.cluster, oid.hex())
        try:
            raw = await get_value(self.etcd, key)
        except Exception as exc:
            raise UnavailableError(f"cannot read the legacy directory: {exc}") from None
        if raw is None:
            return None
        entry = legacy_entry(oid.hex(), raw, self.groups.all())
        meta = self._meta(gid, p)
        meta.counter = max(meta.counter, entry.epoch)
        meta.count += 1
        await self._write(gid, store.put_ops(gid, p, entry, meta))
        self.imported += 1
        try:
            await self.etcd.kv.delete(key.encode(), timeout=5.0)
        except Exception:
            pass  # the leader's import deletes it (create-if-absent then sees it exists)
        return entry

    async def import_entry(self, entry: Entry) -> bool:
        """Create-if-absent without placement; True if created."""
        oid = bytes.fromhex(entry.object_id)
        p, gid = self._locate(oid)
        async with self._alone(oid):
            if store.read_entry(self.mgr.engine, gid, p, oid) is not None:
                return False
            meta = self._meta(gid, p)
            meta.counter = max(meta.counter, entry.epoch)
            meta.count += 1
            await self._write(gid, store.put_ops(gid, p, entry, meta))
            self.imported += 1
            return self._answer(gid, True)

    # -- switch (migration) and forget (empty objects) ----------------------------------------
    async def switch(self, oid: bytes, expected_group: int, expected_epoch: int, new_group: int,
                     new_region: str) -> tuple[bool, Entry | None]:
        """Compare-and-swap: (expected_group, expected_epoch) -> (new_group, epoch + 1).
        ``new_group == expected_group`` claims the object at the next epoch (a fence)."""
        p, gid = self._locate(oid)
        async with self._alone(oid):
            entry = store.read_entry(self.mgr.engine, gid, p, oid)
            if entry is None or (entry.group, entry.epoch) != (expected_group, expected_epoch):
                return self._answer(gid, (False, entry))
            new = Entry(entry.object_id, entry.binding, new_group, entry.epoch + 1,
                        sys.intern(new_region or entry.region))
            meta = self._meta(gid, p)
            meta.counter = max(meta.counter, new.epoch)
            await self._write(gid, store.put_ops(gid, p, new, meta))
            return self._answer(gid, (True, new))

    async def forget(self, oid: bytes, group: int, epoch: int) -> bool:
        p, gid = self._locate(oid)
        async with self._alone(oid):
            entry = store.read_entry(self.mgr.engine, gid, p, oid)
            if entry is None or (entry.group, entry.epoch) != (group, epoch):
                return self._answer(gid, False)
            meta = self._meta(gid, p)
            meta.count = max(0, meta.count - 1)
            await self._write(gid, store.delete_ops(gid, p, oid, meta))
            self.forgotten += 1
            return self._answer(gid, True)


def legacy_entry(oid_hex: str, raw: bytes, groups: list[GroupConfig]) -> Entry:
    """An entry of the etcd directory from before partitions: it names a node (whose home group
    now holds the object's keys: the node moves them there when it starts) or, if written by a
    version with replica groups, a group."""
    d = json.loads(raw)
    gid = int(d.get("group") or 0)
    if not gid:
        node = str(d["node"])
        home = [g for g in groups if g.home == node]
        if not home:
            raise UnavailableError(f"node {node} of a legacy entry has no replica group yet")
        gid = home[0].gid
    return Entry(oid_hex, sys.intern(str(d["binding"])), gid, int(d["epoch"]),
                 sys.intern(str(d.get("region", ""))))


def _candidate(n: NodeInfo, assigned: int) -> Candidate:
    return Candidate(n.node_id, n.region, n.zone, n.load + assigned, n.capacity)
