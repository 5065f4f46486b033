"""The placement leader as the replica groups' configuration manager (docs/replication.md).

While this replica leads, every ``interval`` (and at once when a node or a group changes) it:

* gives every registered node without one a **home group** (the node as primary, followers chosen
  by ``policy.choose_followers``);
* **fails over** every group whose primary is gone — its node key expired, or it is registered
  under another lease or with another storage id: fence the live in-sync members at the next
  epoch, choose by ``protocol.choose_primary``, swap the configuration;
* keeps each group at ``replicas`` members: adds live nodes while it has fewer (they start as
  candidates, caught up by the primary), and replaces a member that has been gone for
  ``replace_after`` seconds;
* hands a group back to its **preferred primary** (the node it was made for) once that node is
  back and in sync: a planned handover, which the current primary carries out (pause, wait until
  every in-sync member holds everything, swap), so a restarted node serves its objects again.

Every write is a compare-and-swap guarded by this replica's leadership, so a deposed leader (or a
crashed one's late transaction) changes nothing. A failover interrupted at any point is simply
started again: fences are idempotent, and the swap compares the revision it started from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from etcd3aio import Etcd3Client

from duro import tls
from duro._pb import replication_pb2, replication_pb2_grpc
from duro._transport import NODE_ID_METADATA, channel_options
from duro.node.replication import protocol as P
from duro.placement.election import LeaderGuard
from duro.topology.groups import (
    GroupConfig,
    GroupConflict,
    GroupView,
    create_group,
    primary_gone,
    swap_group,
)
from duro.topology.nodes import NodeInfo, NodeView
from duro.topology.placement_policy import Candidate, choose_followers
from duro.topology.replication_settings import ReplicationSettings, write_settings
from duro.topology.watch import ETCD_ERRORS

__all__ = ["GroupCollector", "GroupManager"]

log = logging.getLogger("duro.placement.groups")

FENCE_TIMEOUT = 2.0
# A failover that would leave fewer in-sync copies than the floor waits this long for the other
# members to answer (a whole cluster restarting: they register one after the other) before it
# promotes with fewer (which then refuse writes until the others catch up).
FAILOVER_GRACE = 3.0


def _candidate(n: NodeInfo) -> Candidate:
    return Candidate(n.node_id, n.region, n.zone, n.load, n.capacity)


class GroupManager:
    def __init__(
        self,
        etcd: Etcd3Client,
        cluster: str,
        nodes: NodeView,
        *,
        guard: Callable[[], LeaderGuard | None],
        settings: ReplicationSettings,
        replica_id: str = "placement",
        interval: float = 0.5,
        replace_after: float = 30.0,
    ) -> None:
        self.etcd = etcd
        self.cluster = cluster
        self.nodes = nodes
        self.groups = GroupView(etcd, cluster)
        self._guard = guard
        self.settings = settings
        self.replica_id = replica_id
        self.interval = interval
        self.replace_after = replace_after
        self._gone_since: dict[str, float] = {}
        self._handover_at: dict[int, float] = {}  # gid -> when a handover was last asked for
        self._waiting: set[tuple[int, int]] = set()  # (gid, epoch) reported as waiting
        self._first_try: dict[tuple[int, int], float] = {}  # (gid, epoch) -> first failover try
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wrote_settings: int | None = None
        self.failovers = 0
        self.failover_failures = 0

    async def start(self) -> None:
        self.groups.callbacks.append(lambda *_: self._wake.set())
        self.nodes.callbacks.append(lambda *_: self._wake.set())
        await self.groups.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-manager")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.groups.stop()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            guard = self._guard()
            if guard is None:
                self._wrote_settings = None
                continue
            try:
                if self._wrote_settings != guard.create_revision:
                    await write_settings(self.etcd, self.cluster, self.settings)
                    self._wrote_settings = guard.create_revision
                await self.round(guard)
            except ETCD_ERRORS as exc:
                log.warning("group round: etcd error %r", exc)
            except Exception:
                log.exception("group round failed")

    # -- one round ----------------------------------------------------------------------------
    async def round(self, guard: LeaderGuard) -> None:
        nodes = dict(self.nodes.nodes)
        now = time.monotonic()
        for n in list(self._gone_since):
            if n in nodes:
                del self._gone_since[n]
        groups = self.groups.all()
        members = {m for g in groups for m in g.replicas}
        for m in members:
            if m not in nodes:
                self._gone_since.setdefault(m, now)
        homes = {g.home for g in groups}
        for n in sorted(nodes.values(), key=lambda n: n.node_id):
            if n.node_id not in homes and n.storage_id and n.lease:
                await self._create_home(n, groups, guard)
        work = []
        for g in groups:
            why = primary_gone(g, nodes)
            if why is not None:
                work.append(self.failover(g, why, guard))
            else:
                work.append(self._membership(g, nodes, groups, guard, now))
                work.append(self._prefer_home(g, nodes, now))
        await asyncio.gather(*work)

    async def _create_home(self, n: NodeInfo, groups: list[GroupConfig], guard: LeaderGuard) -> None:
        live = [_candidate(x) for x in self.nodes.nodes.values()]
        held: dict[str, int] = {}
        for g in groups:
            for m in g.replicas:
                held[m] = held.get(m, 0) + 1
        followers = choose_followers(_candidate(n), live, self.settings.replicas - 1,
                                     memberships=held)
        gid = max((g.gid for g in groups), default=0) + 1
        cfg = GroupConfig(gid=gid, region=n.region, epoch=1, primary=n.node_id, lease=n.lease,
                          replicas=(n.node_id, *followers), in_sync=((n.node_id, n.storage_id),),
                          home=n.node_id)
        made = await create_group(self.etcd, self.cluster, cfg, guards=[guard.compare()])
        if made is not None:
            groups.append(made)
            log.info("group %s created for node %s: replicas %s", gid, n.node_id,
                     list(made.replicas))

    async def _membership(self, g: GroupConfig, nodes: dict[str, NodeInfo],
                          groups: list[GroupConfig], guard: LeaderGuard, now: float) -> None:
        """Replace members gone for ``replace_after``; add members up to ``replicas``."""
        want = self.settings.replicas
        replicas = list(g.replicas)
        in_sync = g.in_sync_map
        for m in list(replicas):
            if m == g.primary or m in nodes:
                continue
            if now - self._gone_since.get(m, now) >= self.replace_after:
                replicas.remove(m)
                in_sync.pop(m, None)
        if len(replicas) < want:
            held: dict[str, int] = {}
            for other in groups:
                for m in other.replicas:
                    held[m] = held.get(m, 0) + 1
            primary = nodes[g.primary]
            live = [_candidate(x) for x in nodes.values() if not x.draining]
            replicas += choose_followers(_candidate(primary), live, want - len(replicas),
                                         exclude=replicas, memberships=held)
        if tuple(replicas) == g.replicas and in_sync == g.in_sync_map:
            return
        new = g.replace(replicas=tuple(replicas)).with_in_sync(in_sync)
        try:
            await swap_group(self.etcd, self.cluster, g, new, guards=[guard.compare()])
            log.info("group %s: replicas %s -> %s", g.gid, list(g.replicas), replicas)
        except GroupConflict:
            pass  # changed meanwhile (the primary's in_sync change): next round

    async def _prefer_home(self, g: GroupConfig, nodes: dict[str, NodeInfo], now: float) -> None:
        home = g.home if g.home in g.replicas else (g.replicas[0] if g.replicas else "")
        info = nodes.get(home)
        if (not home or home == g.primary or info is None or not info.lease or info.draining
                or g.sid_of(home) != info.storage_id):
            return
        if now - self._handover_at.get(g.gid, 0.0) < 2.0:
            return
        self._handover_at[g.gid] = now
        primary = nodes.get(g.primary)
        if primary is None:
            return
        try:
            r = await replication_pb2_grpc.ReplicationStub(self._channel(primary.address)).Handover(
                replication_pb2.HandoverRequest(gid=g.gid, target=home, target_lease=info.lease),
                timeout=5.0, metadata=((NODE_ID_METADATA, f"placement:{self.replica_id}"),))
        except grpc.aio.AioRpcError as exc:
            log.info("group %s: handover to %s failed: %s", g.gid, home, exc.code().name)
            return
        if r.done:
            log.info("group %s handed back to its preferred primary %s", g.gid, home)
        else:
            log.info("group %s: handover to %s not done: %s", g.gid, home, r.detail)

    def _channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = tls.channel(address, options=channel_options())
        return ch

    # -- failover -----------------------------------------------------------------------------
    async def failover(self, g: GroupConfig, why: str, guard: LeaderGuard) -> GroupConfig | None:
        nodes = self.nodes.nodes
        members = [m for m in g.in_sync_nodes if m in nodes]
        epoch = g.epoch + 1
        t0 = time.monotonic()
        answers = await asyncio.gather(*(self._fence(nodes[m].address, g.gid, epoch)
                                         for m in members))
        got = {m: a for m, a in zip(members, answers) if a is not None and a.lease}
        choice = P.choose_primary(
            g.in_sync_map,
            {m: P.Answer(a.storage_id, P.Position(a.last_epoch, a.seq)) for m, a in got.items()},
            g.replicas)
        if choice is None:
            self.failover_failures += 1
            level = logging.DEBUG if (g.gid, g.epoch) in self._waiting else logging.WARNING
            self._waiting.add((g.gid, g.epoch))
            log.log(level, "group %s: primary %s is gone (%s) and no in-sync member answered "
                    "(asked %s); the group waits", g.gid, g.primary, why, members)
            return None
        best, in_sync = choice
        key = (g.gid, g.epoch)
        first = self._first_try.setdefault(key, t0)
        if (len(in_sync) < self.settings.floor and len(in_sync) < len(g.in_sync)
                and t0 - first < FAILOVER_GRACE):
            log.info("group %s: only %s of the in-sync members answered; waiting for the others",
                     g.gid, list(in_sync))
            return None
        new = g.replace(epoch=epoch, primary=best, lease=got[best].lease).with_in_sync(in_sync)
        try:
            stored = await swap_group(self.etcd, self.cluster, g, new, guards=[guard.compare()])
        except GroupConflict as exc:
            log.info("group %s: failover not applied (%s); next round", g.gid, exc)
            return None
        self.failovers += 1
        self._first_try.pop(key, None)
        log.warning("group %s: failed over from %s (%s) to %s at epoch %s in %.0f ms; in_sync %s",
                    g.gid, g.primary, why, best, epoch, (time.monotonic() - t0) * 1000,
                    list(in_sync))
        return stored

    async def _fence(self, address: str, gid: int, epoch: int) -> Any:
        try:
            return await replication_pb2_grpc.ReplicationStub(self._channel(address)).Fence(
                replication_pb2.FenceRequest(gid=gid, epoch=epoch), timeout=FENCE_TIMEOUT,
                metadata=((NODE_ID_METADATA, f"placement:{self.replica_id}"),))
        except grpc.aio.AioRpcError as exc:
            log.info("fence of group %s at %s failed: %s", gid, address, exc.code().name)
            return None


class GroupCollector:
    """Prometheus view of the group manager (registered by the placement service)."""

    def __init__(self, manager: GroupManager) -> None:
        self.m = manager

    def collect(self):  # noqa: ANN201 - prometheus_client Collector
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        groups = self.m.groups.all()
        nodes = self.m.nodes.nodes
        floor = self.m.settings.floor
        yield GaugeMetricFamily("duro_placement_groups_count", "replica groups", len(groups))
        yield GaugeMetricFamily(
            "duro_placement_under_replicated_groups_count",
            "groups with fewer in-sync copies than members",
            sum(1 for g in groups if len(g.in_sync) < len(g.replicas)))
        yield GaugeMetricFamily(
            "duro_placement_groups_without_primary_count",
            "groups whose primary is gone (failing over, or no in-sync member left)",
            sum(1 for g in groups if primary_gone(g, nodes) is not None))
        yield GaugeMetricFamily(
            "duro_placement_write_refusing_groups_count",
            "groups with fewer in-sync copies than min_in_sync",
            sum(1 for g in groups if len(g.in_sync) < floor))
        yield CounterMetricFamily("duro_placement_failovers", "groups failed over",
                                  self.m.failovers)
        yield CounterMetricFamily("duro_placement_failover_failures",
                                  "failover attempts with no in-sync member to promote",
                                  self.m.failover_failures)
