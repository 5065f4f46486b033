"""Which objects to move toward their callers: a pure decision function.

Inputs: per-object decayed call counts by caller region (reported by each object's owner), the live
nodes, how long each object has been a candidate without interruption, when each was last moved,
and the thresholds. Output: moves. No I/O; ``duro.placement.rebalancer`` gathers the inputs and
carries out the moves.

An object moves to the dominant region's least-loaded node only when

* one region other than its own sends at least ``min_share`` of its recent calls, and at least
  ``min_calls`` of them (decayed);
* it has been such a candidate continuously for ``min_dwell`` seconds (a burst does not move it);
* it was not moved in the last ``cooldown`` seconds (split traffic cannot make it flap faster);
* its binding is not listed in ``disabled_bindings``, and the target region has a live node with
  spare capacity that is not draining.

At most ``max_moves`` moves per round, the most lopsided objects first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

__all__ = ["ObjectStats", "NodeState", "PlannerConfig", "Move", "plan_moves"]


@dataclass(frozen=True, slots=True)
class ObjectStats:
    object_id: str          # hex
    binding: str
    node: str               # current owner
    calls: Mapping[str, float]  # region -> decayed calls
    state_bytes: int = 0


@dataclass(frozen=True, slots=True)
class NodeState:
    node_id: str
    region: str
    load: int = 0
    capacity: int = 1000
    draining: bool = False


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    min_share: float = 0.7
    min_calls: float = 20.0
    min_dwell: float = 10.0
    cooldown: float = 60.0
    max_moves: int = 16
    disabled_bindings: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Move:
    object_id: str
    binding: str
    source: str
    target: str
    region: str
    share: float


def plan_moves(
    stats: Sequence[ObjectStats],
    nodes: Sequence[NodeState],
    now: float,
    candidate_since: Mapping[str, float],
    last_moved: Mapping[str, float],
    config: PlannerConfig = PlannerConfig(),
) -> list[Move]:
    by_id = {n.node_id: n for n in nodes}
    load = {n.node_id: n.load for n in nodes}
    ranked: list[tuple[float, ObjectStats, str]] = []
    for s in stats:
        owner = by_id.get(s.node)
        if owner is None or s.binding in config.disabled_bindings:
            continue
        total = sum(s.calls.values())
        if total <= 0:
            continue
        region, calls = max(s.calls.items(), key=lambda kv: (kv[1], kv[0]))
        share = calls / total
        if region == owner.region or share < config.min_share or calls < config.min_calls:
            continue
        since = candidate_since.get(s.object_id)
        if since is None or now - since < config.min_dwell:
            continue
        moved = last_moved.get(s.object_id)
        if moved is not None and now - moved < config.cooldown:
            continue
        ranked.append((share, s, region))
    ranked.sort(key=lambda t: (-t[0], t[1].object_id))
    moves: list[Move] = []
    for share, s, region in ranked:
        if len(moves) >= config.max_moves:
            break
        targets = [n for n in nodes if n.region == region and not n.draining
                   and load[n.node_id] < n.capacity]
        if not targets:
            continue
        target = min(targets, key=lambda n: (load[n.node_id] / max(1, n.capacity), n.node_id))
        load[target.node_id] += 1
        moves.append(Move(s.object_id, s.binding, s.node, target.node_id, region, share))
    return moves
