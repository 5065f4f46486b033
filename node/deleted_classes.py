"""Removing the objects of classes a ``deleted_classes`` migration deleted, group by group.

A class's objects are recognised by their ids alone: an id's tag is a keyed hash under its
namespace's key (``duro._ids``), so every key of a group whose object id carries the tag of a
deleted class's namespace belongs to one of that class's objects — no directory lookup and no
binding name needed (the app that deleted the class no longer binds it).

:class:`ClassRemoval` runs where a group's writes are made — on its primary, each time a node
starts serving the group (``NodeCluster``), or at start on a node without a cluster (group 0) —
and removes, as replicated writes of the group (``GroupCommitter.write_raw``), each such object's
data, alarm (and its index entry), storage account and migration marker, then its directory
entries (through the directory's own ``forget``, which keeps the partition's count right). Last,
it records the namespaces it has removed in the group (``layout.removed_classes_key``), so later
promotions skip the scan. Every step can be repeated: a primary that stops half-way leaves the
rest to the next one.

What it does not do: remove objects of a deleted class that a node holds outside the groups it
serves (a copy it follows is cleaned by its primary's writes, like any other write).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping

from duro import _codec
from duro._ids import in_namespace
from duro.node.storage import layout
from duro.node.storage.engine import clear_ops
from duro.node.storage.object_storage import DELETE, PUT
from duro.topology.directory_entry import Entry

if TYPE_CHECKING:
    from duro.node.storage.commit import GroupCommitter
    from duro.node.storage.engine import StorageEngine

__all__ = ["ClassRemoval"]

log = logging.getLogger("duro.node.deleted_classes")

_OPS_PER_WRITE = 1024
_KEYS_PER_TURN = 4096  # scanned keys between two yields to the event loop

# A directory entry's forget: (object id, its entry) -> whether it was removed.
Forget = Callable[[bytes, Entry], Awaitable[bool]]


class ClassRemoval:
    """Removes the objects of deleted classes from the groups it is asked to."""

    def __init__(self, engine: StorageEngine, committer: GroupCommitter,
                 deleted: Mapping[bytes, str]) -> None:
        self.engine = engine
        self.committer = committer
        self.deleted = dict(deleted)  # namespace key -> why (duro._app.App.deleted_namespaces)
        self.removed = 0  # objects removed so far (metrics, tests)

    def why_deleted(self, object_id: bytes) -> str | None:
        """The message for a call to ``object_id`` if its class was deleted, else None."""
        for key, why in self.deleted.items():
            if in_namespace(key, object_id):
                return why
        return None

    async def run(self, gid: int, forget: Forget | None = None) -> int:
        """Remove the deleted classes' objects from group ``gid``; how many objects it removed.

        ``forget`` removes a directory entry held by the group (None: the node has no
        directory). Raises what a write raises (the node stopped serving the group...)."""
        if not self.deleted:
            return 0
        marker = layout.removed_classes_key(gid)
        raw = self.engine.get(marker)
        done = set(_codec.decode(raw)) if raw is not None else set()
        todo = [k for k in self.deleted if k not in done]
        if not todo:
            return 0
        objects, entries = await self._scan(gid, todo)
        ops: list[list] = []
        for oid in sorted(objects):
            ops += clear_ops(self.engine, gid, oid)  # data, alarm and its index entry, account
            ops.append([DELETE, layout.moving_key(gid, oid)])
        for i in range(0, len(ops), _OPS_PER_WRITE):
            await self.committer.write_raw(gid, ops[i:i + _OPS_PER_WRITE])
        if forget is not None:
            for oid, entry in entries:
                await forget(oid, entry)
        await self.committer.write_raw(gid, [[PUT, marker, _codec.encode(sorted(done | set(todo)))]])
        gone = len(objects | {oid for oid, _ in entries})
        self.removed += gone
        if gone:
            log.info("group %s: removed %d objects of deleted classes", gid, gone)
        return gone

    async def _scan(self, gid: int, keys: list[bytes]
                    ) -> tuple[set[bytes], list[tuple[bytes, Entry]]]:
        """The group's objects of the namespaces ``keys``: ids with keys of their own (data,
        alarm, account, marker), and directory entries."""
        verdict: dict[bytes, bool] = {}

        def deleted(oid: bytes) -> bool:
            v = verdict.get(oid)
            if v is None:
                v = verdict[oid] = any(in_namespace(k, oid) for k in keys)
            return v

        objects: set[bytes] = set()
        entries: list[tuple[bytes, Entry]] = []
        n = 0
        id_at = layout.GROUP_PREFIX_BYTES + 1
        for space in (layout.DATA, layout.ALARM, layout.USAGE, layout.MOVING, layout.HISTORY,
                      layout.DIR_ENTRY):
            for key, value in self.engine.scan(*layout.space_range(gid, space)):
                n += 1
                if n % _KEYS_PER_TURN == 0:
                    await asyncio.sleep(0)
                if space == layout.DIR_ENTRY:
                    oid = key[-layout.ID_BYTES:]  # after the partition (4)
                    if deleted(oid):
                        entries.append((oid, Entry.decode(oid.hex(), value)))
                else:
                    oid = key[id_at:id_at + layout.ID_BYTES]
                    if deleted(oid):
                        objects.add(oid)
        return objects, entries
