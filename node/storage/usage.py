"""How many bytes an object stores: the account its storage quota is checked against.

An object's **usage** is the sum, over its keys, of the key's UTF-8 bytes plus its value's encoded
(msgpack) bytes: what ``put`` was given, not what RocksDB spends on it after compression and
compaction (so the number does not depend on the node, its compaction or its copies). The alarm
and the runtime's own records are not counted.

The running total is kept in the object's **usage record** (``layout.usage_key``), written in the
same ``WriteBatch`` as the writes that change it — so it is replicated, fsynced, copied by
snapshots and lost or kept together with them, and never needs a scan to be right. A record of 0
is deleted instead of written: an object that stores nothing leaves no key.

An object written before the record existed has data and no record; its usage is counted once
(:func:`recount`, one scan of its keys) the first time it writes, and recorded with that write.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import TYPE_CHECKING

from duro.node.storage import layout

if TYPE_CHECKING:
    from duro.node.storage.engine import StorageEngine

__all__ = ["entry_size", "encode", "decode", "recount", "DEFAULT_MAX_STORAGE_BYTES"]

log = logging.getLogger("duro.node.storage")

# Cloudflare's documented storage per SQLite-backed Durable Object: 10 GB, where Cloudflare's
# GB is 10^9 bytes (developers.cloudflare.com/durable-objects/platform/limits/).
DEFAULT_MAX_STORAGE_BYTES = 10 * 1000**3

_U64 = struct.Struct(">Q")


def entry_size(full_key: bytes, value: bytes | None) -> int:
    """The bytes one data key accounts for: its user key plus its encoded value (0 if absent)."""
    if value is None:
        return 0
    return len(full_key) - layout.DATA_HEADER_BYTES + len(value)


def encode(usage: int) -> bytes:
    return _U64.pack(usage)


def decode(raw: bytes) -> int:
    if len(raw) != _U64.size:
        raise ValueError(f"a usage record is {_U64.size} bytes, not {len(raw)}")
    return _U64.unpack(raw)[0]


def recount(engine: StorageEngine, gid: int, object_id: bytes) -> int:
    """Count an object's usage from its keys on disk (one scan: only for objects without a
    record, i.e. written before records existed)."""
    prefix = layout.data_prefix(gid, object_id)
    t0 = time.perf_counter()
    total = keys = 0
    for k, v in engine.scan(prefix, layout.prefix_end(prefix)):
        total += len(k) - layout.DATA_HEADER_BYTES + len(v)
        keys += 1
    if keys:
        log.info("counted the storage of an object without a usage record: %s keys, %s bytes, "
                 "%.1f ms", keys, total, (time.perf_counter() - t0) * 1000,
                 extra={"object_id": object_id.hex()})
    return total
