"""Replication and failover with real processes (docs/replication.md), each test ending with the
history check of tests/helpers/history.py: every acknowledged append present at its position,
none applied twice, every object's history linearizable.

The cluster: three regions with one node each (every group has three copies, min_in_sync 2),
lease TTL 3 s, the journal app; writers in us-east, so their objects live in us-east-0's home
group, whose primary is killed, stopped, partitioned or slowed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

import duro.client
from duro.dev import LocalCluster
from tests.cluster.conftest import MakeCluster, wait_until
from tests.helpers.history import History, check
from tests.helpers.proxy import BlackholeProxy, DelayProxy
from tests.helpers.workload import Appenders, final_logs

pytestmark = [pytest.mark.cluster]

APP = Path(__file__).resolve().parent / "apps" / "journal"
NAMES = [f"j{i}" for i in range(8)]


async def start(make_cluster: MakeCluster, **kw: object) -> LocalCluster:
    """The journal app; INFO logs (the test's tmp dir keeps them: every failover, snapshot and
    in_sync change is there when a run fails)."""
    kw.setdefault("placement_args", ("--rebalance", "false", "--log-level", "INFO"))
    kw["node_args"] = (*kw.get("node_args", ()), "--log-level", "INFO")  # type: ignore[misc]
    return await make_cluster(app=str(APP), **kw)


def stream_port(cluster: LocalCluster, i: int) -> int:
    """The port of node ``i``'s replication stream listener (the batches to it)."""
    args = cluster.nodes[i].args
    return int(args[args.index("--replication-listen") + 1].rsplit(":", 1)[1])


async def home_group(cluster: LocalCluster, node: str):  # noqa: ANN201
    return next(g for g in await cluster.groups() if g.home == node)


async def finish(c: duro.client.Client, history: History) -> dict[str, list[str]]:
    final = await final_logs(c, NAMES)
    check(history, final)
    summary = history.summary()
    assert summary["acked"] > 0, summary
    return final


def acked_between(history: History, lo: float, hi: float) -> list:
    """Appends invoked after ``lo`` and acknowledged before ``hi``."""
    return [o for o in history.ops if o.ok and o.invoked > lo and o.completed < hi]


@pytest.mark.timeout(240)
async def test_sigkill_primary_then_a_follower_then_two_in_turn(make_cluster: MakeCluster) -> None:
    cluster = await start(make_cluster)
    h = History()
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        async with Appenders(c, NAMES, h, workers=6) as w:
            await w.until_acked_after(0, 30)
            p = cluster.node_by_id("us-east-0")
            a, b = (p + 1) % 3, (p + 2) % 3

            # 1. The primary dies: the group fails over; writers wait, then go on.
            t = time.monotonic()
            await cluster.kill_node(p)
            resumed = await w.until_acked_after(t, 20, timeout=20)
            assert resumed - t < cluster.lease_ttl + 3, f"failover took {resumed - t:.1f} s"
            g = await home_group(cluster, cluster.nodes[p].name)
            assert g.primary != cluster.nodes[p].name and g.epoch >= 2, g
            await cluster.start_node(p)
            await cluster.wait_replicated(40)  # caught up, in sync, handed back
            assert (await home_group(cluster, cluster.nodes[p].name)).primary == "us-east-0"

            # 2. A follower dies: it leaves in_sync within ack_timeout; writes go on.
            t = time.monotonic()
            await cluster.kill_node(a)
            await w.until_acked_after(t, 20, timeout=15)
            await cluster.start_node(a)
            await cluster.wait_replicated(40)

            # 3. Both followers die, one after the other: with one live copy left, writes are
            #    refused (retryable), never acknowledged with one copy.
            t = time.monotonic()
            await cluster.kill_node(a)
            await w.until_acked_after(t, 20, timeout=15)  # a left in_sync; b still answers
            t_both = time.monotonic()
            await cluster.kill_node(b)
            await asyncio.sleep(4.0)
            single = acked_between(h, t_both + 0.05, time.monotonic())
            assert not single, f"acknowledged with one copy: {single[:3]}"
            assert sum(1 for o in h.ops if o.invoked > t_both and o.ok is None) > 0
            t = time.monotonic()
            await asyncio.gather(cluster.start_node(a), cluster.start_node(b))
            await cluster.wait_replicated(60)
            await w.until_acked_after(t, 20, timeout=30)
        await finish(c, h)


@pytest.mark.timeout(240)
async def test_sigstopped_primary_acknowledges_nothing_after_its_lease(
        make_cluster: MakeCluster) -> None:
    cluster = await start(make_cluster)
    h = History()
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        async with Appenders(c, NAMES, h, workers=6) as w:
            await w.until_acked_after(0, 30)
            p = cluster.node_by_id("us-east-0")
            pid = cluster.nodes[p].proc.pid  # type: ignore[union-attr]
            t_stop = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                # Past its lease: the group fails over and writers go on at the new primary.
                await w.until_acked_after(t_stop, 20, timeout=30)
                await asyncio.sleep(1.0)
            finally:
                t_cont = time.monotonic()
                os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(3.0)  # whatever it still held is answered now, if ever
            # Calls it held when it stopped: none may be acknowledged after its lease.
            late = [o for o in h.ops if o.ok and o.invoked < t_stop < t_cont < o.completed]
            assert not late, f"acknowledged by the stopped primary after its lease: {late[:3]}"
            await cluster.wait_replicated(40)  # it rejoins and gets its group back
            await w.until_acked_after(time.monotonic(), 20)
        await finish(c, h)


