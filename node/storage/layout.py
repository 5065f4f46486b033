"""Key layout of the node's one RocksDB database.

Every key starts with a one-byte space tag; per-object spaces follow with the object's 32-byte id, so
all of an object's keys are contiguous and in user-key order (UTF-8 bytes)::

    0x01 | id(32) | user key (UTF-8)        an object's data
    0x02 | id(32)                           the object's alarm: msgpack [when_ms, binding, retry_count]
    0x03 | when_ms (8, big-endian) | id(32) the alarm index, ordered by time: value = binding (UTF-8)
    0x04 | id(32)                           object metadata (placement epoch of the last write)
"""

from __future__ import annotations

import struct

from duro.errors import InvalidArgumentError

__all__ = [
    "MAX_KEY_BYTES",
    "data_prefix",
    "data_key",
    "user_key",
    "prefix_end",
    "alarm_key",
    "alarm_index_key",
    "parse_alarm_index_key",
    "meta_key",
    "ALARM_INDEX",
    "encode_user_key",
]

DATA = b"\x01"
ALARM = b"\x02"
ALARM_INDEX = b"\x03"
META = b"\x04"

ID_BYTES = 32
MAX_KEY_BYTES = 2048
_BE64 = struct.Struct(">Q")


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


def data_prefix(object_id: bytes) -> bytes:
    return DATA + object_id


def data_key(object_id: bytes, raw_user_key: bytes) -> bytes:
    return DATA + object_id + raw_user_key


def user_key(full_key: bytes) -> str:
    return full_key[1 + ID_BYTES :].decode("utf-8")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        raise ValueError("prefix has no upper bound")
    b[-1] += 1
    return bytes(b)


def alarm_key(object_id: bytes) -> bytes:
    return ALARM + object_id


def alarm_index_key(when_ms: int, object_id: bytes) -> bytes:
    return ALARM_INDEX + _BE64.pack(when_ms) + object_id


def parse_alarm_index_key(key: bytes) -> tuple[int, bytes]:
    (when_ms,) = _BE64.unpack_from(key, 1)
    return when_ms, key[9 : 9 + ID_BYTES]


def meta_key(object_id: bytes) -> bytes:
    return META + object_id
