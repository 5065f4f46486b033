"""A host node's membership in the cluster: registration, replication, ownership checks, routing.

``NodeCluster`` joins the node to etcd (``Membership``: a leased key, self-fencing before the lease
can expire), publishes the app's bindings, runs the node's part in replication
(``ReplicationManager``: the replica groups it leads and follows, docs/replication.md), follows the
directory (through the node's ``Router``, which also carries the node's calls to other objects),
and gives the runtime its :class:`NodeOwnership`:

* ``acquire(call)``: before an event is delivered: the directory names the object's replica group,
  and this node must be that group's serving primary; otherwise a redirect (to the primary, or —
  while the group has none that serves — an empty one: the router waits for the failover).
* ``still_owner(id, grant)``: before every group commit of an object's writes: the node is live,
  it still serves the group as the primary of the epoch the instance was activated under, and the
  directory still gives the object that group and epoch. Otherwise the write is refused
  (``FencedError``), the instance is dropped and its callers get a retryable error: a superseded
  instance can never commit.

When the directory moves an object away (watch), its local instance is reset at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from duro import _codec
from duro._app import App
from duro._namespace import Call
from duro._wire import RedirectError
from duro.client.etcdkv import etcd_client, put_value
from duro.client.router import Router, app_key
from duro.errors import UnavailableError
from duro.node.config import NodeConfig
from duro.node.membership import Membership, NodeInfo
from duro.node.migration.service import MigrationServicer
from duro.node.replication.listener import ReplicationListener
from duro.node.replication.manager import ReplicationManager
from duro.node.replication.primary import PrimaryGroup
from duro.node.replication.service import ReplicationServicer
from duro.node.runtime.grant import Grant
from duro.node.storage import layout
from duro.placement.directory import Directory, Entry

if TYPE_CHECKING:
    from duro.node.runtime.host import ObjectHost

__all__ = ["NodeCluster", "NodeOwnership"]

log = logging.getLogger("duro.node")

STATS_PERIOD_S = 5


class NodeOwnership:
    """The runtime's view of what this node may serve (see the module docstring)."""

    def __init__(self, cluster: NodeCluster) -> None:
        self._c = cluster
        self.fenced_writes = 0
        self.redirects = 0

    async def acquire(self, call: Call) -> Grant:
        c = self._c
        oid = call.object_id.hex()
        if not c.serving:
            # Not executed: the router waits for the group's failover instead of failing.
            raise self._redirect(oid, "", f"node {c.node_id} cannot renew its etcd lease and "
                                          "has stopped serving", call.epoch)
        entry = c.router.cache.lookup(oid)
        if entry is None or (call.epoch and entry.epoch < call.epoch):
            entry = await c.fresh_entry(call, oid)
        rep = c.replication
        prim = rep.serving(entry.group) if rep is not None and entry.group else None
        if prim is None:
            raise self._not_here(entry)
        return Grant(entry.epoch, entry.group, prim.epoch)

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

    def still_owner(self, object_id: bytes, grant: Grant) -> bool:
        c = self._c
        rep = c.replication
        prim = rep.serving(grant.gid) if rep is not None else None
        entry = c.router.cache.lookup(object_id.hex())
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
        self.router = Router(self.etcd, cluster=config.cluster, region=config.region)
        self.directory = Directory(self.etcd, config.cluster)
        self.ownership = NodeOwnership(self)
        self.migration = MigrationServicer(self)
        self.replication: ReplicationManager | None = None
        self.replication_service = ReplicationServicer(lambda: self.replication)
        self.replication_listener = ReplicationListener(lambda: self.replication, config.cluster)
        self.membership: Membership | None = None
        self._serving = False
        self.host: ObjectHost | None = None
        self.address = ""
        self._load_task: asyncio.Task | None = None

    def add_to(self, server) -> None:  # noqa: ANN001 - grpc.aio.Server
        self.migration.add_to(server)
        self.replication_service.add_to(server)

    @property
    def serving(self) -> bool:
        """True while this node may serve: registered, not fenced, and its lease still valid by
        the clock. The clock check does not rely on the fencing callback having run: a fence
        timer can fire a little early (uvloop rounds timers to milliseconds), and then
        ``Membership`` stays LIVE past its deadline without calling ``on_fenced``."""
        m = self.membership
        return self._serving and m is not None and m.is_live()

    @serving.setter
    def serving(self, value: bool) -> None:
        self._serving = value

    async def start(self, address: str, host: ObjectHost) -> None:
        self.host = host
        self.address = address
        await self.etcd.connect()
        self.router.cache._on_change = self._on_directory_change
        await self.router.start()
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
        )
        self.membership = Membership(
            self.etcd, self.config.cluster, info, ttl=max(2, int(self.config.lease_ttl)),
            on_fenced=self._fenced, on_unfenced=self._unfenced,
        )
        await self.membership.start(timeout=30.0)
        self.serving = True
        await self.replication.start()
        self._load_task = asyncio.get_running_loop().create_task(self._report_load())

    async def stop(self) -> None:
        """Deregister first: callers stop routing here while in-flight calls drain."""
        self.serving = False
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
    async def fresh_entry(self, call: Call, oid: str) -> Entry:
        """The entry straight from etcd (the watch may lag), placing the object if it is new."""
        try:
            entry = await self.directory.get(oid)
        except Exception as exc:
            raise UnavailableError(f"cannot read the directory: {exc}") from None
        if entry is None:
            entry = await self.router.place(call)
        return entry

    def _on_directory_change(self, old: Entry | None, new: Entry | None) -> None:
        host = self.host
        if host is None:
            return
        oid = bytes.fromhex((new or old).object_id)  # type: ignore[union-attr]
        host.moved.pop(oid, None)  # our view caught up: ownership checks redirect from now on
        rep = self.replication
        if (new is not None and rep is not None and rep.serving(new.group) is not None
                and (old is None or old.group != new.group)):
            self._adopted(oid, new)
        act = host.activation(oid)
        if act is None:
            return
        if new is None or new.group != act.gid or new.epoch != act.epoch:
            act.reset(UnavailableError("object moved (directory epoch changed); call again"))

    def _adopted(self, oid: bytes, entry: Entry) -> None:
        """This node just became the owner (a migration landed): its alarm may now fire here."""
        assert self.host is not None
        raw = self.host.engine.get(layout.alarm_key(entry.group, oid))
        if raw is not None:
            when, binding, _retry = _codec.decode(raw)
            self.host.alarms.schedule(oid, binding, when, entry.group)

    def _promoted(self, prim: PrimaryGroup) -> None:
        log.info("node %s serves group %s (epoch %s)", self.node_id, prim.gid, prim.epoch)
        host = self.host
        if host is not None and host.moved:
            # Objects this node moved into that group are served here now (it failed over to
            # this node): their "moved away" redirects no longer hold.
            for oid in [o for o, r in host.moved.items() if getattr(r, "gid", 0) == prim.gid]:
                del host.moved[oid]

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
            for act in list(self.host._acts.values()):
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
