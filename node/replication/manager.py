"""``ReplicationManager``: a node's part in replication — which groups it leads, its copies of the
others, its streams to its peers — and its reaction to configuration changes.

* A configuration that names this node as primary, with the lease it holds now and the storage
  it has now, makes it the group's primary (:class:`~duro.node.replication.primary.PrimaryGroup`:
  reconcile, then serve); one that does not — or a lost lease, or a member fenced at a newer
  epoch — ends that role: the group's objects are reset here and its alarms stop.
* It is the group committer's ``Replication``: ``admit(gid)`` answers for the group's primary.
* Followers' work (applying batches, fences, snapshots) is the :class:`Follower`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable

import rocksdict
from etcd3aio import Etcd3Client
from etcd3aio._protobuf import Compare

from duro.errors import FencedError, UnavailableError
from duro.node.replication.follower import Follower
from duro.node.replication.link import PeerLink
from duro.node.replication.primary import PrimaryGroup
from duro.node.replication.state import GroupReplica, load_replicas
from duro.node.storage import layout
from duro.node.storage.commit import GroupCommitter
from duro.topology.groups import GroupConfig, GroupView
from duro.topology.replication_settings import SettingsView

if TYPE_CHECKING:
    from duro.node.membership import Membership
    from duro.node.runtime.host import ObjectHost
    from duro.topology.nodes import NodeView

__all__ = ["ReplicationManager", "ReplicationStats"]

log = logging.getLogger("duro.node.replication")

TICK = 0.1
DROP_CHECK_TICKS = 50  # every 5 s: copies of groups this node is no longer a member of
DROP_AFTER = 60.0  # seconds a copy must have been abandoned before it is deleted


def _peer_overrides() -> dict[str, str]:
    """Test-only: ``DURO_TEST_PEER_ADDRESSES="node=host:port,..."`` makes this node reach those
    peers' replication streams at other addresses (a proxy that partitions or delays only this
    node's batches to them)."""
    raw = os.environ.get("DURO_TEST_PEER_ADDRESSES", "")
    return dict(p.split("=", 1) for p in raw.split(",") if "=" in p)


class ReplicationStats:
    __slots__ = ("snapshots", "snapshot_bytes", "promotions", "demotions")

    def __init__(self) -> None:
        self.snapshots = 0
        self.snapshot_bytes = 0
        self.promotions = 0
        self.demotions = 0


