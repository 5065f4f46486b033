"""A host node's membership in the cluster: registration, replication, ownership checks, routing.

``NodeCluster`` joins the node to etcd (``Membership``: a leased key, self-fencing before the lease
can expire), publishes the app's bindings, runs the node's part in replication
(``ReplicationManager``: the replica groups it leads and follows, docs/replication.md) and in the
directory (``PartitionService``: the partitions its groups hold, docs/directory.md), looks objects
up through the node's ``Router`` (which also carries the node's calls to other objects), and gives
the runtime its :class:`NodeOwnership`:

* ``acquire(call)``: before an event is delivered: the directory names the object's replica group,
  and this node must be that group's serving primary; otherwise a redirect (to the primary, or —
  while the group has none that serves — an empty one: the router waits for the failover).
* ``still_owner(id, grant)``: before every group commit of an object's writes: the node is live,
  it still serves the group as the primary of the epoch the instance was activated under, and the
  directory still gives the object that group and epoch. Otherwise the write is refused
  (``FencedError``), the instance is dropped and its callers get a retryable error: a superseded
  instance can never commit.

Every change to an object's entry is made by the node that serves it (a migration's switch, the
deletion of an empty object's entry), so the node's cached entries of the objects it serves are
authoritative and no watch is needed; the creation of an entry only makes its group an owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from duro._app import App
from duro._namespace import Call
from duro._wire import RedirectError
from duro.client.router import Router, app_key
from duro.errors import DuroError, UnavailableError
from duro.node.config import NodeConfig
from duro.node.directory.server import DirectoryServicer
from duro.node.directory.service import PartitionService
from duro.node.inspect_service import InspectServicer
from duro.node.membership import Membership
from duro.node.migration.service import MigrationServicer
from duro.node.migration.source import clear_ops
from duro.node.replication.listener import ReplicationListener
from duro.node.replication.manager import ReplicationManager
from duro.node.replication.primary import PrimaryGroup
from duro.node.replication.service import ReplicationServicer
from duro.node.runtime.grant import Grant
from duro.node.storage import layout
from duro.node.storage.object_storage import DELETE
from duro.node.storage.upgrade import has_legacy_keys, move_legacy_keys
from duro.topology.directory_entry import Entry
from duro.topology.etcdkv import etcd_client, put_value
from duro.topology.nodes import NodeInfo

if TYPE_CHECKING:
    from duro.node.runtime.activation import Activation
    from duro.node.runtime.host import ObjectHost

__all__ = ["NodeCluster", "NodeOwnership"]

log = logging.getLogger("duro.node")

STATS_PERIOD_S = 5
REFRESH_INTERVAL = 1.0  # seconds between two directory refreshes of one object on a redirect
REFRESH_MEMORY = 10_000


class NodeOwnership:
    """The runtime's view of what this node may serve (see the module docstring)."""

    def __init__(self, cluster: NodeCluster) -> None:
        self._c = cluster
        self.fenced_writes = 0
        self.redirects = 0
        self._refreshed: dict[bytes, float] = {}

    async def acquire(self, call: Call) -> Grant:
        c = self._c
        oid = call.object_id.hex()
        if not c.serving:
            # Not executed: the router waits for the group's failover instead of failing.
            raise self._redirect(oid, "", f"node {c.node_id} cannot renew its etcd lease and "
                                          "has stopped serving", call.epoch)
        entry = c.router.directory.lookup(oid)
        if entry is None or (call.epoch and entry.epoch < call.epoch):
            entry = await c.fresh_entry(call)
        rep = c.replication
        prim = rep.serving(entry.group) if rep is not None and entry.group else None
        if prim is None and self._may_refresh(call.object_id):
            # The cache says "elsewhere", yet the call came here: the object may have moved in
            # (the source switched its entry, not us). Ask its partition before redirecting.
            entry = await c.fresh_entry(call)
            prim = rep.serving(entry.group) if rep is not None and entry.group else None
        if prim is None:
            raise self._not_here(entry)
        return Grant(entry.epoch, entry.group, prim.epoch)

    def _may_refresh(self, oid: bytes) -> bool:
        """At most one refresh per object per REFRESH_INTERVAL (bounded memory)."""
        now = time.monotonic()
        last = self._refreshed.get(oid)
        if last is not None and now - last < REFRESH_INTERVAL:
            return False
        if len(self._refreshed) >= REFRESH_MEMORY:
            self._refreshed.clear()
        self._refreshed[oid] = now
        return True

    def _not_here(self, entry: Entry) -> RedirectError:
        c = self._c
        if not entry.group:
            return self._redirect(entry.object_id, entry.node,
                                  "its directory entry names a node, not a replica group "
                                  "(written before replica groups; see duro upgrade)", entry.epoch)
        rep = c.replication
        g = rep.groups.get(entry.group) if rep is not None else None
        if g is not None and g.primary == c.node_id:
            # Being reconciled here (or about to be): come back in a moment.
            return self._redirect(entry.object_id, c.node_id,
                                  f"group {entry.group} is not serving here yet", entry.epoch)
        primary = g.primary if g is not None else ""
        return self._redirect(entry.object_id, primary,
                              f"its group {entry.group} is led by {primary or 'nobody now'}",
                              entry.epoch)

    def _redirect(self, oid: str, node: str, why: str, epoch: int) -> RedirectError:
        self.redirects += 1
        c = self._c
        info = c.router.nodes.nodes.get(node) if node else None
        if node == c.node_id and c.address:
            address = c.address
        else:
            address = info.address if info else ""
        return RedirectError(f"object {oid[:16]}… is not served here: {why}", node_id=node,
                             address=address, epoch=epoch)

    def evicted(self, act: Activation) -> None:
        """An object that holds nothing (no key, no alarm, no socket) leaves the directory when
        it is evicted: its calls are held while its entry is deleted at its partition
        (compare-and-delete on group and epoch), then go to wherever a new entry places it."""
        c = self._c
        host = c.host
        if host is None or not act.epoch or act.oid in host.holds or not c.serving:
            return
        engine = host.engine
        data = layout.data_prefix(act.gid, act.oid)
        if next(engine.scan(data, layout.prefix_end(data)), None) is not None:
            return
        if engine.get(layout.alarm_key(act.gid, act.oid)) is not None:
            return
        hub = host.sockets
        if hub is not None and hub.export(act.oid)[0]:
            return
        host.hold(act.oid)
        c.forget_later(act.oid, act.gid, act.epoch)

    def still_owner(self, object_id: bytes, grant: Grant) -> bool:
        c = self._c
        rep = c.replication
        prim = rep.serving(grant.gid) if rep is not None else None
        entry = c.router.directory.lookup(object_id.hex())
        ok = (
            c.serving
            and prim is not None
            and prim.epoch == grant.group_epoch
            and (
                entry is None
                or entry.epoch < grant.epoch
                or (entry.epoch == grant.epoch and entry.group == grant.gid)
            )
        )
        # The watch may lag behind what acquire() read from etcd itself: an entry that is absent
        # (just created) or older than the activation's epoch says nothing new, since epochs only
        # grow; only a newer epoch, or this epoch naming another group, means we were superseded.
        if not ok:
            self.fenced_writes += 1
        return ok


