"""The per-object storage quota in a replicated cluster (docs/storage.md, "Limits"): the account
moves with the object through a live migration and a failover, every copy of every group keeps a
usage record equal to what it stores, and the edge answers a write over the quota with 507.

Three regions, one node each, every group on three nodes; quota 20,000 bytes. "Exactly N bytes
left" is checked to the byte at every step (``assert_room``: N + 1 refused, N accepted).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

import duro.client
from duro.client.admin import migrate, where
from duro.dev import LocalCluster
from duro.errors import DuroError
from duro.node.storage import layout, usage
from duro.node.storage.engine import StorageEngine
from tests.cluster.conftest import MakeCluster
from tests.helpers.storage_quota import assert_room, size, value_of

pytestmark = [pytest.mark.cluster]

APP = Path(__file__).resolve().parents[1] / "node" / "storage" / "apps" / "limits"
QUOTA = 20_000
RECOUNT_LOG = "counted the storage of an object without a usage record"


def copies(cluster: LocalCluster) -> dict[str, dict[tuple[int, bytes], tuple[int | None, int]]]:
    """Per node (stopped): every object of every group copy there -> (its usage record, a count
    of its keys), from the node's RocksDB."""
    out: dict[str, dict[tuple[int, bytes], tuple[int | None, int]]] = {}
    for spec in cluster.nodes:
        engine = StorageEngine(cluster.root / "nodes" / spec.name / "rocksdb")
        try:
            seen: dict[tuple[int, bytes], list] = {}
            for k, v in engine.scan(layout.GROUP, layout.prefix_end(layout.GROUP)):
                gid = layout.gid_of(k)
                space = k[layout.GROUP_PREFIX_BYTES:layout.GROUP_PREFIX_BYTES + 1]
                oid = k[layout.GROUP_PREFIX_BYTES + 1:layout.DATA_HEADER_BYTES]
                if space == layout.DATA:
                    seen.setdefault((gid, oid), [None, 0])[1] += usage.entry_size(k, v)
                elif space == layout.USAGE:
                    seen.setdefault((gid, oid), [None, 0])[0] = usage.decode(v)
            out[spec.name] = {key: (rec, n) for key, (rec, n) in seen.items()}
        finally:
            engine.close()
    return out


async def answered(make, timeout: float = 30.0):  # noqa: ANN001, ANN201
    """A stub (from ``make()``) of the object once it answers again: a call in flight to a node
    that dies, or sent before the router saw it die, fails with a retryable error ("may or may
    not have executed"), which breaks that stub as in Cloudflare; the router waits through the
    failover for the next ones, so ask again with a new stub."""
    deadline = time.monotonic() + timeout
    while True:
        stub = make()
        try:
            assert await stub.ping() == "pong"
            return stub
        except DuroError as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.timeout(300)
async def test_quota_account_follows_the_object_and_every_copy_agrees(
        make_cluster: MakeCluster) -> None:
    cluster = await make_cluster(
        app=str(APP), edges=True,
        node_args=("--max-storage-bytes", str(QUOTA), "--log-level", "INFO"),
        placement_args=("--rebalance", "false"),
    )
    e = cluster.etcd.endpoint
    async with duro.client.connect(etcd=e, region="us-east") as c:
        s = c.namespace("STORE").get_by_name("q")
        await s.fill("k", 0, 100, "x" * 150)
        used = 100 * size("k00000000", "x" * 150)  # 16,100 bytes
        await assert_room(s, QUOTA - used)

        # Through the edge: a write over the quota is 507 with the error, and writes nothing.
        room = QUOTA - used
        async with aiohttp.ClientSession() as http:
            url = f"{cluster.edge_url(0)}/store/q/put"
            probe = value_of(room + 1, "big")
            async with http.get(url, params={"key": "big", "size": str(len(probe))}) as r:
                body = await r.json()
                assert r.status == 507, body
                assert body["error"]["code"] == "storage_limit", body
                assert body["error"]["retryable"] is False
            async with http.get(url, params={"key": "big",
                                             "size": str(len(value_of(room, "big")))}) as r:
                assert r.status == 200, await r.text()
        await s.delete("big")

        # A live migration: the target counts the copy as it takes it in (no recount later).
        before = await where(e, cluster.cluster, str(APP), "STORE", "q")
        moved = await migrate(e, cluster.cluster, str(APP), "STORE", "q", to_region="eu-west")
        assert moved["outcome"] == "released", moved
        after = await where(e, cluster.cluster, str(APP), "STORE", "q")
        assert after["node"] == "eu-west-0" and after["node"] != before["node"], after
        await assert_room(s, QUOTA - used)
        assert await s.delete("k00000000") is True
        used -= size("k00000000", "x" * 150)
        await assert_room(s, QUOTA - used)

        # A failover: the primary dies; the new one serves the account its copy received.
        victim = cluster.node_by_id(after["node"])
        await cluster.kill_node(victim)
        s = await answered(lambda: c.namespace("STORE").get_by_name("q"))
        await assert_room(s, QUOTA - used)
        await s.put("k00000001", "y" * 10)  # an overwrite on the new primary: smaller
        used -= size("k00000001", "x" * 150) - size("k00000001", "y" * 10)
        await assert_room(s, QUOTA - used)
        await cluster.start_node(victim)  # back, caught up, and its group handed back to it
        await cluster.wait_replicated(60)
        s = await answered(lambda: c.namespace("STORE").get_by_name("q"))
        await assert_room(s, QUOTA - used)

    await cluster.stop()
    per_node = copies(cluster)
    oid = bytes.fromhex(after["id"])
    holding = {}
    for node, objects in per_node.items():
        for (gid, o), (record, counted) in objects.items():
            # Every copy of every object: the record is what the copy stores, or absent when it
            # stores nothing (the source group after the move: no stray record either).
            assert record == (counted or None), (node, gid, o.hex()[:12], record, counted)
            if o == oid and counted:
                holding[node] = (gid, record)
    assert len(holding) == 3, holding  # three copies of the object, one group, one account
    assert len(set(holding.values())) == 1 and next(iter(holding.values()))[1] == used, holding
    for spec in cluster.nodes:
        log = (cluster.root / "logs" / f"{spec.name}.log").read_text()
        assert RECOUNT_LOG not in log, f"{spec.name} had to recount an object"
