"""Placement availability: after the only placement replica restarts, new objects can be created
again within a couple of seconds of a leader existing.

Creating an object whose directory partition has no group yet asks the placement leader
(``AssignPartitions``). Routers used to dial it with gRPC's default reconnect backoff (1 s growing
1.6x per failed attempt): a router that kept trying while placement was down next looked again
many seconds after the new leader was up, and new objects stayed unplaceable for 11-17 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

import duro.client
from duro._ids import ObjectId, namespace_key
from duro.client.router import Router
from duro.dev import LocalCluster
from duro.topology.keys import leader_key
from duro.topology.partitions import partition_of
from tests.cluster.conftest import MakeCluster

pytestmark = [pytest.mark.cluster]

KEY = namespace_key("Counter")
# Seconds placement stays down while callers keep creating objects. gRPC's default backoff tries
# again about 1, 2.6, 5.2, 9.3, 15.8, 26.3 and 42.8 s after the loss (+-20% each): a leader back at
# ~30 s waits ~12 s for the next try there; 16 s down left the gap to luck (6.9 s twice, 0.2 s once).
DOWN = 28.0


async def leader_revision(cluster: LocalCluster) -> int:
    """create_revision of the leader key (0: none): a new leader has a new one."""
    async with cluster.etcd_client() as client:
        resp = await client.kv.get(leader_key(cluster.cluster).encode(), timeout=2.0)
        return resp.kvs[0].create_revision if resp.kvs else 0


def unplaced_name(router: Router, partitions: int) -> str:
    """A new object name whose directory partition has no group yet: creating it needs the
    placement leader."""
    while True:
        name = f"new-{uuid.uuid4().hex}"
        p = partition_of(ObjectId.from_name(KEY, name).raw, partitions)
        if router.directory.partitions.group_of(p) is None:
            return name


@pytest.mark.timeout(180)
async def test_new_objects_are_created_soon_after_placement_restarts(
    make_cluster: MakeCluster,
) -> None:
    cluster = await make_cluster(placement_args=("--rebalance", "false"))
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        router = c.invoker
        assert isinstance(router, Router)
        partitions = (await router.directory.wait_settings(10)).partitions
        ns = c.namespace("COUNTER")
        for _ in range(3):  # the router has talked to the placement leader
            assert await ns.get_by_name(unplaced_name(router, partitions)).increment() == 1
        old_leader = await leader_revision(cluster)
        assert old_leader

        successes: list[float] = []
        failures = 0

        async def create_forever() -> None:
            nonlocal failures
            while True:
                stub = ns.get_by_name(unplaced_name(router, partitions))
                try:
                    await asyncio.wait_for(stub.increment(), 5.0)
                    successes.append(time.monotonic())
                except Exception:  # unplaceable while placement is down: try a new object
                    failures += 1
                    await asyncio.sleep(0.05)

        await cluster.kill_placement(0, signal.SIGKILL)
        creator = asyncio.ensure_future(create_forever())
        try:
            await asyncio.sleep(DOWN)
            successes.clear()
            assert failures > 0, "objects were created with placement down"
            await cluster.start_placement(0)
            deadline = time.monotonic() + 60
            while (rev := await leader_revision(cluster)) in (0, old_leader):
                assert time.monotonic() < deadline, "no new placement leader"
                await asyncio.sleep(0.05)
            leader_at = time.monotonic()
            while not successes:
                assert time.monotonic() < leader_at + 30, "no object created 30 s after a leader"
                await asyncio.sleep(0.02)
        finally:
            creator.cancel()
            await asyncio.gather(creator, return_exceptions=True)
        took = successes[0] - leader_at
        # The requirement is 2 s; the bound leaves room for a busy CI machine and is still far
        # below what the default backoff gave (11-17 s).
        assert took < 5.0, f"first new object {took:.1f} s after the new leader (rev {rev})"
