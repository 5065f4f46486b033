"""Value codec: msgpack with duro's limits.

Storage values and RPC arguments/results are msgpack-encoded Python values: ``None``, ``bool``,
``int`` (64-bit), ``float``, ``str``, ``bytes``, ``list``/``tuple`` (decoded as ``list``) and ``dict``
(any msgpack-encodable key). Anything else raises :class:`~duro.errors.InvalidValueError` at the
call that tried to encode it, and :func:`decode` raises it for bytes that are not an encoded value.
"""

from __future__ import annotations

from typing import Any

import msgpack

from duro.errors import InvalidValueError

__all__ = ["encode", "decode", "encode_value", "DEFAULT_MAX_VALUE_BYTES"]

DEFAULT_MAX_VALUE_BYTES = 128 * 1024
#: Lists and maps nested this deep or deeper do not decode (msgpack's unpacker stack).
MAX_DEPTH = 1024

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
    """Encode a storage value, enforcing the per-value size limit.

    msgpack encodes lists and maps nested a little deeper than it decodes
    (:data:`MAX_DEPTH`): such a value is refused here, so that nothing is stored that cannot be
    read back. Only a value of at least ``MAX_DEPTH`` bytes can be that deep, so smaller values
    skip the check."""
    data = encode(value)
    if len(data) > max_bytes:
        raise InvalidValueError(
            f"value is {len(data)} bytes encoded; the limit is {max_bytes} bytes"
        )
    if len(data) >= MAX_DEPTH:
        try:
            decode(data)
        except InvalidValueError:
            raise InvalidValueError(
                f"value is nested deeper than {MAX_DEPTH - 1} lists or maps"
            ) from None
    return data


def _no_ext(code: int, data: bytes) -> Any:
    raise InvalidValueError(f"msgpack extension type {code} is not a duro value")


def decode(data: bytes) -> Any:
    """Decode one encoded value. Bytes that are not exactly one encoded value (truncated,
    trailing bytes, invalid UTF-8 in a string, an unhashable map key, an extension type, nesting
    deeper than msgpack's limit) raise :class:`~duro.errors.InvalidValueError`, never another
    exception type. msgpack's timestamp extension decodes as an int (nanoseconds)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True,
                               timestamp=2, ext_hook=_no_ext)
    except InvalidValueError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        why = _WHY.get(type(exc).__name__) or f"{type(exc).__name__}: {exc}"
        size = f"{len(data)} bytes" if isinstance(data, (bytes, bytearray, memoryview)) else (
            type(data).__name__)
        raise InvalidValueError(f"not an encoded value ({size}): {why}") from None


_WHY = {"FormatError": "invalid msgpack format", "StackError": "nested too deeply",
        "ExtraData": "trailing bytes after the value"}
