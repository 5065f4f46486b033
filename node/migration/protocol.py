"""The source side of a migration, as a pure state machine: events in, actions out.

No I/O here: ``duro.node.migration.source`` performs the actions and feeds back the events, and the
model check (``tests/node/migration/test_protocol_model.py``) drives the same function through every
interleaving of steps and failures. See ``docs/migration.md`` for the protocol and its failure cases.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = [
    "Phase", "SourceState", "Event", "Action", "begin", "step",
    "Drained", "DrainFailed", "TransferAcked", "TransferFailed", "SwitchApplied", "SwitchRefused",
    "SwitchUnknown", "FenceApplied", "FenceRefused", "FenceUnknown",
    "HoldAdmission", "SendSnapshot", "SwitchEntry", "FenceEntry", "Release", "Abort",
]


class Phase(enum.Enum):
    FREEZING = "freezing"          # admission held; waiting for admitted events to finish + flush
    TRANSFERRING = "transferring"  # snapshot streamed to the target; waiting for its durable ack
    SWITCHING = "switching"        # etcd transaction S@e -> T@e+1 sent
    FENCING = "fencing"            # switch outcome unknown: rewriting source@epoch so it cannot apply
    RELEASED = "released"          # done: the target owns the object (terminal)
    ABORTED = "aborted"            # done: the source still owns it (terminal)


@dataclass(frozen=True, slots=True)
class SourceState:
    object_id: str
    source: str
    target: str
    epoch: int           # the epoch the source owns the object at
    phase: Phase


# -- events (what happened) ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Drained:
    """Every admitted event finished and every write is durable."""


@dataclass(frozen=True, slots=True)
class DrainFailed:
    """Admitted events did not finish in time (nothing was sent)."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransferAcked:
    """The target has the snapshot on disk (fsynced)."""


@dataclass(frozen=True, slots=True)
class TransferFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class SwitchApplied:
    """The etcd transaction succeeded: the entry is now target@epoch+1."""


@dataclass(frozen=True, slots=True)
class SwitchRefused:
    """The transaction's compare failed: the entry is not source@epoch (someone else changed it)."""

    node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class SwitchUnknown:
    """No answer from etcd: the transaction may or may not have been applied."""


@dataclass(frozen=True, slots=True)
class FenceApplied:
    """The entry was rewritten unchanged (source@epoch, new revision): a switch transaction still
    in flight can no longer apply, since its compare names the old revision."""


@dataclass(frozen=True, slots=True)
class FenceRefused:
    """The fence's compare failed: the entry changed (read back as node@epoch)."""

    node: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class FenceUnknown:
    """No answer from etcd for the fence either."""


Event = (
    Drained | DrainFailed | TransferAcked | TransferFailed | SwitchApplied | SwitchRefused | SwitchUnknown
    | FenceApplied | FenceRefused | FenceUnknown
)


# -- actions (what to do) --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HoldAdmission:
    """Stop admitting events for the object (they queue, in order) and report Drained."""


@dataclass(frozen=True, slots=True)
class SendSnapshot:
    """Stream the object's keys and alarm to the target; report TransferAcked/TransferFailed."""


@dataclass(frozen=True, slots=True)
class SwitchEntry:
    """etcd txn: if entry == source@epoch then entry := target@epoch+1."""

    target: str
    new_epoch: int


@dataclass(frozen=True, slots=True)
class FenceEntry:
    """etcd txn: if the entry still has the revision the switch compared against, rewrite it
    unchanged; report FenceApplied, or FenceRefused with the entry read back, or FenceUnknown
    (then it is retried after a short delay)."""


@dataclass(frozen=True, slots=True)
class Release:
    """The target owns it: redirect held and later calls to target@new_epoch; delete the copy."""

    target: str
    new_epoch: int


@dataclass(frozen=True, slots=True)
class Abort:
    """The source still owns it: admit the held events again; tell the target to drop its copy.

    ``still_owner`` is False when the entry moved elsewhere without us (then the instance must be
    dropped instead of resumed; the ordinary ownership check will redirect).
    """

    reason: str
    still_owner: bool = True


Action = HoldAdmission | SendSnapshot | SwitchEntry | FenceEntry | Release | Abort


def begin(object_id: str, source: str, target: str, epoch: int) -> tuple[SourceState, list[Action]]:
    if target == source:
        raise ValueError("a migration needs a target other than the source")
    return SourceState(object_id, source, target, epoch, Phase.FREEZING), [HoldAdmission()]


def step(s: SourceState, ev: Event) -> tuple[SourceState, list[Action]]:
    """The source's next state and actions. Unexpected events leave the state unchanged."""
    p = s.phase
    new_epoch = s.epoch + 1
    if p is Phase.FREEZING:
        if isinstance(ev, Drained):
            return replace(s, phase=Phase.TRANSFERRING), [SendSnapshot()]
        if isinstance(ev, DrainFailed):
            return replace(s, phase=Phase.ABORTED), [Abort(f"drain failed: {ev.reason}")]
    if p is Phase.TRANSFERRING:
        if isinstance(ev, TransferAcked):
            return replace(s, phase=Phase.SWITCHING), [SwitchEntry(s.target, new_epoch)]
        if isinstance(ev, TransferFailed):
            return replace(s, phase=Phase.ABORTED), [Abort(f"transfer failed: {ev.reason}")]
    if p is Phase.SWITCHING:
        if isinstance(ev, SwitchApplied):
            return replace(s, phase=Phase.RELEASED), [Release(s.target, new_epoch)]
        if isinstance(ev, SwitchRefused):
            return _resolved(s, ev.node, ev.epoch)
        if isinstance(ev, SwitchUnknown):
            return replace(s, phase=Phase.FENCING), [FenceEntry()]
    if p is Phase.FENCING:
        if isinstance(ev, FenceApplied):
            return replace(s, phase=Phase.ABORTED), [Abort("directory switch did not happen")]
        if isinstance(ev, FenceRefused):
            return _resolved(s, ev.node, ev.epoch)
        if isinstance(ev, FenceUnknown):
            return s, [FenceEntry()]
    return s, []


def _resolved(s: SourceState, node: str | None, epoch: int) -> tuple[SourceState, list[Action]]:
    """The entry is known: decide from it alone."""
    new_epoch = s.epoch + 1
    if node == s.target and epoch == new_epoch:
        return replace(s, phase=Phase.RELEASED), [Release(s.target, new_epoch)]
    if node == s.source and epoch == s.epoch:
        return replace(s, phase=Phase.ABORTED), [Abort("directory switch did not happen")]
    # Someone else changed the entry (should not happen: only the owner moves its objects).
    return replace(s, phase=Phase.ABORTED), [
        Abort(f"directory entry changed to {node}@{epoch} during the move", still_owner=False)
    ]