@pytest.mark.timeout(240)
async def test_primary_partitioned_from_etcd_only(make_cluster: MakeCluster) -> None:
    cluster = await start(make_cluster, start=False)
    p = cluster.node_by_id("us-east-0")
    spec = cluster.nodes[p]
    h = History()
    async with BlackholeProxy(cluster.etcd.client_port) as proxy:
        spec.args[spec.args.index("--etcd") + 1] = proxy.address  # us-east-0 sees etcd via it
        await cluster.start()
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            async with Appenders(c, NAMES, h, workers=6) as w:
                await w.until_acked_after(0, 30)
                proxy.blocked = True
                try:
                    # It self-fences before its lease expires; the group fails over.
                    async def moved() -> bool:
                        return (await home_group(cluster, spec.name)).primary != spec.name

                    await wait_until(moved, 20, 0.1, "the group did not fail over")
                    await w.until_acked_after(time.monotonic(), 20, timeout=30)
                finally:
                    proxy.blocked = False
                await cluster.wait_replicated(40)
                await w.until_acked_after(time.monotonic(), 20)
            await finish(c, h)


@pytest.mark.timeout(240)
async def test_primary_partitioned_from_its_followers_only(make_cluster: MakeCluster) -> None:
    cluster = await start(make_cluster, start=False)
    p = cluster.node_by_id("us-east-0")
    others = [i for i in range(3) if i != p]
    h = History()
    proxies = [BlackholeProxy(stream_port(cluster, i)) for i in others]
    for px in proxies:
        await px.__aenter__()
    try:
        # Only us-east-0's replication traffic to the others goes through the proxies.
        cluster.node_env[cluster.nodes[p].name] = {"DURO_TEST_PEER_ADDRESSES": ",".join(
            f"{cluster.nodes[i].name}={px.address}" for i, px in zip(others, proxies))}
        await cluster.start()
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            async with Appenders(c, NAMES, h, workers=6) as w:
                await w.until_acked_after(0, 30)
                t_block = time.monotonic()
                for px in proxies:
                    px.blocked = True
                await asyncio.sleep(5.0)
                # It keeps its lease (no failover), drops one follower from in_sync (the floor
                # keeps the other), and acknowledges nothing it could not replicate.
                g = await home_group(cluster, cluster.nodes[p].name)
                assert g.primary == cluster.nodes[p].name and len(g.in_sync) == 2, g
                blocked = acked_between(h, t_block + 0.05, time.monotonic())
                assert not blocked, f"acknowledged while its followers were unreachable: {blocked}"
                t = time.monotonic()
                for px in proxies:
                    px.blocked = False
                await w.until_acked_after(t, 20, timeout=20)
                await cluster.wait_replicated(40)  # the dropped follower rejoins
            await finish(c, h)
    finally:
        for px in proxies:
            px.blocked = False
            await px.__aexit__(None, None, None)


@pytest.mark.timeout(240)
async def test_slow_follower_leaves_in_sync_and_latency_recovers(
        make_cluster: MakeCluster) -> None:
    cluster = await start(make_cluster, start=False)
    p = cluster.node_by_id("us-east-0")
    slow = (p + 1) % 3
    h = History()
    async with DelayProxy(stream_port(cluster, slow)) as proxy:
        cluster.node_env[cluster.nodes[p].name] = {
            "DURO_TEST_PEER_ADDRESSES": f"{cluster.nodes[slow].name}={proxy.address}"}
        await cluster.start()
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            async with Appenders(c, NAMES, h, workers=4) as w:
                await w.until_acked_after(0, 30)
                before = sorted(lat for _, lat in w.latencies[-50:])
                t = time.monotonic()
                proxy.delay = 1.5  # acknowledgements from it now come after ack_timeout (1 s)

                async def dropped() -> bool:
                    g = await home_group(cluster, cluster.nodes[p].name)
                    return cluster.nodes[slow].name not in g.in_sync_nodes

                await wait_until(dropped, 15, 0.1, "the slow follower did not leave in_sync")
                t_dropped = time.monotonic()
                await w.until_acked_after(t_dropped + 1.0, 30)
                after = sorted(lat for done, lat in w.latencies if done > t_dropped + 1.0)
                assert after and after[len(after) // 2] < max(0.25, 5 * before[len(before) // 2]), (
                    f"p50 {after[len(after) // 2] * 1000:.0f} ms after the slow follower left, "
                    f"{before[len(before) // 2] * 1000:.0f} ms before")
                stalled = max(lat for done, lat in w.latencies if done > t)
                assert stalled < 5.0, f"a write waited {stalled:.1f} s"
                proxy.delay = 0.0
                await cluster.wait_replicated(40)  # back in sync once it keeps up again
            await finish(c, h)


