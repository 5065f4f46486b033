"""The partitioned object directory (docs/directory.md) with real processes: single activation
while a partition's owner dies under racing first calls, and objects that store nothing leaving
no trace in the directory or in etcd.

The cluster: three regions with one node each, every group three copies (min_in_sync 2), lease
TTL 3 s, the journal app (tests/cluster/apps/journal), whose appends report their position: two
live activations of one object would both acknowledge position 1, which the history check of
tests/helpers/history.py rejects.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from pathlib import Path

import pytest

import duro.client
from duro.dev import LocalCluster
from duro.errors import DuroError, FencedError
from duro.topology.partitions import partition_of
from tests.cluster.conftest import MakeCluster, metric, wait_until
from tests.helpers.history import History, check
from tests.helpers.workload import final_logs

pytestmark = [pytest.mark.cluster]

APP = Path(__file__).resolve().parent / "apps" / "journal"


async def start(make_cluster: MakeCluster, *node_args: str) -> LocalCluster:
    # No rebalancing: a move toward the callers' region would be a legitimate reactivation.
    return await make_cluster(app=str(APP),
                              placement_args=("--rebalance", "false", "--log-level", "INFO"),
                              node_args=("--log-level", "INFO", *node_args))


async def fresh_name_in_partition_led_by(c: duro.client.Client, node: str) -> tuple[str, int]:
    """A new object name whose directory partition is held by a group ``node`` leads (the
    partition is assigned first if it has none), and that partition."""
    router = c.invoker  # type: ignore[attr-defined]
    directory = router.directory
    settings = await directory.wait_settings(10)
    ns = c.namespace("JOURNAL")
    for _ in range(200):
        name = f"race-{uuid.uuid4().hex}"
        p = partition_of(ns.id_from_name(name).raw, settings.partitions)
        gid = directory.partitions.group_of(p)
        if gid is None:
            gid = (await router.assign_partitions([p]))[0]
        g = router.groups.get(gid)
        if g is not None and g.primary == node:
            return name, p
    raise AssertionError(f"no partition led by {node} found")


async def etcd_keys(cluster: LocalCluster) -> dict[str, int]:
    """Every key in etcd with its value's size."""
    async with cluster.etcd_client() as client:
        resp = await client.kv.get(b"\0", b"\0", timeout=10.0)  # the whole keyspace
        return {kv.key.decode(): len(kv.value) for kv in resp.kvs}


async def node_sum(cluster: LocalCluster, name: str) -> float:
    return sum([await metric(n.ready["metrics_port"], name) for n in cluster.nodes if n.running])


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("sig", "after"), [(signal.SIGKILL, 0.01), (signal.SIGSTOP, 0.003)],
                         ids=["sigkill", "sigstop"])
async def test_racing_first_calls_while_the_partition_owner_dies(
        make_cluster: MakeCluster, sig: int, after: float) -> None:
    """200 first calls to one new object from three regions; the node leading the group that
    holds the object's directory partition is SIGKILLed (or SIGSTOPped past its lease, then
    resumed: a superseded partition owner with creates in hand) while they are in flight. Every
    caller retries until acknowledged; the object's history must be linearizable (so one
    activation at a time, and no create of the dead owner survives beside the new one's)."""
    cluster = await start(make_cluster)
    victim = "eu-west-0"
    v = cluster.node_by_id(victim)
    h = History()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            duro.client.connect(etcd=cluster.etcd.endpoint, region=r)) for r in cluster.regions]
        name, p = await fresh_name_in_partition_led_by(clients[0], victim)
        unacked: list[str] = []

        async def first_call(i: int) -> None:
            ns = clients[i % len(clients)].namespace("JOURNAL")
            deadline = time.monotonic() + 60
            error = ""
            for attempt in range(1000):
                op = h.invoke(name, "append", f"c{i}-{attempt}")
                try:
                    n = await ns.get_by_name(name).append(op.arg)
                except FencedError as exc:
                    h.fail(op, exc, definite=True)
                    error = repr(exc)
                except DuroError as exc:
                    h.fail(op, exc)
                    error = repr(exc)
                    if not exc.retryable:
                        break
                else:
                    h.ok(op, n)
                    return
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            unacked.append(f"c{i}: {error}")

        t0 = time.monotonic()
        calls = asyncio.gather(*(first_call(i) for i in range(200)))
        await asyncio.sleep(after)
        if sig == signal.SIGKILL:
            await cluster.kill_node(v, sig)
        else:
            cluster.nodes[v].proc.send_signal(sig)  # type: ignore[union-attr]
            # Past its lease: its partition and groups fail over while it holds its calls.
            await asyncio.sleep(cluster.lease_ttl + 3)
            cluster.nodes[v].proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        await calls
        elapsed = time.monotonic() - t0
        assert not unacked, f"{len(unacked)} callers never acknowledged: {unacked[:3]}"
        if sig == signal.SIGKILL:
            await cluster.start_node(v)
        await cluster.wait_replicated(60)

        final = await final_logs(clients[1], [name])
        check(h, final)
        acked = h.acked(name)
        assert len(acked) == 200 and sorted(o.result for o in acked) == list(range(1, 201)), \
            h.summary()
        assert len(final[name]) >= 200
        # One entry, the same from every region's router (asked afresh at the partition).
        oid = clients[0].namespace("JOURNAL").id_from_name(name).raw
        entries = {(e.group, e.epoch) for e in [
            await c.invoker.directory.resolve(oid, create=False, fresh=True)  # type: ignore[attr-defined]
            for c in clients]}
        assert len(entries) == 1, entries
        g = clients[0].invoker.groups.get(clients[0].invoker.directory.partitions.group_of(p))  # type: ignore[attr-defined]
        assert g is not None and g.epoch >= 2, f"the partition's group never failed over: {g}"
        print(f"{h.summary()} in {elapsed:.1f} s; entry {entries}")


