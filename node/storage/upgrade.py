"""Moving a node's keys from the layout before replica groups into its home group.

Layout 0 (duro before replication) kept every object at the top of the key space:
``0x01 | id | key`` (data), ``0x02 | id`` (alarm), ``0x03 | when | id`` (alarm index),
``0x04 | id`` (unused meta). A node that finds such keys moves them, in chunks, under its home
group's prefix (``layout.py``) with ``GroupCommitter.write_raw`` — replicated to the group's
followers like any write — and deletes each chunk's old keys locally once it is durable. It does
so before it serves anything, so no object is ever read from half a layout. A crash in the middle
is harmless: the moved keys are rewritten identically the next time.
"""

from __future__ import annotations

import logging

import rocksdict

from duro.node.storage import layout
from duro.node.storage.commit import GroupCommitter
from duro.node.storage.engine import StorageEngine
from duro.node.storage.object_storage import PUT

__all__ = ["has_legacy_keys", "move_legacy_keys"]

log = logging.getLogger("duro.node.storage")

CHUNK_KEYS = 1000


def has_legacy_keys(engine: StorageEngine) -> bool:
    return any(next(engine.scan(lo, hi), None) is not None for lo, hi in layout.legacy_spaces())


async def move_legacy_keys(engine: StorageEngine, committer: GroupCommitter, gid: int) -> int:
    """Move every layout-0 key into group ``gid``; returns how many were moved."""
    prefix = layout.group_prefix(gid)
    moved = 0
    for lo, hi in layout.legacy_spaces():
        space = lo
        while True:
            chunk = []
            for k, v in engine.scan(lo, hi):
                chunk.append((k, v))
                if len(chunk) >= CHUNK_KEYS:
                    break
            if not chunk:
                break
            if space != b"\x04":  # the old per-object meta was never used: dropped
                await committer.write_raw(gid, [[PUT, prefix + k, v] for k, v in chunk])
            batch = rocksdict.WriteBatch(raw_mode=True)
            for k, _v in chunk:
                batch.delete(k)
            engine.write(batch)
            moved += len(chunk)
    if moved:
        log.info("moved %s keys of the layout before replica groups into group %s", moved, gid)
    return moved
