"""``PartitionService``: this node's directory partitions — those held by the replica groups it
serves as primary (docs/directory.md).

Every operation on one object runs alone (an object id is *busy* while a write of its entry is
in flight; everything else on it waits), reads the entry from RocksDB, and writes through
``GroupCommitter.write_raw`` in the partition's group, so a create, a switch or a forget is
acknowledged only once it is durable on every in-sync copy of the group, and only while this
node still holds the lease it leads the group with. Lookups answer the same way (after any write
of that object in flight), which makes them linearizable: no deposed primary answers with an
entry that moved.

A ``Resolve`` call carries many objects (a router's lookups of one loop turn): they are resolved
together (:meth:`PartitionService.resolve_many`): one placement view for the batch, and one
replicated write per group for all the entries it creates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from etcd3aio import Etcd3Client

from duro.errors import InvalidArgumentError, InvalidIdError, UnavailableError
from duro.node.directory import store
from duro.topology.directory_entry import Entry
from duro.topology.etcdkv import get_value
from duro.topology.groups import GroupConfig, GroupView, primary_gone
from duro.topology.partitions import DirectorySettings, PartitionView, partition_of
from duro.topology.placement_policy import Candidate, NoLiveNodeError, Placer

if TYPE_CHECKING:
    from duro.node.replication.manager import ReplicationManager
    from duro.topology.nodes import NodeInfo, NodeView

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


Resolve = tuple  # (object id, binding, create, caller region, location hint)


class Unassigned(Exception):
    """The partition has no group yet (the placement leader assigns it on first use)."""


class PartitionService:
    def __init__(
        self, node_id: str, cluster: str, etcd: Etcd3Client, mgr: ReplicationManager,
        nodes: NodeView, groups: GroupView, partitions: PartitionView,
        settings: Any,  # () -> DirectorySettings
        refuse: Callable[[bytes], str | None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.etcd = etcd
        self.mgr = mgr
        self.nodes = nodes
        self.groups = groups
        self.partitions = partitions
        self._settings = settings
        # Why an id may not get an entry (its class was deleted: duro.node.deleted_classes).
        self._refuse = refuse
        self._busy: dict[bytes, asyncio.Future[None]] = {}  # object id -> its write in flight
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

    async def _idle(self, oid: bytes) -> None:
        """Wait until no write of ``oid``'s entry is in flight."""
        while (busy := self._busy.get(oid)) is not None:
            await asyncio.shield(busy)

    @asynccontextmanager
    async def _alone(self, oid: bytes) -> AsyncIterator[None]:
        await self._idle(oid)
        done = self._busy[oid] = asyncio.get_running_loop().create_future()
        try:
            yield
        finally:
            del self._busy[oid]
            done.set_result(None)

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
                why = self._refuse(oid) if self._refuse is not None else None
                if why:
                    raise InvalidIdError(f"object {oid.hex()}: {why}")
                entry = (await self._create(gid, [(p, oid, binding, caller_region,
                                                   location_hint)], self._placement()))[0]
            return self._answer(gid, entry)

    async def resolve_many(self, items: list[Resolve]) -> list[Entry | None | Exception]:
        """:meth:`resolve` for many objects at once; each result is the entry (or None) or the
        exception that object's resolve would have raised."""
        out: list[Any] = [None] * len(items)
        engine = self.mgr.engine
        legacy = bool(self.settings and self.settings.legacy)
        alone: list[int] = []  # busy objects and legacy imports: one by one, after the batch
        creates: dict[int, list[tuple[int, tuple]]] = {}  # gid -> (index, create args)
        answered: list[tuple[int, int]] = []  # (index, gid) whose entry is in ``out``
        claimed: list[bytes] = []
        done: asyncio.Future[None] | None = None
        for i, (oid, binding, create, region, hint) in enumerate(items):
            try:
                p, gid = self._locate(oid)
            except (NotHere, Unassigned, InvalidArgumentError, UnavailableError) as exc:
                out[i] = exc
                continue
            if oid in self._busy or legacy:
                alone.append(i)
                continue
            entry = store.read_entry(engine, gid, p, oid)
            if entry is not None or not create:
                out[i] = entry
                answered.append((i, gid))
            elif not binding:
                out[i] = InvalidArgumentError("binding is required to create an entry")
            elif self._refuse is not None and (why := self._refuse(oid)):
                out[i] = InvalidIdError(f"object {oid.hex()}: {why}")
            else:
                if done is None:
                    done = asyncio.get_running_loop().create_future()
                self._busy[oid] = done  # (the same object twice in one batch: the second waits)
                claimed.append(oid)
                creates.setdefault(gid, []).append((i, (p, oid, binding, region, hint)))
        try:
            if creates:
                try:
                    placement = self._placement()
                except UnavailableError as exc:
                    results: list[Any] = [exc] * len(creates)
                else:
                    results = await asyncio.gather(
                        *(self._create(gid, [a for _i, a in batch], placement)
                          for gid, batch in creates.items()), return_exceptions=True)
                for (gid, batch), made in zip(creates.items(), results):
                    for k, (i, _args) in enumerate(batch):
                        if isinstance(made, Exception):
                            out[i] = made
                        elif isinstance(made, BaseException):
                            out[i] = UnavailableError(f"directory write failed: {made!r}")
                        else:
                            out[i] = made[k]
                            answered.append((i, gid))
        finally:
            for oid in claimed:
                del self._busy[oid]
            if done is not None:
                done.set_result(None)
        if alone:
            rest = await asyncio.gather(*(self.resolve(*items[i]) for i in alone),
                                        return_exceptions=True)
            for i, r in zip(alone, rest):
                if isinstance(r, BaseException) and not isinstance(r, Exception):
                    r = UnavailableError(f"directory resolve failed: {r!r}")  # noqa: PLW2901
                out[i] = r
        serving: dict[int, bool] = {}
        for i, gid in answered:  # only while this node still leads the group with its lease
            ok = serving.get(gid)
            if ok is None:
                prim = self.mgr.serving(gid)
                ok = serving[gid] = prim is not None and self.mgr.holds_lease(prim.config)
            if not ok:
                out[i] = UnavailableError(f"group {gid} is no longer served here; ask again")
        return out

    async def _create(self, gid: int, batch: list[tuple],
                      placement: tuple[Placer, dict[str, int]]) -> list[Entry]:
        """Place and write the entries of ``batch`` ((partition, id, binding, caller region,
        hint) each, none of them existing, all busy) in one write of group ``gid``."""
        placer, group_of = placement
        ops: list[list] = []
        metas: dict[int, store.PartitionMeta] = {}
        made: list[Entry] = []
        for p, oid, binding, region, hint in batch:
            node = placer.choose(region, hint)
            meta = metas.get(p)
            if meta is None:
                meta = metas[p] = self._meta(gid, p)
            meta.counter += 1
            meta.count += 1
            info = self.nodes.nodes[node]
            entry = Entry(oid.hex(), sys.intern(binding), group_of[node], meta.counter,
                          info.region)
            ops.append(store.entry_put(gid, p, entry))
            made.append(entry)
            self._assigned[node] = self._assigned.get(node, 0) + 1
        for p, meta in metas.items():
            ops.append(store.meta_put(gid, p, meta))
        try:
            await self._write(gid, ops)
        except BaseException:
            for p, *_rest in batch:  # (counters may stay ahead: they only have to be at least)
                metas[p].count -= 1
            raise
        self.created += len(made)
        return made

    def _led(self) -> dict[str, int]:
        """node id -> the group new objects placed on it go to (home group first)."""
        out: dict[str, int] = {}
        nodes = self.nodes.nodes
        for g in sorted(self.groups.all(), key=lambda g: (g.home != g.primary, g.gid)):
            if g.primary not in out and primary_gone(g, nodes) is None:
                out[g.primary] = g.gid
        return out

    def _placement(self) -> tuple[Placer, dict[str, int]]:
        """The placement view for the objects created now: nodes that serve a replica group
        (not draining), with the objects placed on each since its last load report; and the
        group each such node takes new objects into."""
        led = self._led()
        cands = [_candidate(n, self._assigned.get(n.node_id, 0))
                 for n in self.nodes.nodes.values() if not n.draining and n.node_id in led]
        try:
            return Placer(cands), led
        except NoLiveNodeError:
            raise UnavailableError("no node serves a replica group right now; retry") from None

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
