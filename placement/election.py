"""Leader election among placement replicas, through one leased etcd key.

The leader key ``/duro/<cluster>/placement/leader`` holds JSON ``{"id", "address"}`` and is
attached to the leader's lease (TTL ``ttl``, default 3 s, renewed every ``ttl / 3``). A replica
campaigns by create-if-absent (``create_revision == 0``); the losers watch the key and campaign
again as soon as it is deleted, which happens when the leader resigns (its lease is revoked) or
when its lease expires after a crash: takeover within about ``ttl`` seconds of a SIGKILL.

The leader fences itself as a node does (see ``duro.node.membership``): it stops leading at
``last_renewal_sent + ttl - margin``, before etcd can have given the key to anyone else. Every
directory write of the leader also carries :class:`LeaderGuard` (the
key's create_revision), so even a leader that has not noticed its deposition cannot write.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from etcd3aio import Etcd3Client
from etcd3aio._protobuf import Compare

from duro.node.membership import keepalive_once
from duro.topology.etcdkv import watch
from duro.topology.keys import leader_key
from duro.topology.watch import ETCD_ERRORS

__all__ = ["Election", "ElectionStatus", "LeaderGuard", "LeaderInfo"]

log = logging.getLogger("duro.placement.election")

@dataclass(frozen=True, slots=True)
class LeaderGuard:
    """The leader key and the create_revision it had when this process won the election: a
    compare every write of the leader carries, so a deposed leader cannot write."""

    key: str
    create_revision: int

    def compare(self) -> Any:
        return Compare(
            result=Compare.EQUAL,
            target=Compare.CREATE,
            key=self.key.encode(),
            create_revision=self.create_revision,
        )


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    leader_id: str
    address: str
    create_revision: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"id": self.leader_id, "address": self.address}).encode()

    @classmethod
    def from_kv(cls, value: bytes, create_revision: int) -> LeaderInfo:
        d = json.loads(value)
        return cls(str(d["id"]), str(d["address"]), int(create_revision))


class ElectionStatus(enum.Enum):
    CREATED = "created"
    STANDBY = "standby"
    LEADER = "leader"
    STOPPED = "stopped"


class Election:
    """Campaign for leadership and keep it; see the module docstring.

    ``on_change(is_leader)`` is called on every transition (from the event loop, must not block).
    """

    def __init__(
        self,
        client: Etcd3Client,
        cluster: str,
        candidate_id: str,
        address: str,
        *,
        ttl: int = 3,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.key = leader_key(cluster)
        self.me = LeaderInfo(candidate_id, address)
        self.ttl = ttl
        self.margin = ttl / 3
        self.interval = ttl / 3
        self._on_change = on_change
        self._clock = clock
        self.status = ElectionStatus.CREATED
        self.leader: LeaderInfo | None = None  # the current leader as last seen (maybe us)
        self.guard: LeaderGuard | None = None
        self._lease: int | None = None
        self._valid_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def is_leader(self) -> bool:
        return self.status is ElectionStatus.LEADER and self._clock() < self._valid_until

    async def start(self) -> None:
        if self._task is None:
            self.status = ElectionStatus.STANDBY
            self._task = asyncio.create_task(self._run(), name=f"election-{self.me.leader_id}")

    async def wait_leader_known(self, timeout: float | None = None) -> LeaderInfo:
        async with asyncio.timeout(timeout):
            while self.leader is None:
                self._changed.clear()
                await self._changed.wait()
        return self.leader

    async def stop(self) -> None:
        """Resign (revoke the lease, so that a standby takes over at once) and stop."""
        if self.status is ElectionStatus.STOPPED:
            return
        was_leader = self.status is ElectionStatus.LEADER
        self.status = ElectionStatus.STOPPED
        self._valid_until = 0.0
        self.guard = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease is not None:
            with contextlib.suppress(*ETCD_ERRORS):
                await self._client.lease.revoke(self._lease, timeout=1.0, max_attempts=1)
            self._lease = None
        if was_leader:
            self._notify(False)

    async def __aenter__(self) -> Election:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _notify(self, leading: bool) -> None:
        self._changed.set()
        if self._on_change is not None:
            try:
                self._on_change(leading)
            except Exception:
                log.exception("election: on_change failed")

    async def _run(self) -> None:
        while True:
            try:
                rev = await self._campaign()
                if self.status is ElectionStatus.LEADER:
                    await self._lead()
                else:
                    await self._watch_until_vacant(rev)
            except ETCD_ERRORS as exc:
                log.warning("election: etcd error %r", exc)
                await asyncio.sleep(self.interval / 2)

    async def _campaign(self) -> int:
        kv = self._client.kv
        sent = self._clock()
        grant = await self._client.lease.grant(self.ttl, timeout=self.interval, max_attempts=1)
        lease = int(grant.ID)
        try:
            resp = await kv.txn(
                [kv.txn_compare_create_revision(self.key, 0)],
                [kv.txn_op_put(self.key, self.me.to_json(), lease=lease)],
                [kv.txn_op_get(self.key)],
                timeout=self.interval,
                max_attempts=1,
            )
        except BaseException:
            with contextlib.suppress(*ETCD_ERRORS):
                await self._client.lease.revoke(lease, timeout=0.5, max_attempts=1)
            raise
        rev = int(resp.header.revision)
        if resp.succeeded and self._clock() < sent + self.ttl - self.margin:
            self._lease = lease
            self._valid_until = sent + self.ttl - self.margin
            self.leader = LeaderInfo(self.me.leader_id, self.me.address, rev)
            self.guard = LeaderGuard(self.key, rev)
            self.status = ElectionStatus.LEADER
            log.info("election: %s is the placement leader", self.me.leader_id)
            self._notify(True)
            return rev
        with contextlib.suppress(*ETCD_ERRORS):
            await self._client.lease.revoke(lease, timeout=0.5, max_attempts=1)
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            if kvs:
                self.leader = LeaderInfo.from_kv(kvs[0].value, kvs[0].create_revision)
                self._changed.set()
        return rev

    async def _lead(self) -> None:
        """Renew until a renewal is not acknowledged in time, then step down."""
        assert self._lease is not None
        last_sent = self._valid_until - self.ttl + self.margin
        try:
            while True:
                await asyncio.sleep(max(0.0, last_sent + self.interval - self._clock()))
                while True:
                    sent = self._clock()
                    if sent >= self._valid_until:
                        return
                    try:
                        ttl = await self._keepalive(self._valid_until)
                    except ETCD_ERRORS:
                        await asyncio.sleep(0.05)
                        continue
                    if ttl <= 0:
                        return
                    last_sent = sent
                    self._valid_until = sent + self.ttl - self.margin
                    break
        finally:
            if self.status is ElectionStatus.LEADER:
                self.status = ElectionStatus.STANDBY
                self._valid_until = 0.0
                self.guard = None
                self.leader = None
                log.warning("election: %s lost leadership", self.me.leader_id)
                self._notify(False)
                lease, self._lease = self._lease, None
                if lease is not None:
                    with contextlib.suppress(*ETCD_ERRORS):
                        await self._client.lease.revoke(lease, timeout=0.5, max_attempts=1)

    async def _keepalive(self, deadline: float) -> int:
        assert self._lease is not None
        return await keepalive_once(self._client, self._lease, deadline, self._clock)

    async def _watch_until_vacant(self, rev: int) -> None:
        """Follow the leader key from *rev*; return when it is deleted (or to re-check)."""
        stream = watch(self._client, self.key, start_revision=rev + 1)
        async with contextlib.aclosing(stream):
            # Re-check now and then: a watch that silently stalled must not keep us standby.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl * 2):
                    async for resp in stream:
                        if resp.compact_revision > 0 or resp.canceled:
                            return
                        for ev in resp.events:
                            if ev.type == 1:  # DELETE: vacant
                                self.leader = None
                                return
                            self.leader = LeaderInfo.from_kv(ev.kv.value, ev.kv.create_revision)
                            self._changed.set()