@pytest.mark.timeout(300)
async def test_objects_that_store_nothing_leave_the_directory(make_cluster: MakeCluster) -> None:
    """10,000 objects read once and never written leave no directory entry once evicted, and
    etcd's keys do not change with them; an object with a key, one with only an alarm, stay;
    routers whose caches still name the forgotten entries are corrected on their next call."""
    n_objects = 10_000
    cluster = await start(make_cluster, "--idle-timeout", "1", "--sweep-interval", "0.25")
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east",
                                   directory_cache=2 * n_objects) as c:
        router = c.invoker  # type: ignore[attr-defined]
        ns = c.namespace("JOURNAL")
        settings = await router.directory.wait_settings(10)
        # Give every partition its group now: the partition map is O(partitions) keys, and
        # assigning it all first keeps the comparison below about objects alone.
        for lo in range(0, settings.partitions, 128):
            await router.assign_partitions(list(range(lo, min(lo + 128, settings.partitions))))
        assert await ns.get_by_name("keeper").append("kept") == 1
        await ns.get_by_name("armed").arm(3600)  # an alarm, no key
        created0 = await node_sum(cluster, "duro_directory_created_total")
        forgotten0 = await node_sum(cluster, "duro_directory_forgotten_total")
        keys_before = await etcd_keys(cluster)

        names = [f"empty-{i}" for i in range(n_objects)]
        sem = asyncio.Semaphore(256)

        async def touch(name: str) -> int:
            async with sem:
                return await ns.get_by_name(name).fired()  # reads storage, writes nothing

        t = time.monotonic()
        assert set(await asyncio.gather(*(touch(n) for n in names))) == {0}
        touched_in = time.monotonic() - t
        assert await node_sum(cluster, "duro_directory_created_total") - created0 >= n_objects
        # Before activating each object a node asks its partition (batched per loop turn):
        # its own partitions (about a third of them here) without gRPC, the others' over gRPC.
        local = await node_sum(cluster, "duro_client_directory_resolve_local_total")
        remote = await node_sum(cluster, "duro_client_directory_resolve_rpcs_total")
        assert local >= 1 and remote >= 1 and 4 * local >= remote, (local, remote)

        keys_after = await etcd_keys(cluster)
        assert set(keys_after) == set(keys_before), (
            f"etcd keys changed: +{sorted(set(keys_after) - set(keys_before))[:5]} "
            f"-{sorted(set(keys_before) - set(keys_after))[:5]}")
        assert abs(sum(keys_after.values()) - sum(keys_before.values())) < 4096

        # Evicted after 1 s idle; their entries are deleted at their partitions.
        await wait_until(lambda: _entries_are(cluster, 2), timeout=90, interval=0.5,
                         message="empty objects' entries not all forgotten")
        forgotten = await node_sum(cluster, "duro_directory_forgotten_total") - forgotten0
        assert forgotten >= n_objects
        assert await node_sum(cluster, "duro_runtime_active_objects") <= 2

        # The kept ones kept their entries and state.
        for keep in ("keeper", "armed"):
            oid = ns.id_from_name(keep).raw
            assert await router.directory.resolve(oid, create=False, fresh=True) is not None
        assert await ns.get_by_name("keeper").read() == ["kept"]

        # This client still caches the 10,000 forgotten entries: its calls are redirected and
        # place the objects afresh.
        assert len(router.directory) >= n_objects
        assert set(await asyncio.gather(*(touch(n) for n in names[:500]))) == {0}
        assert set(keys_after) == set(await etcd_keys(cluster))
        print(f"touched {n_objects} in {touched_in:.1f} s; forgotten {forgotten:.0f}")


async def _entries_are(cluster: LocalCluster, n: int) -> bool:
    return await node_sum(cluster, "duro_directory_entries") == n
