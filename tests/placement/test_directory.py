"""Directory transactions and the watch-fed cache, against a real etcd."""

from __future__ import annotations

import asyncio
import os

import pytest
from etcd3aio import Etcd3Client

from duro._etcd import EtcdProcess
from duro.placement.directory import (
    Directory,
    DirectoryCache,
    Entry,
    EpochConflictError,
    MAX_BATCH,
    LeaderGuard,
    NotLeaderError,
)
from tests.cluster.etcd_fixture import assert_eventually, etcd, etcd_client  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

CLUSTER = "t"


def oid() -> str:
    return os.urandom(32).hex()


def entry(object_id: str, node: str = "n1", region: str = "us-east") -> Entry:
    return Entry(object_id=object_id, binding="COUNTER", node=node, epoch=1, region=region)


async def test_create_if_absent(etcd_client: Etcd3Client) -> None:
    d = Directory(etcd_client, CLUSTER)
    o = oid()
    assert await d.get(o) is None
    first, created = await d.create(entry(o, "n1"))
    assert created and first.node == "n1" and first.epoch == 1 and first.revision > 0
    again, created = await d.create(entry(o, "n2"))
    assert not created and again == first
    assert await d.get(o) == first
    assert await d.count() == 1
    raw = (await etcd_client.kv.get(f"/duro/{CLUSTER}/dir/{o}")).kvs[0].value
    assert raw == (b'{"binding":"COUNTER","group":0,"epoch":1,"region":"us-east","node":"n1",'
                   b'"replicas":[]}')


async def test_200_concurrent_placers_make_one_entry(etcd: EtcdProcess) -> None:
    o = oid()
    clients = [Etcd3Client([etcd.endpoint]) for _ in range(4)]
    for c in clients:
        await c.connect()
    try:
        dirs = [Directory(c, CLUSTER) for c in clients]

        async def place(i: int) -> tuple[Entry, bool]:
            return await dirs[i % 4].create(entry(o, node=f"n{i}"), timeout=20)

        results = await asyncio.gather(*(place(i) for i in range(200)))
        assert sum(created for _, created in results) == 1
        winners = {(e.node, e.epoch, e.revision) for e, _ in results}
        assert len(winners) == 1
        assert await dirs[0].count() == 1
        stored = await dirs[0].get(o)
        assert stored is not None and (stored.node, stored.epoch) == next(iter(winners))[:2]
    finally:
        for c in clients:
            await c.close()


async def test_batch_with_some_conflicts(etcd_client: Etcd3Client) -> None:
    d = Directory(etcd_client, CLUSTER)
    ids = [oid() for _ in range(10)]
    for o in ids[:3]:
        await d.create(entry(o, "winner"))
    out = await d.create_many([entry(o, "batch") for o in ids])
    assert [created for _, created in out] == [False] * 3 + [True] * 7
    assert all(e.node == "winner" for e, _ in out[:3])
    assert all(e.node == "batch" for e, _ in out[3:])
    assert len({e.revision for e, _ in out[3:]}) == 1  # one transaction, one revision
    assert await d.count() == 10
    with pytest.raises(ValueError):
        await d.create_many([entry(ids[0]), entry(ids[0])])
    with pytest.raises(ValueError):
        await d.create_many([entry(oid()) for _ in range(MAX_BATCH + 1)])
    full = await d.create_many([entry(oid()) for _ in range(MAX_BATCH)])
    assert all(created for _, created in full)


async def test_reassign_bumps_epoch_by_compare_and_swap(etcd_client: Etcd3Client) -> None:
    d = Directory(etcd_client, CLUSTER)
    o = oid()
    e1, _ = await d.create(entry(o, "n1"))
    e2 = await d.reassign(e1, node="n2", region="eu-west")
    assert (e2.node, e2.region, e2.epoch) == ("n2", "eu-west", 2) and e2.revision > e1.revision
    with pytest.raises(EpochConflictError) as err:
        await d.reassign(e1, node="n3", region="eu-west")  # stale: epoch 1 was superseded
    assert err.value.current == e2
    assert await d.get(o) == e2