@pytest.mark.timeout(300)
async def test_wiped_node_is_refilled_and_then_holds_everything(make_cluster: MakeCluster) -> None:
    # No log of recent batches: a wiped copy can only be refilled by snapshot.
    cluster = await start(make_cluster, node_args=("--replica-log-mb", "0"))
    h = History()
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        async with Appenders(c, NAMES, h, workers=4, pad=300) as w:
            await w.until_acked_after(0, 400, timeout=60)  # > 256 KiB: a snapshot of chunks
            p = cluster.node_by_id("us-east-0")
            wiped = (p + 1) % 3
            name = cluster.nodes[wiped].name
            before = (await home_group(cluster, "us-east-0")).sid_of(name)
            await cluster.kill_node(wiped)
            data = cluster.root / "nodes" / name
            keep = (data / "node_id").read_text()
            shutil.rmtree(data)
            data.mkdir()
            (data / "node_id").write_text(keep)
            await w.until_acked_after(time.monotonic(), 20)
            await cluster.start_node(wiped)
            await cluster.wait_replicated(60)  # refilled (snapshot) and in sync again
            after = (await home_group(cluster, "us-east-0")).sid_of(name)
            assert after and after != before, (before, after)
            await w.until_acked_after(time.monotonic(), 20)
        # The refilled copy alone must hold everything: kill the two others, and read from it.
        final_before = await final_logs(c, NAMES)
        others = [i for i in range(3) if i != wiped]
        await asyncio.gather(*(cluster.kill_node(i) for i in others))
        g = None

        async def served_by_wiped() -> bool:
            # Every group fails over to it (their directory partitions too, which reading
            # the objects needs), each after its own lease and floor wait.
            nonlocal g
            g = await home_group(cluster, "us-east-0")
            return all(x.primary == name for x in await cluster.groups())

        await wait_until(served_by_wiped, 40, 0.2, "the refilled node did not take over")
        final = await final_logs(c, NAMES)
        assert final == final_before
        check(h, final)


@pytest.mark.timeout(300)
async def test_new_primaries_crash_while_reconciling(make_cluster: MakeCluster) -> None:
    cluster = await start(make_cluster, start=False)
    p = cluster.node_by_id("us-east-0")
    followers = [i for i in range(3) if i != p]
    for i in followers:  # whichever the leader promotes dies before it serves
        cluster.node_env[cluster.nodes[i].name] = {"DURO_REPLICATION_FAULT": "reconcile"}
    await cluster.start()
    h = History()
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        async with Appenders(c, NAMES, h, workers=6) as w:
            await w.until_acked_after(0, 30)
            await cluster.kill_node(p)
            for i in followers:  # both are promoted in turn, and both die reconciling
                await asyncio.wait_for(cluster.nodes[i].proc.wait(), 30)  # type: ignore[union-attr]
            for i in followers:
                cluster.node_env.pop(cluster.nodes[i].name)
            t = time.monotonic()
            await asyncio.gather(*(cluster.start_node(i) for i in (p, *followers)))
            await cluster.wait_replicated(60)
            await w.until_acked_after(t, 20, timeout=30)
        await finish(c, h)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["install_received", "install_sent"])
async def test_crash_during_re_replication(make_cluster: MakeCluster, fault: str) -> None:
    """A wiped follower is refilled by snapshot; the receiver (or the sender) dies in the middle
    of it. The snapshot starts over (after a failover, for the sender) and nothing is lost."""
    cluster = await start(make_cluster, node_args=("--replica-log-mb", "0"))  # snapshots only
    h = History()
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        async with Appenders(c, NAMES, h, workers=4, pad=300) as w:
            await w.until_acked_after(0, 1000, timeout=60)  # > 256 KiB: several chunks
            p = cluster.node_by_id("us-east-0")
            wiped = (p + 1) % 3
            victim = wiped if fault == "install_received" else p
            await cluster.kill_node(wiped)
            data = cluster.root / "nodes" / cluster.nodes[wiped].name
            keep = (data / "node_id").read_text()
            shutil.rmtree(data)
            data.mkdir()
            (data / "node_id").write_text(keep)
            if victim == p:
                await cluster.stop_node(p)
                await cluster.start_node(p, env={"DURO_REPLICATION_FAULT": fault})
                await cluster.wait_replicated(40, nodes=2)
                await cluster.start_node(wiped)
            else:
                # The snapshot may start (and kill it) before it prints its ready line.
                with contextlib.suppress(RuntimeError):
                    await cluster.start_node(wiped, env={"DURO_REPLICATION_FAULT": fault})
            await asyncio.wait_for(cluster.nodes[victim].proc.wait(), 60)  # type: ignore[union-attr]
            await cluster.start_node(victim)
            await cluster.wait_replicated(90)
            await w.until_acked_after(time.monotonic(), 20)
        await finish(c, h)
