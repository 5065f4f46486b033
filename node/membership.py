"""Node membership in etcd: a leased registration, kept alive, with self-fencing.

A node registers under ``/duro/<cluster>/nodes/<node_id>`` with a lease of ``ttl`` seconds and
a JSON value (:class:`NodeInfo`). It renews the lease every ``ttl / 3`` seconds.

Self-fencing. Let ``s`` be the time (this process's monotonic clock) at which the last keepalive
that etcd acknowledged was *sent*. etcd received it no earlier than ``s`` and then set the lease to
expire ``ttl`` seconds after receiving it, so the lease cannot expire at etcd before ``s + ttl``.
The node considers itself live only until ``valid_until = s + ttl - margin`` (``margin`` defaults
to ``ttl / 3``: it absorbs clock-rate differences and a busy event loop). When that deadline passes
without a newer acknowledged renewal, :meth:`Membership.is_live` turns false at once and
``on_fenced()`` is called: the node stops serving objects before etcd can have expired the lease
and before placement can see the node as gone. When etcd answers again the node grants a *new*
lease, re-registers (the old lease is revoked best-effort) and calls ``on_unfenced()``.

One process per node id: registration is a create-if-absent transaction; if the key is held by a
lease that is not ours (another live process with the same id, or a killed previous incarnation
whose lease has not expired yet) the node waits until that registration disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
from etcd3aio import Etcd3Client, EtcdError

from duro._backoff import Backoff
from duro.topology.nodes import NodeInfo, node_key, nodes_prefix
from duro.topology.watch import ETCD_ERRORS

__all__ = [
    "Membership",
    "MembershipStatus",
    "NodeInfo",
    "node_key",
    "nodes_prefix",
]

log = logging.getLogger("duro.node.membership")

Callback = Callable[[], "None | Awaitable[None]"]

class MembershipStatus(enum.Enum):
    CREATED = "created"
    REGISTERING = "registering"  # no valid lease yet (first start, or after fencing)
    LIVE = "live"
    FENCED = "fenced"  # the lease may be lost; not serving; trying to re-register
    STOPPING = "stopping"
    STOPPED = "stopped"


class Membership:
    """Registers one node in etcd and keeps it registered; see the module docstring.

    ``async with Membership(...) as m:`` starts it and waits for the first registration.
    ``clock`` must be monotonic; it is injectable for tests.
    """

    def __init__(
        self,
        client: Etcd3Client,
        cluster: str,
        info: NodeInfo,
        *,
        ttl: int = 5,
        margin: float | None = None,
        on_fenced: Callback | None = None,
        on_unfenced: Callback | None = None,
        load_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 2:
            raise ValueError("ttl must be at least 2 seconds")
        self._client = client
        self.cluster = cluster
        self.key = node_key(cluster, info.node_id)
        self._info = info if info.started_at else replace(info, started_at=time.time())
        self.ttl = ttl
        self.margin = ttl / 3 if margin is None else margin
        if not 0 < self.margin < ttl:
            raise ValueError("margin must be between 0 and ttl")
        self.interval = ttl / 3
        self._on_fenced = on_fenced
        self._on_unfenced = on_unfenced
        self._load_interval = load_interval
        self._clock = clock

        self.status = MembershipStatus.CREATED
        self.lease_id: int | None = None
        self._valid_until = 0.0
        self._last_sent = 0.0
        self._fence_timer: asyncio.TimerHandle | None = None
        self._was_fenced = False
        self._registered = asyncio.Event()
        self._load_dirty = asyncio.Event()
        self._last_load_put = 0.0
        self._task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[Any]] = set()
        # counters, read by the node's metrics
        self.renewals = 0
        self.fencings = 0

    # ---- public state --------------------------------------------------------------------
    @property
    def node_id(self) -> str:
        return self._info.node_id

    @property
    def info(self) -> NodeInfo:
        return self._info

    @property
    def valid_until(self) -> float:
        """Monotonic deadline until which this node may serve (0 when not registered)."""
        return self._valid_until

    def is_live(self) -> bool:
        """True while registered and before :attr:`valid_until` (checked against the clock)."""
        return self.status is MembershipStatus.LIVE and self._clock() < self._valid_until

    async def set_draining(self, draining: bool) -> None:
        """Mark the registration as draining (or not), written to etcd before this returns (so
        placement stops choosing this node before a drain starts moving its objects)."""
        if draining != self._info.draining:
            self._info = replace(self._info, draining=draining)
            await self._put_load()

    def update_load(self, load: int) -> None:
        """Set the load reported in the registration; written at most every ``load_interval``."""
        if load != self._info.load:
            self._info = replace(self._info, load=load)
            self._load_dirty.set()

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self, timeout: float | None = None) -> None:
        """Start registering; wait (up to *timeout*, None = forever) for the first registration."""
        if self._task is None:
            self.status = MembershipStatus.REGISTERING
            self._task = asyncio.create_task(self._run(), name=f"membership-{self.node_id}")
        waiter = asyncio.ensure_future(self._registered.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._registered.is_set():
            self._task.result()  # re-raise what stopped the loop
            raise RuntimeError("membership stopped before registering")

    async def stop(self) -> None:
        """Deregister (revoke the lease) and stop. Idempotent."""
        if self.status in (MembershipStatus.STOPPING, MembershipStatus.STOPPED):
            return
        self.status = MembershipStatus.STOPPING
        self._cancel_fence_timer()
        self._valid_until = 0.0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._callbacks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await t
        if self.lease_id is not None:
            with contextlib.suppress(*ETCD_ERRORS):
                await self._client.lease.revoke(self.lease_id, timeout=1.0, max_attempts=1)
            self.lease_id = None
        self.status = MembershipStatus.STOPPED

    async def __aenter__(self) -> Membership:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- the loop ------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = Backoff(0.1, max(0.1, self.interval))
        while True:
            try:
                if self.status is not MembershipStatus.LIVE:
                    await self._register()
                    backoff.reset()
                await self._renew_until_failure()
            except ETCD_ERRORS as exc:
                log.warning("membership %s: etcd error: %r", self.node_id, exc)
                await backoff.sleep()

    async def _register(self) -> None:
        old_lease = self.lease_id
        sent = self._clock()
        grant = await self._client.lease.grant(self.ttl, timeout=self.interval, max_attempts=1)
        lease_id = int(grant.ID)
        kv = self._client.kv
        value = replace(self._info, lease=lease_id).to_json()
        try:
            while True:
                resp = await kv.txn(
                    [kv.txn_compare_create_revision(self.key, 0)],
                    [kv.txn_op_put(self.key, value, lease=lease_id)],
                    [kv.txn_op_get(self.key)],
                    timeout=self.interval,
                    max_attempts=1,
                )
                if resp.succeeded:
                    break
                kvs = resp.responses[0].response_range.kvs
                holder = int(kvs[0].lease) if kvs else 0
                if kvs and old_lease is not None and holder == old_lease:
                    # Our own previous registration, still held by our old lease: take it over.
                    resp = await kv.txn(
                        [_compare_lease(self.key, old_lease)],
                        [kv.txn_op_put(self.key, value, lease=lease_id)],
                        timeout=self.interval,
                        max_attempts=1,
                    )
                    if resp.succeeded:
                        break
                    continue
                log.warning(
                    "membership %s: node id registered by another lease %x; waiting for it to expire",
                    self.node_id,
                    holder,
                )
                # The other registration may be a SIGKILLed previous incarnation: its lease runs
                # out within ttl. Keep our own lease alive meanwhile so that it stays usable.
                await asyncio.sleep(self.interval)
                sent = self._clock()
                ka = await self._keepalive_once(lease_id, deadline=sent + self.interval)
                if ka <= 0:
                    raise TimeoutError("fresh lease lost while waiting")
        except BaseException:
            with contextlib.suppress(*ETCD_ERRORS):
                await self._client.lease.revoke(lease_id, timeout=0.5, max_attempts=1)
            raise
        self.lease_id = lease_id
        self._info = replace(self._info, lease=lease_id)
        self._last_load_put = self._clock()
        self._load_dirty.clear()
        if not self._renewed(sent):
            return
        self.status = MembershipStatus.LIVE
        self._registered.set()
        log.info("membership %s: registered (lease %x)", self.node_id, lease_id)
        if old_lease is not None and old_lease != lease_id:
            with contextlib.suppress(*ETCD_ERRORS):
                await self._client.lease.revoke(old_lease, timeout=0.5, max_attempts=1)
        if self._was_fenced:
            self._was_fenced = False
            self._fire(self._on_unfenced)

    def _renewed(self, sent: float) -> bool:
        """Record an acknowledged renewal sent at *sent*; False if it came too late to count."""
        valid_until = sent + self.ttl - self.margin
        if valid_until <= self._clock():
            return False
        self._last_sent = sent
        self._valid_until = max(self._valid_until, valid_until)
        self._cancel_fence_timer()
        loop = asyncio.get_running_loop()
        self._fence_timer = loop.call_later(self._valid_until - self._clock(), self._deadline_passed)
        return True

    def _cancel_fence_timer(self) -> None:
        if self._fence_timer is not None:
            self._fence_timer.cancel()
            self._fence_timer = None

    def _deadline_passed(self) -> None:
        self._fence_timer = None
        if self.status is not MembershipStatus.LIVE:
            return
        left = self._valid_until - self._clock()
        if left <= 0:
            self._fence("no lease renewal acknowledged in time")
        else:
            # Event-loop timers may fire early (uvloop rounds to milliseconds): re-arm for the rest
            # instead of leaving the node LIVE past its deadline with no timer at all.
            self._fence_timer = asyncio.get_running_loop().call_later(left, self._deadline_passed)

    def _fence(self, reason: str) -> None:
        if self.status is not MembershipStatus.LIVE:
            return
        self.status = MembershipStatus.FENCED
        self._valid_until = 0.0
        self._cancel_fence_timer()
        self._was_fenced = True
        self.fencings += 1
        log.warning("membership %s: self-fenced: %s", self.node_id, reason)
        self._fire(self._on_fenced)

    def _fire(self, cb: Callback | None) -> None:
        if cb is None:
            return
        try:
            result = cb()
        except Exception:
            log.exception("membership %s: callback failed", self.node_id)
            return
        if result is not None and asyncio.iscoroutine(result):
            t = asyncio.ensure_future(result)
            self._callbacks.add(t)
            t.add_done_callback(self._callbacks.discard)

    async def _keepalive_once(self, lease_id: int, deadline: float) -> int:
        return await keepalive_once(self._client, lease_id, deadline, self._clock)

    async def _renew_until_failure(self) -> None:
        """Renew every interval; on failure retry quickly until the deadline, then fence."""
        assert self.lease_id is not None
        while True:
            next_at = self._last_sent + self.interval
            await self._sleep_or_load(next_at)
            while True:
                sent = self._clock()
                if self.status is not MembershipStatus.LIVE:
                    return  # fenced by the timer: register a fresh lease
                try:
                    ttl = await self._keepalive_once(self.lease_id, deadline=self._valid_until)
                except ETCD_ERRORS as exc:
                    log.debug("membership %s: renewal failed: %r", self.node_id, exc)
                    await asyncio.sleep(min(0.1, max(0.0, self._valid_until - self._clock())))
                    continue
                if ttl <= 0:
                    self._fence("lease expired at etcd")
                    return
                if self.status is not MembershipStatus.LIVE:
                    return  # fenced while the renewal was in flight: start afresh
                if self._renewed(sent):
                    self.renewals += 1
                    break

    async def _sleep_or_load(self, until: float) -> None:
        """Sleep until *until*, writing load updates (rate-limited) meanwhile."""
        while (delay := until - self._clock()) > 0:
            if not self._load_dirty.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._load_dirty.wait()
                continue
            wait_load = self._last_load_put + self._load_interval - self._clock()
            if wait_load > 0:
                await asyncio.sleep(min(wait_load, delay))
                continue
            self._load_dirty.clear()
            self._last_load_put = self._clock()
            await self._put_load()

    async def _put_load(self) -> None:
        if self.lease_id is None or not self.is_live():
            return
        kv = self._client.kv
        try:
            await kv.txn(
                [_compare_lease(self.key, self.lease_id)],
                [kv.txn_op_put(self.key, self._info.to_json(), lease=self.lease_id)],
                timeout=max(0.05, min(self.interval / 2, self._valid_until - self._clock())),
                max_attempts=1,
            )
        except ETCD_ERRORS as exc:  # the renewal path notices a lasting problem
            log.debug("membership %s: load update failed: %r", self.node_id, exc)
            self._load_dirty.set()


async def keepalive_once(
    client: Etcd3Client, lease_id: int, deadline: float, clock: Callable[[], float]
) -> int:
    """Send one keepalive for ``lease_id``, waiting until ``deadline`` (on ``clock``) at most;
    return the TTL etcd answered (<= 0: the lease is gone). Shared by node membership and the
    placement election, which renew their leases the same way."""
    call = client.lease.keep_alive(lease_id)
    try:
        async with asyncio.timeout(max(0.01, deadline - clock())):
            resp = await call.read()
    finally:
        call.cancel()
    if resp is grpc.aio.EOF:
        raise EtcdError("keepalive stream closed")
    return int(resp.TTL)


def _compare_lease(key: str, lease_id: int) -> Any:
    from etcd3aio._protobuf import Compare

    return Compare(result=Compare.EQUAL, target=Compare.LEASE, key=key.encode(), lease=lease_id)
