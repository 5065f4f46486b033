"""The rebalancer's memory is bounded by one cooldown's moves, not by every object ever moved."""

from __future__ import annotations

from types import SimpleNamespace

from duro.placement.planner import PlannerConfig
from duro.placement.rebalancer import Rebalancer


async def test_last_moved_forgets_moves_past_their_cooldown() -> None:
    now = [1000.0]
    r = Rebalancer(SimpleNamespace(nodes={}), lambda: True, PlannerConfig(cooldown=60.0),
                   clock=lambda: now[0])
    r.last_moved.update({"old": 900.0, "edge": 940.0, "recent": 990.0})
    r.candidate_since.update({"gone": 950.0})
    assert await r.round() == []
    assert r.last_moved == {"recent": 990.0}  # 940 is exactly one cooldown ago: forgotten
    assert r.candidate_since == {}  # not a candidate this round: its dwell starts over
    now[0] = 1050.0
    await r.round()
    assert r.last_moved == {}
