"""``Follower``: this node's copies of the groups other nodes lead — applying their batches,
answering fences, installing snapshots (docs/replication.md, "Follower rules").

Every change to a copy goes through the group's lock, so a fence is answered with a position that
is on disk, and a snapshot never interleaves with a batch. Batches of one incoming message (and
of every message that queued behind it) are applied in **one** synced ``WriteBatch``: followers
group-commit too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import rocksdict

from duro import _codec
from duro._pb import replication_pb2
from duro.errors import InvalidArgumentError
from duro.node.replication import protocol as P
from duro.node.replication.state import GroupReplica
from duro.node.storage import layout
from duro.node.storage.engine import apply_ops
from duro.node.storage.object_storage import DELETE, DELETE_RANGE, PUT

if TYPE_CHECKING:
    from duro.node.replication.manager import ReplicationManager

__all__ = ["Follower", "StaleSender"]

log = logging.getLogger("duro.node.replication")


class StaleSender(Exception):
    """The sender leads an epoch older than this copy was fenced at."""


class Follower:
    def __init__(self, mgr: ReplicationManager) -> None:
        self.mgr = mgr
        self._locks: dict[int, asyncio.Lock] = {}
        self.applied = 0
        self.refused = 0

    def lock(self, gid: int) -> asyncio.Lock:
        lk = self._locks.get(gid)
        if lk is None:
            lk = self._locks[gid] = asyncio.Lock()
        return lk

    # -- batches ------------------------------------------------------------------------------
    async def apply(self, sender: str, batches: Sequence[replication_pb2.Batch]
                    ) -> list[replication_pb2.GroupAck]:
        """Apply what can be applied in one synced write; one acknowledgement per group."""
        mgr = self.mgr
        gids = sorted({b.gid for b in batches})
        locks = [self.lock(g) for g in gids]
        for lk in locks:
            await lk.acquire()
        try:
            wb = rocksdict.WriteBatch(raw_mode=True)
            acks: dict[int, replication_pb2.GroupAck] = {}
            touched: set[int] = set()
            for b in batches:
                ack = acks.get(b.gid)
                if ack is not None and ack.refused:
                    continue  # the rest of this group's batches in the message wait for a resend
                rep = mgr.replica(b.gid)
                mgr.step_down_if_older(b.gid, b.sender_epoch)
                if mgr.leads(b.gid, b.sender_epoch):
                    verdict = P.Verdict.STALE  # one primary per epoch: never two writers
                else:
                    verdict = P.follower_verdict(rep.accepted, rep.pos, rep.history,
                                                 b.sender_epoch, b.epoch, b.seq, b.prev_epoch)
                if verdict is P.Verdict.APPLY:
                    try:
                        ops = _decode_ops(b.gid, b.ops)
                    except (InvalidArgumentError, ValueError) as exc:
                        acks[b.gid] = _refusal(b.gid, "invalid", rep, str(exc))
                        continue
                    apply_ops(wb, ops)
                    rep.applied(b.epoch, b.seq, b.ops)
                    rep.accepted = max(rep.accepted, b.sender_epoch)
                    touched.add(b.gid)
                    acks[b.gid] = replication_pb2.GroupAck(gid=b.gid, seq=b.seq)
                    self.applied += 1
                elif verdict is P.Verdict.DUPLICATE:
                    if ack is None or ack.seq < b.seq:
                        acks[b.gid] = replication_pb2.GroupAck(gid=b.gid, seq=b.seq)
                else:
                    self.refused += 1
                    acks[b.gid] = _refusal(b.gid, verdict.value, rep,
                                           f"batch {b.seq} of epoch {b.epoch} from {sender}")
            if touched:
                for gid in touched:
                    wb.put(layout.group_meta_key(gid), mgr.replica(gid).meta())
                # Alone (nothing else being written on this node): on the loop, as the group
                # committer writes a lone write — a thread handoff each way would only add
                # latency. Otherwise in the writer thread, after what is ahead of it.
                await mgr.write(wb, inline=not mgr.committer.busy)
            return list(acks.values())
        finally:
            for lk in locks:
                lk.release()

    # -- fences -------------------------------------------------------------------------------
    async def fence(self, gid: int, epoch: int) -> replication_pb2.FenceResponse:
        mgr = self.mgr
        mgr.step_down_if_older(gid, epoch)
        async with self.lock(gid):
            rep = mgr.replica(gid)
            if rep.fenced(epoch):
                wb = rocksdict.WriteBatch(raw_mode=True)
                wb.put(layout.group_meta_key(gid), rep.meta())
                await mgr.write(wb)
                rep.stored = True
            return replication_pb2.FenceResponse(
                storage_id=mgr.engine.storage_id, lease=mgr.current_lease(),
                accepted_epoch=rep.accepted, last_epoch=rep.pos.last_epoch, seq=rep.pos.seq)

    # -- snapshots ----------------------------------------------------------------------------
    async def install(self, chunks: AsyncIterator[replication_pb2.InstallChunk]) -> int:
        """Replace this node's copy of a group with the sender's snapshot; returns its seq."""
        mgr = self.mgr
        first = await anext(chunks, None)
        if first is None or not first.gid:
            raise InvalidArgumentError("an install starts with the group's position")
        gid = first.gid
        mgr.step_down_if_older(gid, first.sender_epoch)
        async with self.lock(gid):
            rep = mgr.replica(gid)
            if first.sender_epoch < rep.accepted or mgr.leads(gid, first.sender_epoch):
                raise StaleSender(f"fenced at epoch {rep.accepted}")
            history = tuple((int(e), int(f)) for e, f in _codec.decode(first.history))
            prefix = layout.group_prefix(gid)
            lo, hi = layout.group_range(gid)
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.delete_range(lo, hi)
            chunk: replication_pb2.InstallChunk | None = first
            while chunk is not None:
                if chunk.gid and chunk.gid != gid:
                    raise InvalidArgumentError("chunks of two groups")
                for item in chunk.items:
                    if not item.key or item.key[0:1] == layout.META:
                        continue  # the sender's meta: this copy writes its own below
                    wb.put(prefix + item.key, item.value)
                if chunk.last:
                    break
                if os.environ.get("DURO_REPLICATION_FAULT") == "install_received":
                    os._exit(137)  # test-only: the receiver dies in the middle of an install
                # Chunks go to RocksDB as they arrive, unsynced (bounded memory); the synced
                # final write below makes all of them durable, and a copy whose install did
                # not finish has no meta saying it holds anything.
                mgr.engine.write_unsynced(wb)
                wb = rocksdict.WriteBatch(raw_mode=True)
                chunk = await anext(chunks, None)
                if chunk is None:
                    raise InvalidArgumentError("the install ended without its last chunk")
            rep.installed(P.Position(first.last_epoch, first.seq), history, first.sender_epoch)
            wb.put(layout.group_meta_key(gid), rep.meta())
            await mgr.write(wb)
            log.info("group %s: installed a snapshot at seq %s (epoch %s)", gid, first.seq,
                     first.sender_epoch)
            return int(first.seq)


def _refusal(gid: int, why: str, rep: GroupReplica, detail: str) -> replication_pb2.GroupAck:
    return replication_pb2.GroupAck(
        gid=gid, refused=why, accepted_epoch=rep.accepted, last_epoch=rep.pos.last_epoch,
        pos_seq=rep.pos.seq, detail=detail)


def _decode_ops(gid: int, blob: bytes) -> list[list]:
    """A batch's operations, each checked to stay inside the group's key range."""
    try:
        ops = _codec.decode(blob)
    except Exception as exc:
        raise InvalidArgumentError(f"undecodable batch: {exc}") from None
    if not isinstance(ops, list):
        raise InvalidArgumentError("a batch is a list of operations")
    lo, hi = layout.group_range(gid)
    meta = layout.group_meta_key(gid)
    for op in ops:
        if not isinstance(op, list) or not op or op[0] not in (PUT, DELETE, DELETE_RANGE):
            raise InvalidArgumentError(f"bad operation {op!r:.80}")
        if len(op) != (3 if op[0] in (PUT, DELETE_RANGE) else 2):
            raise InvalidArgumentError(f"bad operation {op!r:.80}")
        if not all(isinstance(x, bytes) for x in op[1:]):
            raise InvalidArgumentError("keys and values are bytes")
        first = op[1]
        last = op[2] if op[0] == DELETE_RANGE else op[1]
        if not (meta < first and (last <= hi if op[0] == DELETE_RANGE else last < hi)
                and first.startswith(lo)):
            raise InvalidArgumentError("an operation outside the group's keys")
    return ops
