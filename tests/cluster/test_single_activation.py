"""One object, one activation cluster-wide, however many callers race to call it first."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

import duro.client
from duro._wire import RedirectError
from duro.errors import DuroError
from tests.cluster.conftest import ROOT, MakeCluster, activations

pytestmark = [pytest.mark.cluster]

APP = ROOT / "examples"


@pytest.mark.timeout(120)
async def test_racing_first_calls_create_exactly_one_activation(make_cluster: MakeCluster) -> None:
    # No rebalancing: a move toward the callers' region would be a legitimate second activation.
    cluster = await make_cluster(placement_args=("--rebalance", "false"))
    before = await activations(cluster)
    name = f"race-{uuid.uuid4().hex}"  # a NEW id: no directory entry yet
    async with (
        duro.client.connect(node=cluster.nodes[0].address, app=APP) as c0,
        duro.client.connect(node=cluster.nodes[1].address, app=APP) as c1,
        duro.client.connect(node=cluster.nodes[2].address, app=APP) as c2,
        duro.client.connect(etcd=cluster.etcd.endpoint, region="eu-west") as cr,
    ):
        by_address = {n.address: c for n, c in zip(cluster.nodes, (c0, c1, c2), strict=True)}
        clients = [c0, c1, c2, cr]
        redirects = 0

        async def first_call(i: int) -> int:
            nonlocal redirects
            client = clients[i % len(clients)]
            for _hop in range(3):
                try:
                    return await client.namespace("COUNTER").get_by_name(name).increment()
                except RedirectError as r:  # a node-direct client: go where the node says
                    redirects += 1
                    client = by_address[r.address]
            raise AssertionError("redirect loop")

        results = await asyncio.gather(*(first_call(i) for i in range(200)))

        # Every increment was acknowledged exactly once, by one instance.
        assert sorted(results) == list(range(1, 201))
        after = await activations(cluster)
        created = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(created) == 1, f"activations per node: {created}"
        # The non-owner nodes answered with redirects (they placed the object or read its entry).
        assert redirects > 0

        # Now increments through random nodes and clients, some on fresh stubs: the counter
        # ends equal to the number of acknowledged increments.
        rng = random.Random(7)
        acked = 200
        failures: list[DuroError] = []

        async def worker(seed: int) -> None:
            nonlocal acked
            r = random.Random(seed)
            for _ in range(40):
                client = r.choice(clients)
                try:
                    await first_call_on(client, r)
                    acked += 1
                except DuroError as exc:  # pragma: no cover - nothing fails in a healthy cluster
                    failures.append(exc)

        async def first_call_on(client: duro.client.Client, r: random.Random) -> None:
            for _hop in range(3):
                try:
                    await client.namespace("COUNTER").get_by_name(name).increment()
                    return
                except RedirectError as red:
                    client = by_address[red.address]
            raise AssertionError("redirect loop")

        await asyncio.gather(*(worker(rng.randrange(1 << 30)) for _ in range(16)))
        assert failures == []
        assert await cr.namespace("COUNTER").get_by_name(name).get() == acked == 200 + 16 * 40
        for c in (c0, c1, c2):
            try:
                value = await c.namespace("COUNTER").get_by_name(name).get()
            except RedirectError as red:
                value = await by_address[red.address].namespace("COUNTER").get_by_name(name).get()
            assert value == acked
        assert sum(a - b for a, b in zip(await activations(cluster), before, strict=True)) == 1
