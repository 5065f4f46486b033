"""The placement leader's rebalancer: objects move toward the region their calls come from.

Every ``interval`` seconds, while this replica leads: ask each live node for its candidates
(``Migration.Candidates``: objects whose recent calls come mostly from another region), feed them to
the pure planner (``duro.placement.planner``), and ask each move's source node to carry it out
(``Migration.Move``; the source runs the protocol of docs/migration.md). A crash of this process at
any point is harmless: it takes no part in a move after asking for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable

import grpc

from duro import tls
from duro._pb import migration_pb2, migration_pb2_grpc
from duro._transport import message_limits
from duro.placement.planner import Move, NodeState, ObjectStats, PlannerConfig, plan_moves

if TYPE_CHECKING:
    from duro.topology.nodes import NodeView

__all__ = ["Rebalancer"]

log = logging.getLogger("duro.placement.rebalancer")


class Rebalancer:
    def __init__(
        self,
        nodes: NodeView,
        is_leader: Callable[[], bool],
        config: PlannerConfig,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nodes = nodes
        self.is_leader = is_leader
        self.config = config
        self.interval = interval
        self.clock = clock
        self.candidate_since: dict[str, float] = {}
        self.last_moved: dict[str, float] = {}
        self.moves_done = 0
        self.moves_failed = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rebalancer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    def _stub(self, address: str) -> migration_pb2_grpc.MigrationStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = tls.channel(address, options=message_limits())
        return migration_pb2_grpc.MigrationStub(ch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.is_leader():
                self.candidate_since.clear()
                continue
            try:
                await self.round()
            except Exception:  # one bad round must not stop rebalancing
                log.exception("rebalance round failed")

    async def round(self) -> list[Move]:
        live = list(self.nodes.nodes.values())
        stats: list[ObjectStats] = []

        async def ask(n) -> None:  # noqa: ANN001
            try:
                r = await self._stub(n.address).Candidates(migration_pb2.CandidatesRequest(
                    min_share=self.config.min_share, min_calls=self.config.min_calls,
                    limit=1000), timeout=5.0)
            except grpc.aio.AioRpcError as exc:
                log.debug("candidates from %s failed: %s", n.node_id, exc.code().name)
                return
            for c in r.candidates:
                stats.append(ObjectStats(c.object_id.hex(), c.binding, n.node_id,
                                         {rc.region: rc.calls for rc in c.regions}, c.state_bytes))

        await asyncio.gather(*(ask(n) for n in live))
        now = self.clock()
        seen = {s.object_id for s in stats}
        for oid in [o for o in self.candidate_since if o not in seen]:
            del self.candidate_since[oid]  # not a candidate this round: the dwell starts over
        for oid in seen:
            self.candidate_since.setdefault(oid, now)
        # A move's cooldown is all ``last_moved`` is for: past it the entry says nothing, so the
        # leader's memory stays bounded by the moves of one cooldown, not by every object ever
        # moved (evicted empty objects leave no trace anywhere: docs/directory.md).
        for oid in [o for o, t in self.last_moved.items() if now - t >= self.config.cooldown]:
            del self.last_moved[oid]
        nodes = [NodeState(n.node_id, n.region, n.load, n.capacity, n.draining) for n in live]
        moves = plan_moves(stats, nodes, now, self.candidate_since, self.last_moved, self.config)
        await asyncio.gather(*(self._execute(m) for m in moves))
        return moves

    async def _execute(self, m: Move) -> None:
        source = self.nodes.nodes.get(m.source)
        if source is None:
            return
        self.last_moved[m.object_id] = self.clock()  # even a failed attempt waits a cooldown
        self.candidate_since.pop(m.object_id, None)
        try:
            r = await self._stub(source.address).Move(migration_pb2.MoveRequest(
                object_id=bytes.fromhex(m.object_id), binding=m.binding, target_node=m.target,
                reason=f"{m.share:.0%} of calls from {m.region}"), timeout=60.0)
        except grpc.aio.AioRpcError as exc:
            self.moves_failed += 1
            log.warning("move of %s to %s failed: %s", m.object_id[:16], m.target, exc.details())
            return
        if r.outcome == "released":
            self.moves_done += 1
            log.info("moved %s %s -> %s (%.0f%% of calls from %s, held %.1f ms)",
                     m.object_id[:16], m.source, m.target, m.share * 100, m.region, r.held_ms)
        else:
            self.moves_failed += 1
            log.warning("move of %s to %s aborted: %s", m.object_id[:16], m.target, r.detail)
