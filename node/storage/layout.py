"""Key layout of the node's one RocksDB database.

Every object belongs to a replica group (docs/replication.md; group 0 on a node without a cluster
and in the Testbed), and every key of a group lives under the group's prefix, so that a group can
be copied to a follower, compared and dropped as one contiguous range::

    0x00 | name                                   node-local records (storage id, layout version)
    0x10 | gid(4) | 0x00                          the group's replication meta (position, history)
    0x10 | gid(4) | 0x01 | id(32) | user key      an object's data (user keys in UTF-8 byte order)
    0x10 | gid(4) | 0x02 | id(32)                 the object's alarm: msgpack [when_ms, binding, retry]
    0x10 | gid(4) | 0x03 | when_ms(8) | id(32)    the group's alarm index by time: value = binding
    0x10 | gid(4) | 0x04 | p(4) | id(32)          a directory entry of partition p held by the
                                                  group: msgpack [binding, group, epoch, region]
    0x10 | gid(4) | 0x05 | p(4)                   partition p's meta: msgpack {counter, count}
    0x10 | gid(4) | 0x06 | id(32)                 the object is being moved out of the group
                                                  (a migration's marker; value: target gid)
    0x10 | gid(4) | 0x07 | id(32)                 the bytes the object stores (its quota's
                                                  account, docs/storage.md): u64, big-endian;
                                                  absent when it stores nothing
    0x10 | gid(4) | 0x08                          namespaces of deleted classes whose objects
                                                  are gone from the group (msgpack list of
                                                  namespace keys: duro.node.deleted_classes)
    0x10 | gid(4) | 0x09 | id(32)                 the object's move history: msgpack list of
                                                  [at_s, from_node, to_node, epoch], oldest
                                                  first (bounded); travels with the object

Keys written before groups existed (layout 0: ``0x01 | id | key``, ``0x02 | id``,
``0x03 | when | id``) are moved under a group once, when the node starts (:func:`legacy_spaces`).
"""

from __future__ import annotations

import struct

from duro.errors import InvalidArgumentError

__all__ = [
    "MAX_KEY_BYTES",
    "GROUP",
    "ID_BYTES",
    "LOCAL",
    "GROUP_PREFIX_BYTES",
    "encode_user_key",
    "group_prefix",
    "group_range",
    "group_meta_key",
    "data_prefix",
    "data_key",
    "is_data_key",
    "user_key",
    "prefix_end",
    "alarm_key",
    "alarm_index_key",
    "alarm_index_range",
    "parse_alarm_index_key",
    "gid_of",
    "local_key",
    "legacy_spaces",
    "dir_prefix",
    "dir_key",
    "dir_meta_key",
    "moving_key",
    "moving_range",
    "usage_key",
    "removed_classes_key",
    "space_range",
    "history_key",
    "DATA_HEADER_BYTES",
]

LOCAL = b"\x00"
GROUP = b"\x10"
META = b"\x00"
DATA = b"\x01"
ALARM = b"\x02"
ALARM_INDEX = b"\x03"
DIR_ENTRY = b"\x04"
DIR_META = b"\x05"
MOVING = b"\x06"
USAGE = b"\x07"
REMOVED_CLASSES = b"\x08"
HISTORY = b"\x09"

ID_BYTES = 32
MAX_KEY_BYTES = 2048
MAX_GID = 2**32 - 1
GROUP_PREFIX_BYTES = 5
_BE64 = struct.Struct(">Q")
_BE32 = struct.Struct(">I")
DATA_HEADER_BYTES = GROUP_PREFIX_BYTES + 1 + ID_BYTES  # bytes of a data key before the user key


def encode_user_key(key: object) -> bytes:
    """Validate a user key and return its UTF-8 bytes (the order keys are listed in)."""
    if not isinstance(key, str):
        raise InvalidArgumentError(f"storage keys must be str, not {type(key).__name__}")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("storage key is not valid UTF-8 (lone surrogate)") from None
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"storage key is {len(raw)} bytes in UTF-8; the limit is {MAX_KEY_BYTES}"
        )
    return raw


