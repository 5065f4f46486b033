"""Value codec: msgpack with duro's limits.

Storage values and RPC arguments/results are msgpack-encoded Python values: ``None``, ``bool``,
``int`` (64-bit), ``float``, ``str``, ``bytes``, ``list``/``tuple`` (decoded as ``list``) and ``dict``
(any msgpack-encodable key). Anything else raises :class:`~duro.errors.InvalidValueError` at the
call that tried to encode it.
"""

from __future__ import annotations

from typing import Any

import msgpack

from duro.errors import InvalidValueError

__all__ = ["encode", "decode", "encode_value", "DEFAULT_MAX_VALUE_BYTES"]

DEFAULT_MAX_VALUE_BYTES = 128 * 1024

_packer_default = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode(value: Any) -> bytes:
    """Encode any codec value; no size limit (RPC payloads)."""
    try:
        return _packer_default.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        _packer_default.reset()
        raise InvalidValueError(
            f"value of type {type(value).__name__} cannot be stored or sent: {exc}"
        ) from None


def encode_value(value: Any, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> bytes:
    """Encode a storage value, enforcing the per-value size limit."""
    data = encode(value)
    if len(data) > max_bytes:
        raise InvalidValueError(
            f"value is {len(data)} bytes encoded; the limit is {max_bytes} bytes"
        )
    return data


def decode(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