async def test_leader_guard_refuses_a_deposed_leader(etcd_client: Etcd3Client) -> None:
    d = Directory(etcd_client, CLUSTER)
    lk = f"/duro/{CLUSTER}/placement/leader"
    put = await etcd_client.kv.put(lk, b"a")
    guard = LeaderGuard(lk, int(put.header.revision))
    e1, created = await d.create(entry(oid()), guard=guard)
    assert created
    await etcd_client.kv.delete(lk)
    await etcd_client.kv.put(lk, b"b")  # someone else leads now
    with pytest.raises(NotLeaderError):
        await d.create(entry(oid()), guard=guard)
    with pytest.raises(NotLeaderError):
        await d.reassign(e1, node="n2", region="us-east", guard=guard)
    assert await d.count() == 1


async def test_cache_bootstraps_and_follows_the_watch(etcd_client: Etcd3Client) -> None:
    d = Directory(etcd_client, CLUSTER)
    before = [oid() for _ in range(20)]
    await d.create_many([entry(o) for o in before])
    changes: list[tuple[Entry | None, Entry | None]] = []
    cache = DirectoryCache(etcd_client, CLUSTER, on_change=lambda a, b: changes.append((a, b)))
    cache.PAGE = 7  # exercise paging
    async with cache:
        assert len(cache) == 20 and all(cache.lookup(o) is not None for o in before)
        assert len(changes) == 20 and all(old is None for old, _ in changes)
        changes.clear()
        o = oid()
        waiter = asyncio.create_task(cache.wait_for(o, timeout=10))
        await asyncio.sleep(0.05)
        e1, _ = await d.create(entry(o, "n1"))
        assert await waiter == e1
        e2 = await d.reassign(e1, node="n2", region="eu-west")
        got = await cache.wait_for(o, lambda e: e is not None and e.epoch == 2, timeout=10)
        assert got == e2
        assert changes[-1] == (e1, e2)  # a node learns it lost the object: old.node != new.node
        await etcd_client.kv.delete(d.key(o))
        assert await cache.wait_for(o, lambda e: e is None, timeout=10) is None
        assert changes[-1] == (e2, None)


async def test_cache_follows_across_etcd_restart(etcd: EtcdProcess) -> None:
    async with Etcd3Client([etcd.endpoint]) as c1, Etcd3Client([etcd.endpoint]) as c2:
        d = Directory(c2, CLUSTER)
        async with DirectoryCache(c1, CLUSTER) as cache:
            a = oid()
            await d.create(entry(a))
            await cache.wait_for(a, timeout=10)
            await etcd.restart_async()
            b = oid()
            await assert_eventually(lambda: _try_create(d, b), timeout=20, message="etcd not back")
            got = await cache.wait_for(b, timeout=20)
            assert got is not None and got.node == "n1"
            assert cache.lookup(a) is not None


async def _try_create(d: Directory, o: str) -> bool:
    try:
        await d.create(entry(o), timeout=2)
        return True
    except Exception:
        return False


async def test_cache_rereads_after_compaction(etcd_client: Etcd3Client) -> None:
    d = Directory(etcd_client, CLUSTER)
    kept, gone = oid(), oid()
    await d.create_many([entry(kept), entry(gone)])
    changes: list[tuple[Entry | None, Entry | None]] = []
    cache = DirectoryCache(etcd_client, CLUSTER, on_change=lambda a, b: changes.append((a, b)))
    await cache.start()
    await cache.stop()  # the cache falls behind ...
    changes.clear()
    new = oid()
    e_new, _ = await d.create(entry(new))
    await etcd_client.kv.delete(d.key(gone))
    moved = await d.reassign((await d.get(kept)) or entry(kept), node="n9", region="ap-south")
    await etcd_client.kv.compact(moved.revision)  # ... past etcd's history
    await cache.start()  # resumes from its revision: compacted, so it re-reads everything
    try:
        await assert_eventually(lambda: cache.resets == 1, timeout=10, message="no re-read")
        await assert_eventually(lambda: cache.lookup(new) is not None, timeout=10)
        assert cache.lookup(gone) is None
        assert cache.lookup(kept) == moved
        assert len(cache) == 2
        assert {(a is None, b is None) for a, b in changes} == {(True, False), (False, True), (False, False)}
    finally:
        await cache.stop()