class NodeCluster:
    def __init__(self, config: NodeConfig, node_id: str, app: App) -> None:
        self.config = config
        self.node_id = node_id
        self.app = app
        self.etcd = etcd_client(config.etcd)
        self.router = Router(self.etcd, cluster=config.cluster, region=config.region,
                             cache_entries=config.directory_cache)
        self.ownership = NodeOwnership(self)
        self.migration = MigrationServicer(self)
        self.inspect_service = InspectServicer(self)
        self.replication: ReplicationManager | None = None
        self.replication_service = ReplicationServicer(lambda: self.replication)
        self.replication_listener = ReplicationListener(lambda: self.replication, config.cluster)
        self.partitions: PartitionService | None = None
        self.directory_service = DirectoryServicer(lambda: self.partitions,
                                                   lambda: self.router.nodes)
        self.membership: Membership | None = None
        self._serving = False
        self.host: ObjectHost | None = None
        self.address = ""
        self._load_task: asyncio.Task | None = None
        self._forgets: list[tuple[bytes, int, int]] = []
        self._upgrading = False
        self._tasks: set[asyncio.Task] = set()
        self.forgotten = 0

    def add_to(self, server) -> None:  # noqa: ANN001 - grpc.aio.Server
        self.migration.add_to(server)
        self.inspect_service.add_to(server)
        self.replication_service.add_to(server)
        self.directory_service.add_to(server)

    @property
    def serving(self) -> bool:
        """True while this node may serve: registered, not fenced, and its lease still valid by
        the clock. The clock check does not rely on the fencing callback having run: a fence
        timer can fire a little early (uvloop rounds timers to milliseconds), and then
        ``Membership`` stays LIVE past its deadline without calling ``on_fenced``."""
        m = self.membership
        return self._serving and not self._upgrading and m is not None and m.is_live()

    @serving.setter
    def serving(self, value: bool) -> None:
        self._serving = value

    async def start(self, address: str, host: ObjectHost, *, metrics_port: int = 0) -> None:
        self.host = host
        self.metrics_port = metrics_port  # registered with the node (duro top scrapes it)
        self.address = address
        await self.etcd.connect()
        await self.router.start()
        # The partitions this node serves answer its own lookups without a gRPC call to itself.
        self.router.directory.here = (address, self.directory_service.resolve_here)
        bindings = {n: self.app.namespace_class(b.class_name) for n, b in self.app.bindings.items()}
        await put_value(self.etcd, app_key(self.config.cluster), json.dumps(bindings, sort_keys=True))
        self.replication = ReplicationManager(
            self.node_id, self.etcd, self.config.cluster, host, self.router.nodes,
            lambda: self.membership, ack_timeout=self.config.replica_ack_timeout,
            log_bytes=self.config.replica_log_mb << 20,
        )
        self.replication.on_promoted.append(self._promoted)
        host.committer.on_fatal = self._storage_failed
        stream_address = await self._listen_replication(address)
        info = NodeInfo(
            node_id=self.node_id, address=address, region=self.config.region,
            zone=self.config.zone, capacity=self.config.capacity, load=host.active_count,
            storage_id=host.engine.storage_id, replication_address=stream_address,
            metrics_address=(f"{address.rsplit(':', 1)[0]}:{self.metrics_port}"
                             if self.metrics_port else ""),
        )
        self.membership = Membership(
            self.etcd, self.config.cluster, info, ttl=max(2, int(self.config.lease_ttl)),
            on_fenced=self._fenced, on_unfenced=self._unfenced,
        )
        await self.membership.start(timeout=30.0)
        self.serving = True
        await self.replication.start()
        self.partitions = PartitionService(
            self.node_id, self.config.cluster, self.etcd, self.replication, self.router.nodes,
            self.router.groups, self.router.directory.partitions,
            lambda: self.router.directory.known_settings,
            refuse=host.removal.why_deleted if host.removal.deleted else None)
        if has_legacy_keys(host.engine):
            await self._upgrade_storage()
        self._load_task = asyncio.get_running_loop().create_task(self._report_load())

    async def _upgrade_storage(self) -> None:
        """Keys written before replica groups move into this node's home group before it serves
        any object (node/storage/upgrade.py); meanwhile calls are answered "not serving yet"."""
        assert self.host is not None and self.replication is not None
        self._upgrading = True
        try:
            rep = self.replication
            while True:
                home = [g for g in self.router.groups.all() if g.home == self.node_id]
                if home and rep.serving(home[0].gid) is not None:
                    break
                await asyncio.sleep(0.05)  # the leader makes the group; this node leads it
            while True:
                try:
                    await move_legacy_keys(self.host.engine, self.host.committer, home[0].gid)
                    break
                except DuroError as exc:
                    # Below min_in_sync until the other nodes (upgrading too) have caught up:
                    # the moved keys must have their copies like any write. Moving again is safe
                    # (the same keys are rewritten identically).
                    if not exc.retryable:
                        raise
                    log.info("storage upgrade waits for the home group's copies: %s", exc)
                    await asyncio.sleep(0.2)
            self.host.alarms.remove_group(home[0].gid)
            self.host.alarms.add_group(home[0].gid)  # the moved alarms fire here
        finally:
            self._upgrading = False

    async def stop(self) -> None:
        """Deregister first: callers stop routing here while in-flight calls drain."""
        self.serving = False
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._load_task is not None:
            self._load_task.cancel()
            await asyncio.gather(self._load_task, return_exceptions=True)
        if self.membership is not None:
            await self.membership.stop()
        if self.replication is not None:
            await self.replication.stop()
        await self.replication_listener.stop()
        await self.router.close()
        await self.etcd.close()

    async def _listen_replication(self, advertised: str) -> str:
        """Start the replication stream listener; return the address others reach it at."""
        cfg = self.config.replication_listen
        listen_host = self.config.listen.rpartition(":")[0] or "127.0.0.1"
        host, _, port = cfg.rpartition(":") if cfg else (listen_host, ":", "0")
        bound = await self.replication_listener.start(host or listen_host, int(port or 0))
        adv_host = advertised.rpartition(":")[0] or host
        if adv_host in ("0.0.0.0", "::", "[::]"):
            adv_host = "127.0.0.1"
        return f"{adv_host}:{bound}"

    # -- ownership helpers ------------------------------------------------------------------
    async def fresh_entry(self, call: Call) -> Entry:
        """The entry from its directory partition (not the cache), placing the object if it is
        new (its first call)."""
        entry = await self.router.place(call)
        if self.host is not None:
            self.host.moved.pop(call.object_id, None)  # the partition's answer supersedes it
        return entry

    def _spawn(self, coro) -> None:  # noqa: ANN001
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget_later(self, oid: bytes, gid: int, epoch: int) -> None:
        """Queue an empty object's entry for deletion (batched per loop turn); its calls are
        held meanwhile (``NodeOwnership.evicted``)."""
        self._forgets.append((oid, gid, epoch))
        if len(self._forgets) == 1:
            asyncio.get_running_loop().call_soon(lambda: self._spawn(self._forget_batch()))

    async def _forget_batch(self) -> None:
        items, self._forgets = self._forgets, []
        host = self.host
        assert host is not None
        try:
            done = await self.router.directory.forget(items)
        except Exception as exc:
            log.info("forgetting %s empty objects failed: %r", len(items), exc)
            done = [False] * len(items)
        for (oid, _gid, epoch), forgotten in zip(items, done):
            if forgotten:
                self.forgotten += 1
                # Its held calls place it afresh (a new entry, a higher epoch).
                host.release_hold(oid, RedirectError(
                    "the object held nothing and left the directory; call again", epoch=epoch))
            else:
                host.release_hold(oid, None)

    def _promoted(self, prim: PrimaryGroup) -> None:
        log.info("node %s serves group %s (epoch %s)", self.node_id, prim.gid, prim.epoch)
        host = self.host
        if host is None:
            return
        if host.moved:
            # Objects this node moved into that group are served here now (it failed over to
            # this node): their "moved away" redirects no longer hold.
            for oid in [o for o, r in host.moved.items() if getattr(r, "gid", 0) == prim.gid]:
                del host.moved[oid]
        if host.removal.deleted:
            self._spawn(self._remove_deleted_classes(prim))
        moving = [k[-32:] for k, _v in host.engine.scan(*layout.moving_range(prim.gid))]
        if moving:
            for oid in moving:
                if oid not in host.holds:
                    host.hold(oid)
            self._spawn(self._settle_moves(prim, moving))

    async def _remove_deleted_classes(self, prim: PrimaryGroup) -> None:
        """Remove the objects of deleted classes from a group this node now serves (again
        after a retryable failure, such as too few copies in sync, while it still serves it)."""
        host, rep = self.host, self.replication
        assert host is not None and rep is not None

        async def forget(oid: bytes, entry: Entry) -> bool:
            if self.partitions is None:
                return False
            return await self.partitions.forget(oid, entry.group, entry.epoch)

        while rep.serving(prim.gid) is prim:
            try:
                await host.removal.run(prim.gid, forget)
                return
            except DuroError as exc:
                if not exc.retryable:
                    log.warning("group %s: removing deleted classes failed: %s", prim.gid, exc)
                    return
                log.info("group %s: removing deleted classes waits: %s", prim.gid, exc)
            await asyncio.sleep(0.5)

    async def _settle_moves(self, prim: PrimaryGroup, oids: list[bytes]) -> None:
        """Moves that the group's previous primary started and did not finish (their marker is
        in the group): each object's entry decides. Moved: drop the copy here. Not moved: claim
        the object at the next epoch (a switch still on its way then cannot apply), then serve."""
        host = self.host
        assert host is not None
        directory = self.router.directory
        gid = prim.gid
        for oid in oids:
            while not prim.stopped:
                try:
                    entry = await directory.resolve(oid, create=False, fresh=True)
                    marker = [[DELETE, layout.moving_key(gid, oid)]]
                    if entry is None or entry.group != gid:
                        await host.committer.write_raw(gid, clear_ops(host.engine, gid, oid)
                                                       + marker)
                        host.release_hold(oid, RedirectError(
                            "the object moved out of this group", epoch=entry.epoch if entry
                            else 0))
                    else:
                        resp = await directory.switch(oid, gid, entry.epoch, gid, entry.region)
                        if not resp.switched:
                            continue  # it changed meanwhile: look again
                        await host.committer.write_raw(gid, marker)
                        host.release_hold(oid, None)
                    log.info("settled an unfinished move of %s in group %s", oid.hex()[:16], gid)
                    break
                except Exception as exc:
                    log.info("settling a move of %s: %r; again", oid.hex()[:16], exc)
                    await asyncio.sleep(0.2)
            else:
                host.release_hold(oid, UnavailableError("group changed primary; call again"))

    def _storage_failed(self, exc: BaseException) -> None:
        """A local write of a replicated group failed: this copy may now differ from the
        followers'. Stop serving everything; the process must restart (crash-only)."""
        log.critical("node %s: a replicated write failed locally (%r); stopping", self.node_id,
                     exc)
        self.serving = False
        if self.replication is not None:
            for gid in list(self.replication.primaries):
                self.replication._demote(gid, f"local storage failed: {exc!r}")
        asyncio.get_running_loop().call_later(0.1, _exit_process)

    def _fenced(self) -> None:
        log.warning("node %s lost its etcd lease renewal: self-fencing", self.node_id)
        self.serving = False
        if self.host is not None:
            for act in self.host.activations():
                act.reset(UnavailableError("node self-fenced (etcd lease not renewed); retry"))
        if self.replication is not None:
            self.replication.evaluate_all()

    def _unfenced(self) -> None:
        log.warning("node %s re-registered in etcd: serving again", self.node_id)
        self.serving = True
        if self.replication is not None:
            self.replication.evaluate_all()

    async def _report_load(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            if self.membership is not None and self.host is not None:
                self.membership.update_load(self.host.active_count)
                if tick % STATS_PERIOD_S == 0:
                    # Access counts halve every STATS_PERIOD_S: recent traffic decides moves.
                    self.host.decay_regions(0.5)


def _exit_process() -> None:
    import os

    os._exit(70)
