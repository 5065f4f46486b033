"""``GroupReplica``: this node's copy of one replica group — its position, epoch history, the
newest epoch it was fenced at, and its log — and how that is kept in the group's meta key.

The meta key (``layout.group_meta_key``) is written in the same ``WriteBatch`` as the batch it
describes, on the primary and on followers alike, so a copy's recorded position is always exactly
what its data holds.
"""

from __future__ import annotations

from duro import _codec
from duro.node.replication import protocol as P
from duro.node.replication.log import LogEntry, ReplicaLog
from duro.node.storage import layout
from duro.node.storage.engine import StorageEngine

__all__ = ["GroupReplica", "load_replicas"]


class GroupReplica:
    __slots__ = ("gid", "accepted", "pos", "history", "log", "stored")

    def __init__(self, gid: int, accepted: int = 0, pos: P.Position = P.Position(),
                 history: P.History = (), *, log_bytes: int = 16 << 20, stored: bool = False) -> None:
        self.gid = gid
        self.accepted = accepted  # the newest epoch this copy was fenced at (or accepted)
        self.pos = pos
        self.history = history
        self.log = ReplicaLog(pos.seq + 1, max_bytes=log_bytes)
        self.stored = stored  # has a meta key on disk (a copy of this group exists here)

    def __repr__(self) -> str:
        return (f"GroupReplica(gid={self.gid}, accepted={self.accepted}, pos={self.pos}, "
                f"history={self.history})")

    # -- persistence ------------------------------------------------------------------------
    def meta(self) -> bytes:
        return _codec.encode({"a": self.accepted, "e": self.pos.last_epoch, "s": self.pos.seq,
                              "h": [list(h) for h in self.history]})

    @classmethod
    def from_meta(cls, gid: int, raw: bytes, *, log_bytes: int = 16 << 20) -> GroupReplica:
        d = _codec.decode(raw)
        return cls(gid, int(d["a"]), P.Position(int(d["e"]), int(d["s"])),
                   tuple((int(e), int(f)) for e, f in d["h"]), log_bytes=log_bytes, stored=True)

    # -- changes (the caller writes meta() with the data) -----------------------------------
    def prev_epoch(self, seq: int) -> int:
        """The epoch that wrote batch ``seq - 1`` here (0: none)."""
        return (P.epoch_of(self.history, seq - 1) or 0) if seq > 1 else 0

    def applied(self, epoch: int, seq: int, ops: bytes) -> LogEntry:
        """Record batch ``seq`` of ``epoch`` as applied (written with this meta)."""
        entry = LogEntry(seq, epoch, self.prev_epoch(seq), ops)
        self.history = P.after_apply(self.history, epoch, seq)
        self.pos = P.Position(epoch, seq)
        self.log.append(entry)
        self.stored = True
        return entry

    def fenced(self, epoch: int) -> bool:
        """Record a fence at ``epoch``; True if that changed anything (meta must be written)."""
        if epoch <= self.accepted:
            return False
        self.accepted = epoch
        return True

    def promoted(self, epoch: int) -> None:
        """This copy becomes the primary of ``epoch``."""
        self.accepted = max(self.accepted, epoch)
        self.history = P.promoted_history(self.history, self.pos, epoch)

    def installed(self, pos: P.Position, history: P.History, accepted: int) -> None:
        """A snapshot replaced this copy."""
        self.pos = pos
        self.history = history
        self.accepted = max(self.accepted, accepted)
        self.log.reset(pos.seq + 1)
        self.stored = True


def load_replicas(engine: StorageEngine, *, log_bytes: int = 16 << 20) -> dict[int, GroupReplica]:
    """Every group this node holds a copy of, from the meta keys (one per group)."""
    out: dict[int, GroupReplica] = {}
    lo, hi = layout.GROUP, layout.prefix_end(layout.GROUP)
    key = lo
    while True:
        found = None
        for k, v in engine.scan(key, hi):
            found = (k, v)
            break
        if found is None:
            return out
        k, v = found
        gid = layout.gid_of(k)
        if gid is None:
            return out
        meta = engine.get(layout.group_meta_key(gid))
        if meta is not None:
            out[gid] = GroupReplica.from_meta(gid, meta, log_bytes=log_bytes)
        key = layout.group_range(gid)[1]  # skip to the next group
