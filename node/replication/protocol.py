"""Every decision of the replication protocol as a pure function (no I/O, no clocks).

The node (``duro.node.replication``) and the placement leader (``duro.placement.groups``) call
these functions with what they know and carry out the answer; the model check
(``tests/node/replication/test_protocol_model.py``) drives the same functions through every
interleaving of writes, crashes, lost messages and failovers. See ``docs/replication.md``.

Terms: a replica's **position** is ``(last_epoch, seq)``: the sequence number of the last batch it
applied and the epoch in which that batch was written. Its **history** is the list of
``(epoch, first_seq)`` pairs: epoch ``e`` wrote the batches from ``first_seq`` up to the next
entry's ``first_seq - 1`` (the last entry: up to the replica's own ``seq``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = [
    "Position",
    "History",
    "Verdict",
    "follower_verdict",
    "after_apply",
    "epoch_of",
    "epoch_end",
    "Plan",
    "UpToDate",
    "Tail",
    "Snapshot",
    "catch_up_plan",
    "Answer",
    "choose_primary",
    "can_remove",
    "promoted_history",
]


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a replica of one group is: the epoch and sequence number of its last batch."""

    last_epoch: int = 0
    seq: int = 0


History = tuple[tuple[int, int], ...]  # ((epoch, first_seq), ...), epochs and seqs ascending


def epoch_of(history: History, seq: int) -> int | None:
    """The epoch that wrote batch ``seq`` according to ``history`` (None before the first)."""
    found = None
    for epoch, first in history:
        if first > seq:
            break
        found = epoch
    return found


def epoch_end(history: History, epoch: int, seq: int) -> tuple[int, int] | None:
    """``(first, last)`` seqs epoch ``epoch`` wrote, for a replica at ``seq`` (None: unknown
    epoch). ``last < first`` when the epoch wrote nothing."""
    for i, (e, first) in enumerate(history):
        if e == epoch:
            last = history[i + 1][1] - 1 if i + 1 < len(history) else seq
            return first, last
    return None


class Verdict(enum.Enum):
    APPLY = "apply"          # the next batch: apply it
    DUPLICATE = "duplicate"  # already applied (a resend): acknowledge again
    STALE = "stale"          # the sender was deposed: a newer primary fenced this replica
    GAP = "gap"              # batches are missing before it: re-send from my position
    DIVERGED = "diverged"    # I hold another batch at that seq (never acknowledged): snapshot


def follower_verdict(
    accepted_epoch: int, pos: Position, history: History, sender_epoch: int,
    batch_epoch: int, batch_seq: int, prev_epoch: int,
) -> Verdict:
    """What a follower does with batch ``batch_seq``, written in ``batch_epoch``, sent by a primary
    of ``sender_epoch`` whose batch ``batch_seq - 1`` was written in ``prev_epoch`` (0 for none).

    A new primary re-sends batches of earlier epochs from its log (reconciliation), so fencing
    compares the sender's epoch, not the batch's. The ``prev_epoch`` check is Raft's log
    matching: two replicas whose batch ``s`` was written in the same epoch hold the same batches
    up to ``s`` (an epoch has one primary, which sends its batches in order), so a follower whose
    batch ``s - 1`` came from another epoch must not append ``s`` after it."""
    if sender_epoch < accepted_epoch:
        return Verdict.STALE
    if batch_seq == pos.seq + 1:
        if pos.seq and epoch_of(history, pos.seq) != prev_epoch:
            return Verdict.DIVERGED
        return Verdict.APPLY
    if batch_seq <= pos.seq:
        return Verdict.DUPLICATE if epoch_of(history, batch_seq) == batch_epoch else Verdict.DIVERGED
    return Verdict.GAP


def after_apply(history: History, batch_epoch: int, batch_seq: int) -> History:
    """The history once batch ``batch_seq`` of ``batch_epoch`` is applied."""
    if history and history[-1][0] == batch_epoch:
        return history
    return history + ((batch_epoch, batch_seq),)


def promoted_history(history: History, pos: Position, new_epoch: int) -> History:
    """The history of a replica promoted to primary of ``new_epoch``: its batches start at
    ``pos.seq + 1``. (An epoch that ends up writing nothing leaves an empty range.)"""
    if history and history[-1][0] >= new_epoch:
        return history
    return history + ((new_epoch, pos.seq + 1),)


# -- catching a replica up ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UpToDate:
    """The replica holds exactly what the primary holds."""


@dataclass(frozen=True, slots=True)
class Tail:
    """Re-send the primary's log from ``from_seq`` (the replica is a prefix of the primary)."""

    from_seq: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Replace the replica's copy with a snapshot of the primary's (``reason`` for the logs)."""

    reason: str


Plan = UpToDate | Tail | Snapshot


def catch_up_plan(history: History, pos: Position, log_first: int, peer: Position) -> Plan:
    """How the primary (``history``, ``pos``, its log holding seqs ``log_first..pos.seq``) brings
    a replica at ``peer`` up to date. A replica is a prefix of the primary iff its last batch
    lies inside the range the primary's history gives that batch's epoch; anything beyond is a
    batch the primary never had (written by a deposed primary, never acknowledged)."""
    if peer.seq == 0:
        if pos.seq == 0:
            return UpToDate()
        if log_first <= 1:
            return Tail(1)
        return Snapshot("empty replica; the log does not reach back to the first batch")
    rng = epoch_end(history, peer.last_epoch, pos.seq)
    if rng is None:
        return Snapshot(f"epoch {peer.last_epoch} is not in the primary's history")
    first, last = rng
    if peer.seq > last:
        return Snapshot(f"holds batches {last + 1}..{peer.seq} of epoch {peer.last_epoch} that "
                        "the primary never had")
    if peer.seq < first:
        return Snapshot(f"batch {peer.seq} was not written in epoch {peer.last_epoch} here")
    if peer.seq == pos.seq:
        return UpToDate()
    if log_first <= peer.seq + 1:
        return Tail(peer.seq + 1)
    return Snapshot(f"the log starts at {log_first}, the replica is at {peer.seq}")


# -- failover ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Answer:
    """A member's answer to the leader's fence: its storage id and position."""

    storage_id: str
    pos: Position


def choose_primary(
    in_sync: Mapping[str, str], answers: Mapping[str, Answer], preference: Sequence[str],
) -> tuple[str, dict[str, str]] | None:
    """The new primary and the new in-sync set, from the fenced members' answers; None if no
    in-sync member answered with the storage it was in sync with.

    Every in-sync member holds every acknowledged batch and they are all prefixes of the deposed
    primary's sequence (fenced: none grows any more), so the longest holds everything any holds.
    """
    valid = {n: a for n, a in answers.items() if in_sync.get(n) == a.storage_id}
    if not valid:
        return None
    rank = {n: i for i, n in enumerate(preference)}
    best = max(valid, key=lambda n: (valid[n].pos, -rank.get(n, len(rank)), n))
    return best, {n: valid[n].storage_id for n in sorted(valid)}


def can_remove(in_sync: Mapping[str, str], primary: str, member: str, min_in_sync: int) -> bool:
    """May the primary drop ``member`` from ``in_sync`` (it does not answer)? Never the primary,
    never below the floor: a member that stays in sync has every acknowledged batch, since
    nothing is acknowledged without it, and so stays eligible for failover."""
    return member != primary and member in in_sync and len(in_sync) - 1 >= min_in_sync
