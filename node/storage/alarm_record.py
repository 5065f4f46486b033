"""An object's alarm record (key ``0x10 | gid | 0x02 | id``, see ``layout.py``), encoded and
decoded here only: msgpack ``[when_ms, binding, retry]``.

``when_ms`` is the alarm's time (Unix milliseconds), ``binding`` the object's binding (the alarm
wakes the object through it), ``retry`` how many times ``alarm()`` has failed and been retried.
"""

from __future__ import annotations

from typing import NamedTuple

from duro import _codec

__all__ = ["AlarmRecord", "encode_alarm", "decode_alarm"]


class AlarmRecord(NamedTuple):
    when_ms: int
    binding: str
    retry: int = 0


def encode_alarm(when_ms: int, binding: str, retry: int = 0) -> bytes:
    return _codec.encode([when_ms, binding, retry])


def decode_alarm(raw: bytes) -> AlarmRecord:
    """The record stored in ``raw``; ``ValueError`` if it is not one."""
    try:
        when_ms, binding, retry = _codec.decode(raw)
    except Exception as exc:
        raise ValueError(f"not an alarm record: {exc}") from None
    if not (isinstance(when_ms, int) and isinstance(binding, str) and isinstance(retry, int)):
        raise ValueError("not an alarm record: [when_ms, binding, retry] of the wrong types")
    return AlarmRecord(when_ms, binding, retry)
