"""The console's pure parts: the changes between two snapshots, the rates and percentiles, and
the feed's fan-out (duro/console/feed.py, snapshot.py)."""

from __future__ import annotations

import asyncio
import copy

from duro.console.feed import ConsoleFeed, changes
from duro.console.snapshot import rates
from duro.node.runtime.call_stats import BUCKET_MS, CallStats, percentile


def node(nid: str, *, draining: bool = False, calls: int = 0, started: float = 1.0,
         buckets: list[int] | None = None) -> dict:
    b = buckets if buckets is not None else [0] * (len(BUCKET_MS) + 1)
    return {"node_id": nid, "draining": draining, "sample": {
        "started_at": started, "bindings": {"C": {"calls": calls, "errors": 0, "buckets": b}}}}


def group(gid: int, primary: str, in_sync: int = 2) -> dict:
    return {"gid": gid, "primary": primary, "epoch": 1, "replicas": ["a", "b"],
            "in_sync": in_sync, "under_replicated": in_sync < 2}


def snap(at: float, nodes: list[dict], groups: list[dict], leader: str = "p0",
         moving=(), recent=()) -> dict:
    return {"at": at, "nodes": nodes, "groups": groups, "leader": {"id": leader},
            "moving": list(moving), "recent_moves": list(recent)}


def test_changes_name_what_happened() -> None:
    a = snap(1.0, [node("a"), node("b")], [group(1, "a"), group(2, "b")])
    move = {"object_id": "ab" * 32, "at": 1.5, "binding": "C", "from": "a", "to": "b",
            "outcome": "released", "held_ms": 3.0}
    b = snap(2.0, [node("a", draining=True), node("c")], [group(1, "c", 1), group(2, "b")],
             leader="p1", moving=[{"object_id": "cd" * 32, "node": "a"}], recent=[move])
    kinds = [e["kind"] for e in changes(a, b)]
    assert kinds == ["node_joined", "node_left", "draining", "leader", "failover",
                     "under_replicated", "migration_started", "migration"]
    assert changes(None, b) == [] and changes(b, copy.deepcopy(b)) == []
    back = changes(b, snap(3.0, [node("a"), node("c")], [group(1, "c"), group(2, "b")],
                           leader="p1", recent=[move]))
    assert [e["kind"] for e in back] == ["undrained", "in_sync"]


def test_rates_and_percentiles_between_two_samples() -> None:
    st = CallStats()
    for ms in [0.1] * 50 + [3.0] * 45 + [100.0] * 5:
        st.record(ms / 1000, failed=False)
    assert percentile(st.buckets, 0.5) == 0.25 and percentile(st.buckets, 0.95) == 4
    assert percentile(st.buckets, 0.99) == 128 and percentile([0] * 17, 0.5) is None
    a = snap(10.0, [node("a", calls=100, buckets=[0] * 17)], [])
    b = snap(12.0, [node("a", calls=300, buckets=st.buckets)], [])
    r = rates(a, b)
    assert r["bindings"]["C"]["calls_per_s"] == 100.0 and r["nodes"]["a"]["calls_per_s"] == 100.0
    assert r["bindings"]["C"]["p50_ms"] == 0.25
    # A node restarted between the samples counts from zero, not negative.
    c = snap(14.0, [node("a", calls=20, started=2.0, buckets=[20] + [0] * 16)], [])
    assert rates(b, c)["bindings"]["C"]["calls_per_s"] == 10.0


async def test_feed_samples_only_while_someone_listens_and_drops_slow_pages() -> None:
    n = 0

    async def take() -> dict:
        nonlocal n
        n += 1
        return snap(float(n), [node("a", calls=n)], [])

    feed = ConsoleFeed(take, interval=0.1, queue_size=4)
    await asyncio.sleep(0.3)
    assert n == 0  # nobody listens: no sampling
    async with feed.subscribe() as messages:
        seen: list[dict] = []

        async def read() -> None:
            async for m in messages:
                seen.append(m)

        reader = asyncio.get_running_loop().create_task(read())
        async with feed.subscribe() as slow:  # never read: dropped once its queue is full
            await asyncio.sleep(1.0)
            assert feed.listeners == 1  # the reading page only
            got = [m async for m in slow]  # what it had, then the end
            assert 1 <= len(got) <= 4
        assert len(seen) >= 5 and all(m["type"] == "snapshot" for m in seen)
        reader.cancel()
    await asyncio.sleep(0.3)
    stopped = n
    await asyncio.sleep(0.3)
    assert n == stopped  # the last page left: sampling stopped
    await feed.close()
