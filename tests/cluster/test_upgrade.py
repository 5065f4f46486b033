"""A cluster written by duro before replica groups and directory partitions upgrades in place
(docs/directory.md, "Upgrading"): tests/fixtures/legacy_v0.tar.gz is a stopped three-node cluster
made by that version (its etcd and its nodes' RocksDB directories, and what it held: every
object's value, owner node, epoch and alarm). This version starts on it unchanged: every object
answers with its value from its old node (now its home group's primary), with its epoch, its
due alarm fires, the per-object etcd keys are gone, and the nodes' keys are in their groups."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client, prefix_range_end

import duro.client
from duro.client.admin import where
from duro.errors import DuroError
from duro.node.storage import layout
from tests.cluster.conftest import MakeCluster, wait_until

pytestmark = [pytest.mark.cluster]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v0.tar.gz"
APP = Path(__file__).resolve().parent / "apps" / "migapp"


async def count(client: Etcd3Client, prefix: str) -> int:
    p = prefix.encode()
    return int((await client.kv.get(p, prefix_range_end(p), count_only=True)).count)


@pytest.mark.timeout(180)
async def test_a_cluster_from_before_partitions_upgrades_in_place(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster(app=str(APP), placement_args=("--rebalance", "false"),
                                 start=False)
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(cluster.root, filter="data")
    expected = json.loads((cluster.root / "expected.json").read_text())
    assert {e["node"] for e in expected.values()} == {"us-east-0", "eu-west-0", "ap-south-0"}
    async with cluster.etcd_client() as etcd:
        await cluster.start()
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            ns = c.namespace("ACC")

            async def value(name: str) -> int | None:
                try:
                    return await ns.get_by_name(name).get()
                except DuroError as exc:
                    assert exc.retryable, exc
                    return None

            for name, e in expected.items():
                got = None
                for _ in range(100):
                    got = await value(name)
                    if got is not None:
                        break
                assert got == e["value"], (name, got, e)
                w = await where(cluster.etcd.endpoint, cluster.cluster, str(APP), "ACC", name)
                assert (w["node"], w["epoch"]) == (e["node"], e["epoch"]), (name, w, e)
            # Alarms that were due fire, once, where the object lives.
            for name, e in expected.items():
                if e["alarm"] is not None:
                    await wait_until(lambda n=name: _fired(ns, n), 30, 0.2,
                                     f"the alarm of {name} did not fire")
            # Writes go on, replicated now.
            name = next(iter(expected))
            assert await ns.get_by_name(name).add(1) == expected[name]["value"] + 1

            # etcd: no per-object keys any more; each node's old keys moved into its group.
            await wait_until(lambda: _none_left(etcd, cluster.cluster), 30, 0.2,
                             "per-object etcd keys remain")
            for spec in cluster.nodes:
                await cluster.stop_node(cluster.node_by_id(spec.name))
            for spec in cluster.nodes:
                from duro.node.storage.engine import StorageEngine  # noqa: PLC0415

                engine = StorageEngine(Path(spec.args[spec.args.index("--data-dir") + 1]) /
                                       "rocksdb")
                try:
                    assert all(next(engine.scan(lo, hi), None) is None
                               for lo, hi in layout.legacy_spaces()), spec.name
                finally:
                    engine.close()


async def _fired(ns, name: str) -> bool:  # noqa: ANN001
    try:
        return await ns.get_by_name(name).fired() >= 1
    except DuroError:
        return False


async def _none_left(etcd: Etcd3Client, cluster: str) -> bool:
    return await count(etcd, f"/duro/{cluster}/dir/") == 0
