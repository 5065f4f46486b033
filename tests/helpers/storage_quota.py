"""Exact storage-quota checks (docs/storage.md, "Limits"): what a key accounts for, a value of
a chosen size, and "exactly this many bytes are left" through any stub."""

from __future__ import annotations

import pytest

from duro import _codec
from duro.errors import StorageLimitError

__all__ = ["size", "value_of", "assert_room"]


def size(key: str, value: object) -> int:
    """What one key accounts for: its UTF-8 bytes plus its encoded value."""
    return len(key.encode()) + len(_codec.encode(value))


def value_of(total: int, key: str) -> str:
    """A str value such that ``size(key, value) == total`` (for totals from 2 to ~65,000)."""
    for n in range(total, -1, -1):
        if size(key, "x" * n) == total:
            return "x" * n
    raise ValueError(f"no str value makes {key!r} account for exactly {total} bytes")


async def assert_room(stub, room: int, probe: str = "probe") -> None:  # noqa: ANN001
    """Exactly ``room`` bytes are left: ``room + 1`` is refused, ``room`` fits (and is then
    deleted again). ``room`` must be at least ``size(probe, "")``."""
    with pytest.raises(StorageLimitError, match="max_storage_bytes"):
        await stub.put(probe, value_of(room + 1, probe))
    assert await stub.get(probe) is None
    await stub.put(probe, value_of(room, probe))
    await stub.delete(probe)
