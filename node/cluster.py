"""A host node's membership in the cluster: registration, ownership checks, fencing, routing.

``NodeCluster`` joins the node to etcd (``Membership``: a leased key, self-fencing before the lease
can expire), publishes the app's bindings, follows the directory (through the node's ``Router``,
which also carries the node's calls to other objects), and gives the runtime its
:class:`NodeOwnership`:

* ``acquire(call)``: before an event is delivered: the directory must name this node (else a
  redirect to the owner), and the node must be serving (its lease valid), else a retryable error.
* ``still_owner(id, epoch)``: before every group commit of an object's writes: the node is live,
  and the directory still names this node with the epoch the instance was activated with.
  Otherwise the write is refused (``FencedError``), the instance is dropped and its callers get a
  retryable error: a superseded instance can never commit.

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

    async def acquire(self, call: Call) -> int:
        c = self._c
        if not c.serving:
            raise UnavailableError(
                f"node {c.node_id} cannot renew its etcd lease and has stopped serving; retry"
            )
        oid = call.object_id.hex()
        entry = c.router.cache.lookup(oid)
        if entry is None or (call.epoch and entry.epoch < call.epoch):
            entry = await c.fresh_entry(call, oid)
        if entry.node != c.node_id:
            self.redirects += 1
            info = c.router.nodes.nodes.get(entry.node)
            raise RedirectError(
                f"object {oid[:16]}… is owned by node {entry.node}",
                node_id=entry.node, address=info.address if info else "", epoch=entry.epoch,
            )
        return entry.epoch

    def still_owner(self, object_id: bytes, epoch: int) -> bool:
        c = self._c
        entry = c.router.cache.lookup(object_id.hex())
        ok = (
            c.serving
            and c.membership is not None
            and c.membership.is_live()
            and (
                entry is None
                or entry.epoch < epoch
                or (entry.epoch == epoch and entry.node == c.node_id)
            )
        )
        # The watch may lag behind what acquire() read from etcd itself: an entry that is absent
        # (just created) or older than the activation's epoch says nothing new, since epochs only
        # grow; only a newer epoch, or this epoch naming another node, means we were superseded.
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
        self.membership: Membership | None = None
        self._serving = False
        self.host: ObjectHost | None = None
        self._load_task: asyncio.Task | None = None

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
        await self.etcd.connect()
        self.router.cache._on_change = self._on_directory_change
        await self.router.start()
        bindings = {n: self.app.namespace_class(b.class_name) for n, b in self.app.bindings.items()}
        await put_value(self.etcd, app_key(self.config.cluster), json.dumps(bindings, sort_keys=True))
        info = NodeInfo(
            node_id=self.node_id, address=address, region=self.config.region,
            zone=self.config.zone, capacity=self.config.capacity, load=host.active_count,
        )
        self.membership = Membership(
            self.etcd, self.config.cluster, info, ttl=max(2, int(self.config.lease_ttl)),
            on_fenced=self._fenced, on_unfenced=self._unfenced,
        )
        await self.membership.start(timeout=30.0)
        self.serving = True
        self._load_task = asyncio.get_running_loop().create_task(self._report_load())

    async def stop(self) -> None:
        """Deregister first: callers stop routing here while in-flight calls drain."""
        self.serving = False
        if self._load_task is not None:
            self._load_task.cancel()
            await asyncio.gather(self._load_task, return_exceptions=True)
        if self.membership is not None:
            await self.membership.stop()
        await self.router.close()
        await self.etcd.close()

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
        if new is not None and new.node == self.node_id and (old is None or old.node != new.node):
            self._adopted(oid, new)
        act = host.activation(oid)
        if act is None:
            return
        if new is None or new.node != self.node_id or new.epoch != act.epoch:
            act.reset(UnavailableError("object moved (directory epoch changed); call again"))

    def _adopted(self, oid: bytes, entry: Entry) -> None:
        """This node just became the owner (a migration landed): its alarm may now fire here."""
        assert self.host is not None
        raw = self.host.engine.get(layout.alarm_key(oid))
        if raw is not None:
            when, binding, _retry = _codec.decode(raw)
            self.host.alarms.schedule(oid, binding, when)

    def _fenced(self) -> None:
        log.warning("node %s lost its etcd lease renewal: self-fencing", self.node_id)
        self.serving = False
        if self.host is not None:
            for act in list(self.host._acts.values()):
                act.reset(UnavailableError("node self-fenced (etcd lease not renewed); retry"))

    def _unfenced(self) -> None:
        log.warning("node %s re-registered in etcd: serving again", self.node_id)
        self.serving = True

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
