"""``Entry``: one object's directory entry — its binding, replica group, epoch and region.

An object lives on the serving primary of its group (docs/replication.md); the epoch grows each
time the object moves to another group (and a re-created object's entry starts above any epoch
it had: docs/directory.md). ``node`` is set only for entries read from the per-object etcd keys
of a cluster from before replica groups (docs/directory.md, "Upgrading").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from duro import _codec

__all__ = ["Entry"]


@dataclass(frozen=True, slots=True)
class Entry:
    """Strings other than the id are interned: caches hold 100,000s."""

    object_id: str  # 64 hex digits
    binding: str
    group: int
    epoch: int
    region: str
    node: str = ""

    def encode(self) -> bytes:
        """The stored value (the id is in the key)."""
        return _codec.encode([self.binding, self.group, self.epoch, self.region])

    @classmethod
    def decode(cls, object_id_hex: str, raw: bytes) -> Entry:
        binding, group, epoch, region = _codec.decode(raw)
        return cls(object_id_hex, sys.intern(str(binding)), int(group), int(epoch),
                   sys.intern(str(region)))

    def to_pb(self, pb) -> None:  # noqa: ANN001 - a directory_pb2.DirEntry to fill
        pb.object_id = bytes.fromhex(self.object_id)
        pb.binding, pb.group, pb.epoch, pb.region = self.binding, self.group, self.epoch, self.region

    @classmethod
    def from_pb(cls, pb) -> Entry:  # noqa: ANN001
        return cls(pb.object_id.hex(), sys.intern(pb.binding), int(pb.group), int(pb.epoch),
                   sys.intern(pb.region))
