"""``PrimaryGroup``: this node as the primary of one replica group, for one epoch.

It cuts the group's batches for the group committer, ships them to the members (through the
manager's :class:`~duro.node.replication.link.PeerLink` per node), and decides when each batch is
replicated: once every member that was in ``in_sync`` when it was cut — and still is — has
acknowledged it with the storage it is in sync with (``_resolve``). One task per member brings it
up to date and keeps it fed (``_member``): fence it at this epoch, compare positions
(``protocol.catch_up_plan``), send the log's tail or a snapshot, and — for a candidate that has
caught up — add it to ``in_sync`` while the group's writes are paused. A member that leaves a batch
unacknowledged for ``ack_timeout`` is removed from ``in_sync`` if the floor allows
(``protocol.can_remove``); otherwise the waiting batches fail and the group refuses writes until it
answers. See docs/replication.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator, NamedTuple

import rocksdict

from duro import _codec
from duro._backoff import Backoff
from duro._pb import replication_pb2
from duro.errors import DuroError, UnavailableError
from duro.node.replication import protocol as P
from duro.node.replication.state import GroupReplica
from duro.node.storage import layout
from duro.node.storage.commit import PAUSED
from duro.topology.groups import GroupConfig, GroupConflict, swap_group

if TYPE_CHECKING:
    from duro.node.replication.link import PeerLink
    from duro.node.replication.manager import ReplicationManager

__all__ = ["PrimaryGroup", "Ack"]

log = logging.getLogger("duro.node.replication")

CHUNK_BYTES = 256 * 1024
# Test-only fault injection: the process exits abruptly (like SIGKILL) at that step:
# "reconcile" (a primary promoted by a failover, before it serves), "install_sent" (a primary,
# after the first chunk of a snapshot).
_FAULT = os.environ.get("DURO_REPLICATION_FAULT", "")


def _fault(step: str) -> None:
    if _FAULT == step:
        log.error("DURO_REPLICATION_FAULT: exiting at %s", step)
        os._exit(137)
JOIN_WAIT = 2.0  # seconds a paused join waits for the candidate's last acknowledgement


class Ack(NamedTuple):
    storage_id: str
    seq: int


class _Cut:
    __slots__ = ("seq", "required", "future", "at")

    def __init__(self, seq: int, required: frozenset[str], future: asyncio.Future[None],
                 at: float) -> None:
        self.seq, self.required, self.future, self.at = seq, required, future, at


class PrimaryGroup:
    def __init__(self, mgr: ReplicationManager, config: GroupConfig, replica: GroupReplica) -> None:
        self.mgr = mgr
        self.gid = config.gid
        self.epoch = config.epoch
        self.config = config
        self.replica = replica
        self.serving = False
        self.stopped = False
        self.acks: dict[str, Ack] = {}
        self.latency: dict[str, float] = {}  # seconds from cut to acknowledgement, smoothed
        self.pending: deque[_Cut] = deque()
        self.paused = 0
        self.stalled: DuroError | None = None
        self._changed: dict[str, asyncio.Event] = {}
        self._any = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._shrinking = False
        self._reconciled = asyncio.Event()
        self.started_at = time.monotonic()

    @property
    def me(self) -> str:
        return self.mgr.node_id

    def __repr__(self) -> str:
        state = "serving" if self.serving else "stopped" if self.stopped else "reconciling"
        return f"PrimaryGroup(gid={self.gid}, epoch={self.epoch}, {state}, pos={self.replica.pos})"

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Take the role: record the new epoch, then reconcile every member (the tasks) and
        serve once every in-sync member holds what this copy holds."""
        self.replica.promoted(self.epoch)
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(layout.group_meta_key(self.gid), self.replica.meta())
        await self.mgr.write(batch)
        if self.stopped:
            return
        if self.epoch > 1:
            _fault("reconcile")  # a promotion by failover (not a group's first primary)
        loop = asyncio.get_running_loop()
        for m in self.config.replicas:
            if m != self.me:
                self._tasks.append(loop.create_task(self._member(m), name=f"g{self.gid}-{m}"))
        self._tasks.append(loop.create_task(self._reconcile(), name=f"g{self.gid}-reconcile"))

    def stop(self, reason: str) -> None:
        """Give the role up: fail what waits (it may or may not have been replicated)."""
        if self.stopped:
            return
        self.stopped = True
        self.serving = False
        for t in self._tasks:
            t.cancel()
        err = UnavailableError(
            f"group {self.gid} changed primary ({reason}); the write may or may not have been "
            "applied")
        while self.pending:
            fut = self.pending.popleft().future
            if not fut.done():
                fut.set_exception(err)
                fut.exception()
        for link in self.mgr.links.values():
            link.stop_feeding(self.gid)
        log.info("group %s: no longer primary (epoch %s): %s", self.gid, self.epoch, reason)

    async def _reconcile(self) -> None:
        """Serve once every in-sync member holds this copy's batches; a member that does not get
        there within ``ack_timeout`` leaves in_sync if the floor allows (as for a batch)."""
        while not self.stopped:
            late = time.monotonic() - self.started_at > self.mgr.ack_timeout
            if late and not self._shrinking:
                cfg, seq = self.config, self.replica.pos.seq
                for m, sid in cfg.in_sync:
                    if (m != self.me and self.acks.get(m) != (sid, seq) and P.can_remove(
                            cfg.in_sync_map, cfg.primary, m, self.mgr.min_in_sync)):
                        self._shrinking = True
                        asyncio.get_running_loop().create_task(self._shrink(m))
                        break
            if self._members_in_sync():
                self.serving = True
                self._reconciled.set()
                log.info("group %s: serving as primary of epoch %s at %s (reconciled in %.0f ms)",
                         self.gid, self.epoch, self.replica.pos,
                         (time.monotonic() - self.started_at) * 1000)
                self.mgr.promoted(self)
                return
            await self._wait_any(0.05)

    def _members_in_sync(self) -> bool:
        seq = self.replica.pos.seq
        for m, sid in self.config.in_sync:
            if m != self.me and self.acks.get(m) != (sid, seq):
                return False
        return True

    # -- the committer's side -----------------------------------------------------------------
    def admit(self) -> object:
        if self.stopped or not self.serving:
            return UnavailableError(f"group {self.gid} is not serving on this node right now; retry")
        if not self.mgr.holds_lease(self.config):
            return UnavailableError(f"node {self.me} no longer holds the lease it leads group "
                                    f"{self.gid} with; retry")
        floor = self.mgr.min_in_sync
        if len(self.config.in_sync) < floor:
            return UnavailableError(
                f"group {self.gid} is under-replicated: {len(self.config.in_sync)} in-sync "
                f"copies, min_in_sync is {floor}; writes are refused until a replica catches up")
        if self.stalled is not None:
            return self.stalled
        if self.paused:
            return PAUSED
        return self

    def cut(self, ops: bytes) -> tuple[bytes, bytes, asyncio.Future[None]]:
        seq = self.replica.pos.seq + 1
        entry = self.replica.applied(self.epoch, seq, ops)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        required = frozenset(n for n in self.config.in_sync_nodes if n != self.me)
        self.pending.append(_Cut(seq, required, fut, time.monotonic()))
        for link in self.mgr.links.values():
            link.ship(self, entry)
        self._resolve()
        return layout.group_meta_key(self.gid), self.replica.meta(), fut

    # -- acknowledgements ---------------------------------------------------------------------
    def on_ack(self, member: str, storage_id: str, seq: int) -> None:
        old = self.acks.get(member)
        if old is not None and old.storage_id == storage_id and old.seq >= seq:
            return
        self.acks[member] = Ack(storage_id, seq)
        if self.pending and self.pending[0].seq <= seq:
            for cut in self.pending:
                if cut.seq == seq:
                    lat = time.monotonic() - cut.at
                    prev = self.latency.get(member)
                    self.latency[member] = lat if prev is None else 0.7 * prev + 0.3 * lat

                    break
        self._resolve()
        self._notify(member)

    def on_refused(self, member: str, ack: replication_pb2.GroupAck) -> None:
        if ack.refused == "stale" and ack.accepted_epoch > self.epoch:
            self.mgr.deposed(self, f"{member} was fenced at epoch {ack.accepted_epoch}")
            return
        log.info("group %s: %s refused batch %s (%s: %s); catching it up again", self.gid,
                 member, ack.seq, ack.refused, ack.detail)
        link = self.mgr.links.get(member)
        if link is not None:
            link.stop_feeding(self.gid)
        self._notify(member)

    def link_lost(self, member: str) -> None:
        self._notify(member)

    def _resolve(self) -> None:
        cfg = self.config
        while self.pending:
            cut = self.pending[0]
            for m in cut.required:
                sid = cfg.sid_of(m)
                if sid is None:
                    continue  # removed from in_sync by CAS: no longer required
                a = self.acks.get(m)
                if a is None or a.storage_id != sid or a.seq < cut.seq:
                    return
            self.pending.popleft()
            if cut.future.done():
                continue
            if self.mgr.holds_lease(cfg):
                cut.future.set_result(None)
            else:  # stopped past its lease (a pause): acknowledge nothing (docs/replication.md)
                cut.future.set_exception(UnavailableError(
                    f"node {self.me} lost its lease before batch {cut.seq} of group {self.gid} "
                    "was acknowledged; it may or may not have been applied"))
                cut.future.exception()
        if self.stalled is not None and not self.pending:
            log.info("group %s: every in-sync member answers again; writes resume", self.gid)
            self.stalled = None

    # -- configuration ------------------------------------------------------------------------
    def config_changed(self, cfg: GroupConfig) -> None:
        if cfg.revision <= self.config.revision:
            return
        added = [m for m in cfg.replicas if m not in self.config.replicas and m != self.me]
        removed = [m for m in self.config.replicas if m not in cfg.replicas]
        self.config = cfg
        for m in removed:  # replaced by the leader: no more batches to it
            link = self.mgr.links.get(m)
            if link is not None:
                link.stop_feeding(self.gid)
            self.acks.pop(m, None)
        for m in added:
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._member(m), name=f"g{self.gid}-{m}"))
        self._resolve()
        for ev in self._changed.values():
            ev.set()
        self._any.set()

    async def _swap(self, new: GroupConfig, what: str) -> bool:
        try:
            stored = await swap_group(self.mgr.etcd, self.mgr.cluster, self.config, new,
                                      guards=self.mgr.registration_guards())
        except GroupConflict as exc:
            log.info("group %s: %s not applied: %s", self.gid, what, exc)
            if exc.current is not None and exc.current.epoch != self.epoch:
                self.mgr.deposed(self, f"configuration moved to epoch {exc.current.epoch}")
            elif exc.current is not None:
                self.config_changed(exc.current)
            return False
        except Exception as exc:  # etcd unreachable: the outcome is unknown; the watch tells
            log.warning("group %s: %s: etcd error %r", self.gid, what, exc)
            return False
        log.info("group %s: %s (in_sync now %s)", self.gid, what, list(stored.in_sync_nodes))
        self.config_changed(stored)
        return True

    def check_timeouts(self, now: float) -> None:
        """Called by the manager's tick: act on members that leave batches unacknowledged."""
        if self.stopped or not self.pending:
            return
        timeout = self.mgr.ack_timeout
        oldest = self.pending[0]
        if now - oldest.at < timeout:
            return
        cfg = self.config
        laggards = [m for m in oldest.required
                    if cfg.sid_of(m) is not None and (self.acks.get(m) is None or self.acks[m].seq
                                                      < oldest.seq or self.acks[m].storage_id
                                                      != cfg.sid_of(m))]
        removable = [m for m in laggards if P.can_remove(cfg.in_sync_map, cfg.primary, m,
                                                         self.mgr.min_in_sync)]
        if removable and not self._shrinking:
            self._shrinking = True
            m = removable[0]
            asyncio.get_running_loop().create_task(self._shrink(m))
            return
        if laggards and not removable and not self._shrinking:
            err = UnavailableError(
                f"group {self.gid}: in-sync member {laggards[0]} did not acknowledge within "
                f"{timeout:g} s and min_in_sync={self.mgr.min_in_sync} keeps it in sync; the "
                "write may or may not have been applied")
            if self.stalled is None:
                log.warning("group %s: %s", self.gid, err)
            self.stalled = err
            while self.pending and now - self.pending[0].at >= timeout:
                fut = self.pending.popleft().future
                if not fut.done():
                    fut.set_exception(err)
                    fut.exception()

    async def _shrink(self, member: str) -> None:
        try:
            cfg = self.config
            if member not in cfg.in_sync_map:
                return
            in_sync = cfg.in_sync_map
            del in_sync[member]
            await self._swap(cfg.with_in_sync(in_sync),
                             f"removed {member} from in_sync (no acknowledgement within "
                             f"{self.mgr.ack_timeout:g} s)")
        finally:
            self._shrinking = False

    # -- members ------------------------------------------------------------------------------
    def _notify(self, member: str) -> None:
        ev = self._changed.get(member)
        if ev is not None:
            ev.set()
        self._any.set()

    async def _wait_any(self, timeout: float) -> None:
        """Wait for any member's news (an acknowledgement, a refusal, a lost link), or
        ``timeout``; the callers re-check their condition either way."""
        self._any.clear()
        await self._wait(self._any, timeout)

    async def _member(self, m: str) -> None:
        """Bring member ``m`` up to date, keep it fed, and add it to in_sync once it is."""
        ev = self._changed.setdefault(m, asyncio.Event())
        backoff = Backoff(0.05, 1.0)
        while not self.stopped and m in self.config.replicas:
            ev.clear()
            try:
                link = self.mgr.link_to(m)
                if link is None:
                    await self._wait(ev, 0.5)
                    continue
                if not link.feeding(self.gid):
                    await self._catch_up(m, link)
                    backoff.reset()
                await self._maybe_join(m, link)
                await self._wait(ev, 0.25)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("group %s: member %s: %r", self.gid, m, exc)
                await self._wait(ev, backoff.next())

    @staticmethod
    async def _wait(ev: asyncio.Event, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
        except TimeoutError:
            pass

    async def _catch_up(self, m: str, link: PeerLink) -> None:
        ans = await link.fence(self.gid, self.epoch)
        if ans.accepted_epoch > self.epoch:
            self.mgr.deposed(self, f"{m} was fenced at epoch {ans.accepted_epoch}")
            return
        peer = P.Position(ans.last_epoch, ans.seq)
        rep = self.replica
        plan = P.catch_up_plan(rep.history, rep.pos, rep.log.first, peer)
        if isinstance(plan, P.Snapshot):
            log.info("group %s: snapshot to %s (%s)", self.gid, m, plan.reason)
            # (_install keeps the log from the snapshot's seq on until it returns; nothing runs
            # between its return and the feed, so the batches after the snapshot are there.)
            seq = await self._install(m, link)
            self.on_ack(m, ans.storage_id, seq)
            if not link.feed(self, seq + 1):
                raise UnavailableError("the log moved past the snapshot; again")
            return
        start = plan.from_seq if isinstance(plan, P.Tail) else peer.seq + 1
        if not link.feed(self, start):
            raise UnavailableError("the log no longer reaches the member; again")
        if isinstance(plan, P.UpToDate):
            self.on_ack(m, ans.storage_id, peer.seq)

    async def _install(self, m: str, link: PeerLink) -> int:
        """Send a snapshot of the group; returns the seq it holds."""
        lo, hi = layout.group_range(self.gid)
        items = self.mgr.engine.snapshot_scan(lo, hi)  # this instant, however long it takes
        first = next(items, None)
        if first is None or first[0] != layout.group_meta_key(self.gid):
            raise UnavailableError(f"group {self.gid} has no meta here")
        snap = GroupReplica.from_meta(self.gid, first[1])
        # The batches after the snapshot are fed from the log once it is installed: keep them.
        pin = self.replica.log.pin(snap.pos.seq + 1)
        try:
            return await self._send_snapshot(m, link, items, snap)
        finally:
            self.replica.log.unpin(pin)

    async def _send_snapshot(self, m: str, link: PeerLink, items, snap: GroupReplica) -> int:  # noqa: ANN001
        sent = {"keys": 0, "bytes": 0}

        async def chunks() -> AsyncIterator[replication_pb2.InstallChunk]:
            chunk = replication_pb2.InstallChunk(
                gid=self.gid, sender_epoch=self.epoch, last_epoch=snap.pos.last_epoch,
                seq=snap.pos.seq, history=_codec.encode([list(h) for h in snap.history]))
            size = 0
            for k, v in items:
                chunk.items.add(key=k[layout.GROUP_PREFIX_BYTES:], value=v)
                size += len(k) + len(v)
                sent["keys"] += 1
                if size >= CHUNK_BYTES:
                    sent["bytes"] += size
                    yield chunk
                    _fault("install_sent")
                    chunk, size = replication_pb2.InstallChunk(gid=self.gid), 0
                    await asyncio.sleep(0)
            sent["bytes"] += size
            chunk.last = True
            yield chunk

        t0 = time.monotonic()
        ack = await link.install(chunks())
        self.mgr.stats.snapshots += 1
        self.mgr.stats.snapshot_bytes += sent["bytes"]
        log.info("group %s: snapshot of %s keys (%s bytes) installed on %s in %.0f ms at seq %s",
                 self.gid, sent["keys"], sent["bytes"], m, (time.monotonic() - t0) * 1000,
                 ack.seq)
        return int(ack.seq)

    async def handover(self, target: str, target_lease: int) -> str | None:
        """Hand the group to ``target`` (an in-sync member): pause writes, wait until every
        in-sync member holds everything cut, then swap in a configuration that names it
        primary at the next epoch. Returns why it did not happen (None: done)."""
        cfg = self.config
        if not self.serving or self.stopped:
            return "not serving"
        if target == self.me or cfg.sid_of(target) is None or not target_lease:
            return f"{target} is not an in-sync member with a lease"
        self.paused += 1
        try:
            deadline = time.monotonic() + JOIN_WAIT
            while self.pending or not self._members_in_sync():
                if time.monotonic() > deadline or self.stopped:
                    return "the in-sync members did not catch up in time"
                await self._wait_any(0.02)
            new = self.config.replace(epoch=self.epoch + 1, primary=target, lease=target_lease)
            if not await self._swap(new, f"handed over to {target} at epoch {self.epoch + 1}"):
                return "the configuration changed meanwhile"
            self.mgr.deposed(self, f"handed over to {target}")
            return None
        finally:
            self.paused -= 1
            if not self.paused:
                self.mgr.kick()

    async def _maybe_join(self, m: str, link: PeerLink) -> None:
        """Add a caught-up candidate to in_sync, atomically with the stream (writes paused)."""
        cfg = self.config
        a = self.acks.get(m)
        if (not self.serving or a is None or cfg.sid_of(m) == a.storage_id
                or a.seq != self.replica.pos.seq or not link.feeding(self.gid)):
            return
        lat = self.latency.get(m)
        if lat is not None and lat > self.mgr.ack_timeout / 2:
            return  # still slow: it would leave again at once
        self.paused += 1
        try:
            deadline = time.monotonic() + JOIN_WAIT
            while self.acks.get(m) != (a.storage_id, self.replica.pos.seq):
                if time.monotonic() > deadline or self.stopped:
                    return
                await self._wait_any(0.02)
            in_sync = self.config.in_sync_map
            in_sync[m] = a.storage_id
            await self._swap(self.config.with_in_sync(in_sync), f"added {m} to in_sync")
        finally:
            self.paused -= 1
            if not self.paused:
                self.mgr.kick()
