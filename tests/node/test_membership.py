"""Membership against a real etcd: registration, renewal, self-fencing, re-registration."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from etcd3aio import Etcd3Client

from duro._etcd import EtcdProcess
from duro.node.membership import Membership, MembershipStatus
from duro.topology.nodes import NodeInfo, node_key
from tests.cluster.etcd_fixture import assert_eventually, etcd, etcd_client  # noqa: F401
from tests.helpers.proxy import BlackholeProxy

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

CLUSTER = "t"


def info(node_id: str = "n1", load: int = 0) -> NodeInfo:
    return NodeInfo(node_id=node_id, address="127.0.0.1:9000", region="us-east", zone="a", load=load)


class Events:
    """Records fencing callbacks with the monotonic time at which they fired."""

    def __init__(self) -> None:
        self.fenced: list[float] = []
        self.unfenced: list[float] = []

    def on_fenced(self) -> None:
        self.fenced.append(time.monotonic())

    def on_unfenced(self) -> None:
        self.unfenced.append(time.monotonic())


@contextlib.asynccontextmanager
async def member(client: Etcd3Client, ev: Events | None = None, **kw: object) -> AsyncIterator[Membership]:
    ev = ev or Events()
    m = Membership(client, CLUSTER, info(), on_fenced=ev.on_fenced, on_unfenced=ev.on_unfenced, **kw)  # type: ignore[arg-type]
    await m.start(timeout=10)
    try:
        yield m
    finally:
        await m.stop()


async def test_registers_with_lease_and_deregisters(etcd_client: Etcd3Client) -> None:
    async with member(etcd_client, ttl=3) as m:
        assert m.is_live() and m.status is MembershipStatus.LIVE
        resp = await etcd_client.kv.get(node_key(CLUSTER, "n1"))
        assert len(resp.kvs) == 1
        got = NodeInfo.from_json(resp.kvs[0].value)
        assert (got.node_id, got.address, got.region, got.zone) == ("n1", "127.0.0.1:9000", "us-east", "a")
        assert got.started_at > 0
        assert resp.kvs[0].lease == m.lease_id
        ttl = await etcd_client.lease.time_to_live(m.lease_id)
        assert 0 < ttl.TTL <= 3
        assert m.valid_until - time.monotonic() <= 3 - 1 + 0.1
    assert m.status is MembershipStatus.STOPPED and not m.is_live()
    assert (await etcd_client.kv.get(node_key(CLUSTER, "n1"))).kvs == []
    await m.stop()  # idempotent


async def test_lease_is_renewed(etcd_client: Etcd3Client) -> None:
    ev = Events()
    async with member(etcd_client, ev, ttl=2) as m:
        t0 = time.monotonic()
        while m.renewals < 4:  # renewed every third of the TTL; generous bound
            assert time.monotonic() - t0 < 30, f"only {m.renewals} renewals in 30 s"
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, t0 + 4.5 - time.monotonic()))  # more than twice the TTL
        assert m.is_live()
        assert ev.fenced == []
        assert len((await etcd_client.kv.get(node_key(CLUSTER, "n1"))).kvs) == 1


async def test_load_updates_are_written(etcd_client: Etcd3Client) -> None:
    async with member(etcd_client, ttl=3, load_interval=0.2) as m:
        for n in range(1, 50):
            m.update_load(n)
        async def load() -> int:
            resp = await etcd_client.kv.get(node_key(CLUSTER, "n1"))
            return NodeInfo.from_json(resp.kvs[0].value).load

        await assert_eventually(lambda: _eq(load(), 49), timeout=5)


async def _eq(aw: object, expected: object) -> bool:
    return (await aw) == expected  # type: ignore[misc]


async def test_self_fences_before_lease_expiry_when_etcd_is_paused(etcd: EtcdProcess) -> None:
    ev = Events()
    async with Etcd3Client([etcd.endpoint]) as client:
        async with member(client, ev, ttl=3) as m:
            await asyncio.sleep(1.2)
            etcd.pause()  # SIGSTOP: etcd answers nothing, its sockets stay open
            try:
                await assert_eventually(lambda: bool(ev.fenced), timeout=6, message="no fencing")
                last_sent = m._last_sent
                # etcd cannot expire the lease before last_sent + ttl; we fenced well before that.
                assert ev.fenced[0] < last_sent + m.ttl
                assert ev.fenced[0] <= last_sent + m.ttl - m.margin + 0.25
                assert not m.is_live() and m.status is MembershipStatus.FENCED
            finally:
                etcd.resume()
            # etcd is back: a fresh lease, re-registered, unfenced.
            await assert_eventually(lambda: bool(ev.unfenced), timeout=15, message="no unfencing")
            assert m.is_live()
            resp = await client.kv.get(node_key(CLUSTER, "n1"))
            assert len(resp.kvs) == 1 and resp.kvs[0].lease == m.lease_id
            assert m.fencings == 1


async def test_fences_while_etcd_still_holds_the_lease(etcd: EtcdProcess) -> None:
    """A partition between node and etcd: an observer sees the lease alive when the node fences."""
    ev = Events()
    async with BlackholeProxy(etcd.client_port) as proxy, Etcd3Client(
        [f"127.0.0.1:{proxy.port}"]
    ) as node_client, Etcd3Client([etcd.endpoint]) as observer:
        fenced_lease_ttl: list[int] = []

        async def check_lease_at_fence() -> None:
            # Runs right at fencing: etcd (reached directly) must still hold the node's lease.
            assert m.lease_id is not None
            r = await observer.lease.time_to_live(m.lease_id)
            fenced_lease_ttl.append(int(r.TTL))

        m = Membership(node_client, CLUSTER, info(), ttl=3, on_fenced=check_lease_at_fence,
                       on_unfenced=ev.on_unfenced)
        await m.start(timeout=10)
        try:
            await asyncio.sleep(1.0)
            proxy.blocked = True
            await assert_eventually(lambda: bool(fenced_lease_ttl), timeout=8, message="no fencing")
            assert fenced_lease_ttl[0] >= 0, "lease had already expired at etcd when the node fenced"
            assert not m.is_live()
            # The lease now runs out at etcd and the registration disappears.
            await assert_eventually(
                lambda: _eq(_count(observer), 0), timeout=8, message="registration not expired"
            )
            proxy.blocked = False
            await assert_eventually(lambda: bool(ev.unfenced), timeout=15, message="no unfencing")
            assert await _count(observer) == 1
        finally:
            proxy.blocked = False
            await m.stop()


async def _count(client: Etcd3Client) -> int:
    return len((await client.kv.get(node_key(CLUSTER, "n1"))).kvs)


async def test_reregisters_after_etcd_restart(etcd: EtcdProcess) -> None:
    ev = Events()
    async with Etcd3Client([etcd.endpoint]) as client:
        async with member(client, ev, ttl=2) as m:
            await etcd.stop_async()
            await assert_eventually(lambda: bool(ev.fenced), timeout=5, message="no fencing")
            await etcd.start_async()
            await assert_eventually(lambda: m.is_live(), timeout=15, message="not live again")
            assert ev.unfenced
            resp = await client.kv.get(node_key(CLUSTER, "n1"))
            assert len(resp.kvs) == 1 and resp.kvs[0].lease == m.lease_id


async def test_same_node_id_waits_for_the_other_registration(etcd_client: Etcd3Client) -> None:
    async with member(etcd_client, ttl=2) as first:
        second = Membership(etcd_client, CLUSTER, info(), ttl=2)
        with pytest.raises(TimeoutError):
            await second.start(timeout=1.5)
        assert not second.is_live()
        await first.stop()
        await second.start(timeout=10)  # the first one deregistered: the second gets the key
        assert second.is_live()
        await second.stop()
