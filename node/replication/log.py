"""``ReplicaLog``: the recent batches of one group, in memory, for catching replicas up.

Every replica keeps the batches it wrote or applied (a follower may be promoted and then has to
bring the others up to its own position). Bounded by bytes and entries: a replica that lags
further than the log reaches is caught up by snapshot (``protocol.catch_up_plan``). Two entries
are always kept whatever the bounds: a primary has at most one batch being written while it cuts
the next, so every batch that may be missing from a snapshot of its disk is still here. A pin
(``pin``) keeps every entry from a seq on while a snapshot is sent: the replica that receives it
is fed the batches after it from this log.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

__all__ = ["LogEntry", "ReplicaLog"]


class LogEntry(NamedTuple):
    seq: int
    epoch: int  # the epoch that wrote it
    prev_epoch: int  # the epoch that wrote seq - 1 (0: none)
    ops: bytes


class ReplicaLog:
    def __init__(self, next_seq: int = 1, max_bytes: int = 16 << 20,
                 max_entries: int = 100_000) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: deque[LogEntry] = deque()
        self._bytes = 0
        self._next = next_seq
        self._pins: list[int] = []

    @property
    def first(self) -> int:
        """The first seq held (``last + 1`` when empty)."""
        return self._entries[0].seq if self._entries else self._next

    @property
    def last(self) -> int:
        return self._next - 1

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def append(self, entry: LogEntry) -> None:
        if entry.seq != self._next:
            self.reset(entry.seq)  # a gap (after a snapshot, say): the log restarts here
        self._entries.append(entry)
        self._bytes += len(entry.ops) + 64
        self._next = entry.seq + 1
        keep_from = min(self._pins) if self._pins else self._next
        while len(self._entries) > 2 and self._entries[0].seq < keep_from and (
                self._bytes > self.max_bytes or len(self._entries) > self.max_entries):
            old = self._entries.popleft()
            self._bytes -= len(old.ops) + 64

    def pin(self, seq: int) -> int:
        """Keep every entry from ``seq`` on until :meth:`unpin` (returns the token)."""
        self._pins.append(seq)
        return seq

    def unpin(self, token: int) -> None:
        self._pins.remove(token)

    def reset(self, next_seq: int) -> None:
        """Forget everything; the next entry appended will be ``next_seq``."""
        self._entries.clear()
        self._bytes = 0
        self._next = next_seq

    def since(self, seq: int) -> list[LogEntry] | None:
        """The entries from ``seq`` to the last, or None if the log no longer reaches back."""
        if seq > self._next:
            return None
        if seq == self._next:
            return []
        if not self._entries or seq < self._entries[0].seq:
            return None
        start = seq - self._entries[0].seq
        return [self._entries[i] for i in range(start, len(self._entries))]