class ReplicationManager:
    def __init__(
        self, node_id: str, etcd: Etcd3Client, cluster: str, host: ObjectHost, nodes: NodeView,
        membership: Callable[[], Membership | None], *, ack_timeout: float = 1.0,
        log_bytes: int = 16 << 20,
    ) -> None:
        self.node_id = node_id
        self.etcd = etcd
        self.cluster = cluster
        self.host = host
        self.engine = host.engine
        self.committer: GroupCommitter = host.committer
        self.nodes = nodes
        self._membership = membership
        self.ack_timeout = ack_timeout
        self.log_bytes = log_bytes
        self.groups = GroupView(etcd, cluster)
        self.settings = SettingsView(etcd, cluster)
        self.replicas: dict[int, GroupReplica] = {}
        self.primaries: dict[int, PrimaryGroup] = {}
        self.links: dict[str, PeerLink] = {}
        self.follower = Follower(self)
        self.stats = ReplicationStats()
        self.on_promoted: list[Callable[[PrimaryGroup], None]] = []
        self._tick: asyncio.Task[None] | None = None
        self._started = False
        self._overrides = _peer_overrides()
        self._abandoned: dict[int, float] = {}  # gid -> since when this node is not a member

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.replicas = load_replicas(self.engine, log_bytes=self.log_bytes)
        self.committer.replication = self
        await self.settings.start()
        self.groups.callbacks.append(lambda name, _old, new: self.evaluate(int(name)))
        await self.groups.start()
        self._started = True
        for cfg in self.groups.all():
            self.evaluate(cfg.gid)
        self._tick = asyncio.get_running_loop().create_task(self._ticker(), name="replication")

    async def stop(self) -> None:
        self._started = False
        if self._tick is not None:
            self._tick.cancel()
            await asyncio.gather(self._tick, return_exceptions=True)
        for gid in list(self.primaries):
            self._demote(gid, "node stopping")
        await self.groups.stop()
        await self.settings.stop()
        await asyncio.gather(*(link.close() for link in self.links.values()),
                             return_exceptions=True)
        self.links.clear()

    @property
    def min_in_sync(self) -> int:
        return self.settings.current.floor

    # -- facts about this node ----------------------------------------------------------------
    def current_lease(self) -> int:
        m = self._membership()
        return int(m.lease_id or 0) if m is not None and m.is_live() else 0

    def holds_lease(self, cfg: GroupConfig) -> bool:
        lease = self.current_lease()
        return bool(lease) and cfg.lease == lease

    def registration_guards(self) -> list[Any]:
        m = self._membership()
        if m is None or not m.lease_id:
            raise UnavailableError("this node is not registered")
        return [Compare(result=Compare.EQUAL, target=Compare.LEASE, key=m.key.encode(),
                        lease=m.lease_id)]

    def replica(self, gid: int) -> GroupReplica:
        rep = self.replicas.get(gid)
        if rep is None:
            rep = self.replicas[gid] = GroupReplica(gid, log_bytes=self.log_bytes)
        return rep

    async def write(self, batch: rocksdict.WriteBatch, *, inline: bool = False) -> None:
        """A synced write through the node's writer thread (after everything before it).

        A failure is fatal to the node (``committer.on_fatal``): the copies' positions in memory
        already count the batch, so answering anything more could acknowledge what is not on
        disk; the node stops and recovers from what is."""
        writer = self.committer.writer
        try:
            if writer is None or inline:
                self.engine.write(batch)
            else:
                await writer.write(batch)
        except Exception as exc:
            log.critical("replicated write failed on this node: %r", exc)
            if self.committer.on_fatal is not None:
                self.committer.on_fatal(exc)
            raise

    def kick(self) -> None:
        self.committer.kick()

    # -- roles --------------------------------------------------------------------------------
    def serving(self, gid: int) -> PrimaryGroup | None:
        prim = self.primaries.get(gid)
        return prim if prim is not None and prim.serving and not prim.stopped else None

    def leads(self, gid: int, epoch: int) -> bool:
        prim = self.primaries.get(gid)
        return prim is not None and not prim.stopped and prim.epoch == epoch

    def step_down_if_older(self, gid: int, epoch: int) -> None:
        prim = self.primaries.get(gid)
        if prim is not None and prim.epoch < epoch:
            self.deposed(prim, f"a primary of epoch {epoch} exists")

    def deposed(self, prim: PrimaryGroup, reason: str) -> None:
        if self.primaries.get(prim.gid) is prim:
            self._demote(prim.gid, reason)

    def evaluate(self, gid: int) -> None:
        """Take or give up the primary role of ``gid`` as its configuration says."""
        if not self._started:
            return
        cfg = self.groups.get(gid)
        prim = self.primaries.get(gid)
        mine = (cfg is not None and cfg.primary == self.node_id and self.holds_lease(cfg)
                and cfg.sid_of(self.node_id) == self.engine.storage_id)
        if prim is not None and (not mine or cfg is None or prim.epoch != cfg.epoch):
            self._demote(gid, "the configuration names another primary or lease"
                         if cfg is not None else "the group is gone")
            prim = None
        if mine and prim is None:
            assert cfg is not None
            prim = self.primaries[gid] = PrimaryGroup(self, cfg, self.replica(gid))
            self.stats.promotions += 1
            log.info("group %s: primary of epoch %s; reconciling", gid, cfg.epoch)
            asyncio.get_running_loop().create_task(self._start(prim))
        elif prim is not None and cfg is not None:
            prim.config_changed(cfg)

    async def _start(self, prim: PrimaryGroup) -> None:
        try:
            await prim.start()
        except Exception as exc:
            log.warning("group %s: could not take the primary role: %r", prim.gid, exc)
            self.deposed(prim, f"start failed: {exc!r}")

    def evaluate_all(self) -> None:
        for gid in {*(c.gid for c in self.groups.all()), *self.primaries}:
            self.evaluate(gid)

    def promoted(self, prim: PrimaryGroup) -> None:
        """The primary serves: its objects may run, its alarms fire here."""
        self.host.alarms.add_group(prim.gid)
        for cb in self.on_promoted:
            cb(prim)
        self.kick()

    def _demote(self, gid: int, reason: str) -> None:
        prim = self.primaries.pop(gid, None)
        if prim is None:
            return
        prim.stop(reason)
        self.stats.demotions += 1
        self.host.alarms.remove_group(gid)
        self.host.reset_group(gid, UnavailableError(
            f"group {gid} is no longer led by node {self.node_id}; call again"))

    # -- the committer's view -----------------------------------------------------------------
    def admit(self, gid: int) -> object:
        prim = self.primaries.get(gid)
        if prim is None:
            return FencedError(f"node {self.node_id} is not the primary of group {gid}")
        return prim.admit()

    # -- peers --------------------------------------------------------------------------------
    def link_to(self, peer: str) -> PeerLink | None:
        info = self.nodes.nodes.get(peer)
        if info is None:
            return None
        stream = self._overrides.get(peer, info.replication_address)
        link = self.links.get(peer)
        if link is not None and (link.address, link.stream_address) != (info.address, stream):
            old = link
            asyncio.get_running_loop().create_task(old.close())
            link = None
        if link is None:
            link = self.links[peer] = PeerLink(self.node_id, self.cluster, peer, info.address,
                                               stream)
        return link

    async def _ticker(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK)
            ticks += 1
            now = time.monotonic()
            if ticks % DROP_CHECK_TICKS == 0:
                await self._drop_abandoned_copies(now)
            try:
                for prim in list(self.primaries.values()):
                    if not self.holds_lease(prim.config):
                        self.deposed(prim, "this node's lease is no longer the one it leads with")
                        continue
                    prim.check_timeouts(now)
            except Exception:
                log.exception("replication tick failed")

    async def _drop_abandoned_copies(self, now: float) -> None:
        """Delete the copy of a group whose configuration has not listed this node (as a member
        or as in sync) for ``DROP_AFTER`` seconds: a member the leader replaced."""
        for gid, rep in list(self.replicas.items()):
            cfg = self.groups.get(gid)
            member = cfg is None or self.node_id in cfg.replicas or (
                cfg.sid_of(self.node_id) is not None) or gid in self.primaries
            if member or not rep.stored:
                self._abandoned.pop(gid, None)
                continue
            since = self._abandoned.setdefault(gid, now)
            if now - since < DROP_AFTER:
                continue
            async with self.follower.lock(gid):
                batch = rocksdict.WriteBatch(raw_mode=True)
                batch.delete_range(*layout.group_range(gid))
                await self.write(batch)
                self.replicas.pop(gid, None)
                self._abandoned.pop(gid, None)
            log.info("group %s: dropped this node's copy (no longer a member)", gid)

    def describe(self) -> dict[str, Any]:
        """For health and metrics: roles and positions."""
        return {
            "primaries": {g: {"epoch": p.epoch, "serving": p.serving, "pos": p.replica.pos.seq,
                              "in_sync": list(p.config.in_sync_nodes),
                              "stalled": p.stalled is not None}
                          for g, p in self.primaries.items()},
            "copies": {g: {"pos": r.pos.seq, "epoch": r.pos.last_epoch, "accepted": r.accepted}
                       for g, r in self.replicas.items() if r.stored},
        }