def group_prefix(gid: int) -> bytes:
    return GROUP + _BE32.pack(gid)


def group_range(gid: int) -> tuple[bytes, bytes]:
    """``[lo, hi)`` holding every key of the group, its meta included."""
    p = group_prefix(gid)
    return p, prefix_end(p)


def group_meta_key(gid: int) -> bytes:
    return group_prefix(gid) + META


def gid_of(key: bytes) -> int | None:
    """The group a key belongs to (None for a node-local or foreign key)."""
    if len(key) < GROUP_PREFIX_BYTES or key[0:1] != GROUP:
        return None
    return _BE32.unpack_from(key, 1)[0]


def data_prefix(gid: int, object_id: bytes) -> bytes:
    return group_prefix(gid) + DATA + object_id


def data_key(gid: int, object_id: bytes, raw_user_key: bytes) -> bytes:
    return group_prefix(gid) + DATA + object_id + raw_user_key


def is_data_key(full_key: bytes) -> bool:
    return full_key[GROUP_PREFIX_BYTES:GROUP_PREFIX_BYTES + 1] == DATA


def user_key(full_key: bytes) -> str:
    return full_key[DATA_HEADER_BYTES:].decode("utf-8")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        raise ValueError("prefix has no upper bound")
    b[-1] += 1
    return bytes(b)


def alarm_key(gid: int, object_id: bytes) -> bytes:
    return group_prefix(gid) + ALARM + object_id


def alarm_index_key(gid: int, when_ms: int, object_id: bytes) -> bytes:
    return group_prefix(gid) + ALARM_INDEX + _BE64.pack(when_ms) + object_id


def alarm_index_range(gid: int, lo_ms: int, hi_ms: int) -> tuple[bytes, bytes]:
    base = group_prefix(gid) + ALARM_INDEX
    return base + _BE64.pack(max(0, lo_ms)), base + _BE64.pack(max(0, hi_ms))


def parse_alarm_index_key(key: bytes) -> tuple[int, bytes]:
    """``(when_ms, object id)`` of an alarm index key."""
    (when_ms,) = _BE64.unpack_from(key, GROUP_PREFIX_BYTES + 1)
    start = GROUP_PREFIX_BYTES + 9
    return when_ms, key[start:start + ID_BYTES]


def dir_prefix(gid: int, partition: int) -> bytes:
    return group_prefix(gid) + DIR_ENTRY + _BE32.pack(partition)


def dir_key(gid: int, partition: int, object_id: bytes) -> bytes:
    return dir_prefix(gid, partition) + object_id


def dir_meta_key(gid: int, partition: int) -> bytes:
    return group_prefix(gid) + DIR_META + _BE32.pack(partition)


def moving_key(gid: int, object_id: bytes) -> bytes:
    return group_prefix(gid) + MOVING + object_id


def moving_range(gid: int) -> tuple[bytes, bytes]:
    p = group_prefix(gid) + MOVING
    return p, prefix_end(p)


def usage_key(gid: int, object_id: bytes) -> bytes:
    return group_prefix(gid) + USAGE + object_id


def removed_classes_key(gid: int) -> bytes:
    return group_prefix(gid) + REMOVED_CLASSES


def space_range(gid: int, space: bytes) -> tuple[bytes, bytes]:
    """``[lo, hi)`` of one key space (``DATA``, ``ALARM``...) of the group."""
    p = group_prefix(gid) + space
    return p, prefix_end(p)


def history_key(gid: int, object_id: bytes) -> bytes:
    return group_prefix(gid) + HISTORY + object_id


def local_key(name: str) -> bytes:
    return LOCAL + name.encode()


def legacy_spaces() -> list[tuple[bytes, bytes]]:
    """Ranges of the pre-group layout (data, alarms, alarm index, per-object meta)."""
    return [(bytes([t]), bytes([t + 1])) for t in (0x01, 0x02, 0x03, 0x04)]
