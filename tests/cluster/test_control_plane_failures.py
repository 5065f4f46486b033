"""Control-plane failures: etcd restarted mid-traffic, and the placement leader SIGKILLed."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

import duro.client
from duro.dev import LocalCluster
from duro.errors import DuroError
from tests.cluster.conftest import MakeCluster, wait_until

pytestmark = [pytest.mark.cluster]


class Tally:
    """What one sequential writer saw: acknowledged values, and retryable (in-doubt) failures."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.in_doubt = 0
        self.fatal: list[DuroError] = []
        self.last_ack = 0.0


async def writer(client: duro.client.Client, name: str, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        stub = client.namespace("COUNTER").get_by_name(name)  # a fresh stub for each attempt
        try:
            tally.acked.append(await stub.increment())
            tally.last_ack = time.monotonic()
        except DuroError as exc:
            if not exc.retryable:
                tally.fatal.append(exc)
                return
            tally.in_doubt += 1  # may or may not have been applied
            await asyncio.sleep(0.05)


def pids_of(cluster: LocalCluster) -> dict[str, int]:
    out = {}
    for spec in (*cluster.nodes, *cluster.placements):
        assert spec.proc is not None and spec.running, f"{spec.name} is not running"
        out[spec.name] = spec.proc.pid
    return out


@pytest.mark.timeout(150)
async def test_etcd_restart_mid_traffic(cluster: LocalCluster) -> None:
    regions = [n.region for n in cluster.nodes]
    pids = pids_of(cluster)
    stop = asyncio.Event()
    tallies: dict[str, Tally] = {}
    async with (
        duro.client.connect(etcd=cluster.etcd.endpoint, region=regions[0]) as c0,
        duro.client.connect(etcd=cluster.etcd.endpoint, region=regions[1]) as c1,
        duro.client.connect(etcd=cluster.etcd.endpoint, region=regions[2]) as c2,
    ):
        clients = [c0, c1, c2]
        tasks = []
        for i in range(6):  # two objects per node, one sequential writer each
            name = f"etcd-restart-{i}"
            tallies[name] = Tally()
            tasks.append(asyncio.create_task(writer(clients[i % 3], name, tallies[name], stop)))
        await wait_until(lambda: all(len(t.acked) >= 5 for t in tallies.values()), timeout=20)
        owners = {n: c.invoker.owner_of(c.invoker.directory.lookup(  # type: ignore[attr-defined]
            c.namespace("COUNTER").id_from_name(n).hex()))[0]
            for n, c in ((n, clients[i % 3]) for i, n in enumerate(tallies))}
        assert len(set(owners.values())) == 3  # traffic to every node

        old_etcd_pid = cluster.etcd.pid
        restarted_at = time.monotonic()
        await cluster.etcd.restart_async()  # SIGTERM, then start on the same ports and data
        assert cluster.etcd.pid != old_etcd_pid
        # Every writer gets acknowledgements again, with no duro process restarted.
        await wait_until(lambda: all(t.last_ack > restarted_at + 0.5 for t in tallies.values()),
                         timeout=30, message="writers did not recover after the etcd restart")
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        assert pids_of(cluster) == pids

        # New objects can be placed again. The placement replica lost leadership while etcd was
        # down and waits for its own stale leader key (restored with its lease by the restart)
        # to expire before winning again: up to one leader TTL (3 s) of retryable errors.
        async def place_new(client: duro.client.Client) -> bool:
            try:
                fresh = f"after-restart-{uuid.uuid4().hex}"
                return await client.namespace("COUNTER").get_by_name(fresh).increment() == 1
            except DuroError as exc:
                assert exc.retryable, exc
                return False

        for client in clients:
            await wait_until(lambda: place_new(client), timeout=15, interval=0.2,  # noqa: B023
                             message="no new object placed after the etcd restart")

        for name, t in tallies.items():
            assert t.fatal == [], t.fatal
            # acknowledged values are exactly the increments applied, in order, never twice
            assert t.acked == sorted(set(t.acked))
            value = await c0.namespace("COUNTER").get_by_name(name).get()
            # every acked increment is there; beyond that, only in-doubt ones may have applied
            assert len(t.acked) <= value <= len(t.acked) + t.in_doubt, (name, value, t.__dict__)
            assert value == t.acked[-1]  # the last call was acknowledged: it saw the final value
        assert sum(t.in_doubt for t in tallies.values()) < 10_000  # sanity: no error storm


@pytest.mark.timeout(120)
async def test_placement_leader_sigkill_standby_takes_over(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster(regions=("us-east", "eu-west"), placement_replicas=2)
    leader = await cluster.wait_leader()
    idx = next(i for i, p in enumerate(cluster.placements) if p.name == leader["id"])
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        ns = c.namespace("COUNTER")
        assert await ns.get_by_name("before").increment() == 1  # router knows the leader

        await cluster.kill_placement(idx)
        t0 = time.monotonic()
        placed_at: float | None = None
        errors: list[DuroError] = []
        while placed_at is None and time.monotonic() - t0 < 15:
            try:
                assert await ns.get_by_name(f"new-{uuid.uuid4().hex}").increment() == 1
                placed_at = time.monotonic()
            except DuroError as exc:
                assert exc.retryable, exc
                errors.append(exc)
                await asyncio.sleep(0.1)
        assert placed_at is not None, f"no object placed 15 s after the leader died: {errors[-1:]}"
        takeover = placed_at - t0
        assert takeover < 8.0, takeover
        new_leader = await cluster.wait_leader()
        assert new_leader["id"] != leader["id"]
        # The new leader places many new objects, spread by region as before.
        names = [f"burst-{i}-{uuid.uuid4().hex[:8]}" for i in range(50)]
        assert await asyncio.gather(*(ns.get_by_name(n).increment() for n in names)) == [1] * 50
        assert await ns.get_by_name("before").get() == 1
        print(f"placement takeover: first new object placed {takeover:.2f}s after SIGKILL "
              f"({len(errors)} retryable errors meanwhile)")
