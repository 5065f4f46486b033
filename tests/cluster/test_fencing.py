"""Fencing end to end: an instance whose directory epoch was superseded cannot commit a write.

The node runs in the test's event loop (``NodeProcess``) against a real etcd and a real placement
process (``LocalCluster`` with no nodes). The object's method waits on an event before writing;
while it waits the test bumps the object's epoch at its directory partition (the switch a
migration makes, into the same group) and the node learns it. Released, the method writes: the group commit's fence check refuses the
batch (counted in ``ownership.fenced_writes``), nothing reaches RocksDB, the caller gets a
retryable error, and a fresh call (at the new epoch) reads the old value.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

import duro.client
from duro import DurableObject
from duro._app import load_app
from duro.dev import LocalCluster
from duro.errors import DuroError, FencedError
from duro.node.config import NodeConfig
from duro.node.main import NodeProcess
from tests.cluster.conftest import MakeCluster, wait_until

pytestmark = [pytest.mark.cluster]

GATE: asyncio.Event | None = None  # the blocked write waits on this (set by the test)
ENTERED: asyncio.Event | None = None


class Gated(DurableObject):
    async def put(self, value: int) -> int:
        self.ctx.storage.put("v", value)
        return value

    async def put_after_gate(self, value: int) -> int:
        assert ENTERED is not None and GATE is not None
        ENTERED.set()
        await GATE.wait()
        self.ctx.storage.put("v", value)
        return value

    async def get(self) -> int | None:
        return await self.ctx.storage.get("v")


def _tls_of(cluster: LocalCluster, node_id: str) -> dict[str, Path]:
    """The in-process node's certificate from the cluster's CA (none when it runs plaintext)."""
    if not cluster.tls:
        return {}
    c = cluster.issue("node", node_id)
    return {"tls_ca": c.ca, "tls_cert": c.cert, "tls_key": c.key}


@pytest.mark.timeout(90)
async def test_superseded_epoch_cannot_commit(make_cluster: MakeCluster, tmp_path: Path) -> None:
    global GATE, ENTERED
    GATE, ENTERED = asyncio.Event(), asyncio.Event()
    cluster = await make_cluster(regions=(), replicas=1)  # etcd + placement, no node processes
    app = load_app(sys.modules[__name__])
    config = NodeConfig(
        etcd=cluster.etcd.endpoint, cluster=cluster.cluster, region="us-east", zone="us-east-a",
        node_id="inproc-0", data_dir=tmp_path / "node", listen="127.0.0.1:0", lease_ttl=3,
        **_tls_of(cluster, "inproc-0"),
    )
    node = NodeProcess(config, app=app)
    await node.start()
    try:
        assert node.cluster is not None
        own = node.cluster.ownership
        committer = node.host.committer  # type: ignore[union-attr]
        async with duro.client.connect(etcd=cluster.etcd.endpoint, app=app,
                                       region="us-east") as c:
            ns = c.namespace("GATED")
            assert await ns.get_by_name("x").put(1) == 1  # placed on our node
            oid = ns.id_from_name("x").hex()
            entry = await wait_until(lambda: node.cluster.router.directory.lookup(oid))  # type: ignore[union-attr]
            assert entry
            cached = node.cluster.router.directory.lookup(oid)  # type: ignore[union-attr]
            router = node.cluster.router  # type: ignore[union-attr]
            assert cached is not None and router.owner_of(cached)[0] == "inproc-0"
            first_epoch = cached.epoch
            act = node.host.activation(bytes.fromhex(oid))  # type: ignore[union-attr]
            assert act is not None and act.epoch == first_epoch

            call = asyncio.ensure_future(ns.get_by_name("x").put_after_gate(2))
            await asyncio.wait_for(ENTERED.wait(), 10)

            # Supersede the instance: a compare-and-swap at the object's directory partition
            # (the switch a migration makes, here back into its own group: epoch + 1).
            directory = c.invoker.directory  # type: ignore[attr-defined]
            current = await directory.resolve(bytes.fromhex(oid), create=False, fresh=True)
            assert current is not None and current.epoch == first_epoch
            resp = await directory.switch(bytes.fromhex(oid), current.group, current.epoch,
                                          current.group, current.region)
            assert resp.switched and resp.entry.epoch == first_epoch + 1
            # (the node learns it as an owner would: here through its own cache of the entry)
            node.cluster.router.directory.put(  # type: ignore[union-attr]
                type(current).from_pb(resp.entry))

            fenced_before = own.fenced_writes
            commits_before = (committer.stats.commits, committer.stats.writes)
            GATE.set()  # the epoch-1 instance now writes v=2
            with pytest.raises(DuroError) as info:
                await asyncio.wait_for(call, 10)
            assert info.value.retryable is True, info.value
            # The commit's refusal itself is what the caller sees.
            assert info.value.code == FencedError.code and "write refused" in str(info.value)

            # Refused, not skipped: the write reached the group commit and the fence check
            # rejected it (nothing was written to RocksDB by that commit round).
            await wait_until(lambda: own.fenced_writes > fenced_before,
                             message="no fenced write recorded")
            assert (committer.stats.commits, committer.stats.writes) == commits_before

            # A fresh call activates the object at epoch 2 and reads what is on disk: still 1.
            assert await ns.get_by_name("x").get() == 1
            act2 = node.host.activation(bytes.fromhex(oid))  # type: ignore[union-attr]
            assert act2 is not None and act2.epoch == first_epoch + 1
            # ... and the new instance can write.
            assert await ns.get_by_name("x").put(3) == 3
            assert await ns.get_by_name("x").get() == 3
    finally:
        if GATE is not None:
            GATE.set()
        await node.stop()
