"""Power loss of the whole cluster: every acknowledged write must have been fsynced somewhere that
survives (docs/replication.md: a write is acknowledged only once it is fsynced on the primary and
on every in-sync follower).

A SIGKILL cannot show that, as the OS page cache outlives the process: the nodes' data
directories (``<cluster root>/nodes``) are on a LazyFS mount (tests/helpers/lazyfs.py), which
discards everything not fsynced when the test cuts the power. The scenario: three regions with
one node each (every group has three copies), the journal app, writers in us-east appending
unique ids to a few objects (all in us-east-0's home group) and recording every acknowledgement;
then, while they write, every node is SIGKILLed at once, the power is cut (unsynced data gone),
and the disk of the objects' primary is lost as well (its data directory wiped), so only the
followers' copies remain. The nodes restart, the group fails over to a follower, and every
acknowledged append must be in the final logs (tests/helpers/history.py's ``check``).

The same scenario with the followers' WAL unsynced (``--no-sync-wal`` on eu-west-0 and
ap-south-0: they acknowledge the batches they apply without fsync; the primary still fsyncs) must
lose acknowledged appends, and the test asserts that the check catches it, so the harness is
known to catch a follower that acknowledges before its fsync.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from pathlib import Path

import pytest

import duro.client
from duro.dev import LocalCluster
from duro.errors import DuroError, FencedError
from duro.topology.etcdkv import get_prefix
from duro.topology.nodes import nodes_prefix
from tests.cluster.conftest import MakeCluster
from tests.helpers.history import History, check
from tests.helpers.lazyfs import LazyFS, require_fuse

pytestmark = [pytest.mark.cluster]

APP = Path(__file__).resolve().parent / "apps" / "journal"
NAMES = [f"pl{i}" for i in range(4)]
WRITERS = 6
TARGET_ACKED = 150  # acknowledged appends before the power goes out
PRIMARY = "us-east-0"  # writers are in us-east: their objects go to us-east-0's home group


async def writer(client: duro.client.Client, k: int, history: History, ids: itertools.count
                 ) -> None:
    """Append unique ids to the objects in turn, one call at a time, until cancelled (a call
    cancelled in flight stays in the history as unknown: it may or may not have happened)."""
    ns = client.namespace("JOURNAL")
    for i in itertools.count(k):
        name = NAMES[i % len(NAMES)]
        wid = f"w{k}-{next(ids)}"
        op = history.invoke(name, "append", wid)
        try:
            n = await ns.get_by_name(name).append(wid)
        except FencedError as exc:
            history.fail(op, exc, definite=True)
            await asyncio.sleep(0.05)
        except DuroError as exc:
            history.fail(op, exc)
            await asyncio.sleep(0.05)
        else:
            history.ok(op, n)


async def primary_of(client: duro.client.Client, name: str) -> str:
    router = client.invoker
    oid = client.namespace("JOURNAL").id_from_name(name).hex()
    entry = await router.directory.resolve(bytes.fromhex(oid), create=False)  # type: ignore[attr-defined]
    owner = router.owner_of(entry)  # type: ignore[attr-defined]
    assert owner is not None, f"{name}: no primary"
    return owner[0]


async def registered(cluster: LocalCluster) -> list[str]:
    """Node ids with a registration in etcd (their lease has not expired)."""
    async with cluster.etcd_client() as client:
        return [k for k, _ in await get_prefix(client, nodes_prefix(cluster.cluster))]


async def read_all(cluster: LocalCluster, timeout: float) -> dict[str, list[str]]:
    """Every object's log, retrying while the cluster recovers."""
    out: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        for name in NAMES:
            while True:
                try:
                    out[name] = await c.namespace("JOURNAL").get_by_name(name).read()
                    break
                except DuroError as exc:
                    if not exc.retryable or time.monotonic() > deadline:
                        raise AssertionError(
                            f"{name} not readable {timeout:g} s after the restart: {exc!r}; "
                            f"groups: {await cluster.groups()}") from exc
                    await asyncio.sleep(0.2)
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("followers_sync", [True, False],
                         ids=["synced-wal", "followers-unsynced-wal"])
async def test_power_loss_of_every_node_and_the_primarys_disk_loses_no_acked_write(
    make_cluster: MakeCluster, tmp_path: Path, followers_sync: bool,
) -> None:
    require_fuse()
    cluster = await make_cluster(app=str(APP), start=False,
                                 placement_args=("--rebalance", "false"))
    if not followers_sync:
        for spec in cluster.nodes:
            if spec.name != PRIMARY:
                spec.args.append("--no-sync-wal")
    disks = LazyFS(tmp_path / "disks", cluster.root / "nodes")
    await asyncio.to_thread(disks.start)
    try:
        await cluster.start()
        # The cluster has been up for a while: what it wrote when it started (storage ids, group
        # configurations) has been written back by the OS, as it would be within seconds on a
        # real machine. The power loss takes what was written after this point, if not fsynced.
        await asyncio.to_thread(disks.sync)

        history = History()
        ids = itertools.count()
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            tasks = [asyncio.create_task(writer(c, k, history, ids)) for k in range(WRITERS)]
            try:
                deadline = time.monotonic() + 60
                while len(history.acked()) < TARGET_ACKED:
                    assert time.monotonic() < deadline, f"too slow: {history.summary()}"
                    assert not any(task.done() for task in tasks), [
                    task.exception() for task in tasks if task.done()]
                    await asyncio.sleep(0.05)
                assert {await primary_of(c, n) for n in NAMES} == {PRIMARY}
                home = next(g for g in await cluster.groups() if g.home == PRIMARY)
                assert home.primary == PRIMARY and len(home.in_sync) >= 2, home

                # Power loss, under load: every node dies at once...
                await asyncio.gather(*(cluster.kill_node(i) for i in range(len(cluster.nodes))))
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        acked = history.acked()
        # ...what was not fsynced is gone...
        lost = await asyncio.to_thread(disks.power_loss)
        # ...and the primary's disk is lost too: only the followers' copies remain.
        await asyncio.to_thread(shutil.rmtree, cluster.root / "nodes" / PRIMARY)

        # The machines come back after their leases expired (as after a real outage).
        t_kill = time.monotonic()
        while await registered(cluster):
            assert time.monotonic() - t_kill < cluster.lease_ttl + 10, await registered(cluster)
            await asyncio.sleep(0.2)
        await asyncio.gather(*(cluster.start_node(i) for i in range(len(cluster.nodes))))
        final = await read_all(cluster, timeout=90)

        # The group failed over (a new epoch) and the primary's wiped disk came back as a new
        # copy (a new storage id), so what was read came from the followers' disks.
        after = next(g for g in await cluster.groups() if g.gid == home.gid)
        assert after.epoch > home.epoch, (home, after)
        assert dict(after.in_sync).get(PRIMARY) != dict(home.in_sync)[PRIMARY], (home, after)
        missing = [o.arg for o in acked if o.arg not in final[o.obj]]
        if followers_sync:
            check(history, final)
            assert not missing
        else:
            # Followers that acknowledge before their fsync lose acknowledged appends when the
            # primary's disk is lost: the check must see it.
            assert lost["bytes"] > 0, lost
            assert missing, (f"no acknowledged append was lost although the followers did not "
                             f"fsync ({len(acked)} acked, LazyFS discarded {lost})")
            with pytest.raises(AssertionError, match="acknowledged append .* is lost"):
                check(history, final)
    finally:
        try:
            await cluster.stop()  # before unmounting: no node may hold files on the mount
        finally:
            await asyncio.to_thread(disks.stop)
