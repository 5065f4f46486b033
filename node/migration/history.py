"""An object's move history: the moves that brought it where it is, kept with its data.

Stored under ``layout.history_key(gid, id)`` (msgpack list of ``[at_s, from_node, to_node,
epoch]``, oldest first, at most :data:`MAX_MOVES`). The source appends the move it is making and
sends the whole list to the target in the transfer's first chunk (``IngestChunk.history``, a
field a node of an older version ignores: docs/migration.md), so the record is
where the object is: replicated with its group, surviving failovers, deleted with its copy.
Failovers are not moves of one object (a whole group changes primary) and are not recorded here.
"""

from __future__ import annotations

from typing import Any

from duro import _codec

__all__ = ["MAX_MOVES", "MAX_BYTES", "decode", "append"]

MAX_MOVES = 32
MAX_BYTES = 64 * 1024  # a target refuses a larger history (32 records take ~3 KiB)


def decode(raw: bytes | None) -> list[list[Any]]:
    """The stored list (empty when absent or unreadable: a history never blocks a move)."""
    if not raw:
        return []
    try:
        moves = _codec.decode(raw)
    except Exception:
        return []
    return [list(m) for m in moves if isinstance(m, (list, tuple)) and len(m) >= 4] \
        if isinstance(moves, list) else []


def append(raw: bytes | None, at: float, from_node: str, to_node: str, epoch: int) -> bytes:
    """``raw`` with one more move, the oldest dropped past :data:`MAX_MOVES`."""
    moves = decode(raw)
    moves.append([round(at, 3), from_node, to_node, int(epoch)])
    return _codec.encode(moves[-MAX_MOVES:])
