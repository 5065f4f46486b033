"""Real clusters for the edge tests: etcd, placement, nodes and edges as processes
(``duro.dev.LocalCluster``), one per test module (they take a few seconds to start)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest_asyncio

from duro.dev import LocalCluster
from tests.cluster.etcd_fixture import pid_alive
from tests.helpers.tls import cluster_tls_kwargs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TEST_APP = Path(__file__).parent / "app"


async def start_cluster(root: Path, **kw) -> LocalCluster:
    kw.setdefault("etcd_no_fsync", True)
    kw.setdefault("regions", ("us-east", "eu-west"))
    for k, v in cluster_tls_kwargs().items():  # mTLS with the session's CA (helpers/tls.py)
        kw.setdefault(k, v)
    cluster = LocalCluster(root, **kw)
    await cluster.start()  # stops what it started if it fails
    return cluster


async def stop_cluster(cluster: LocalCluster) -> None:
    pids = cluster.all_pids()
    await cluster.stop()
    await asyncio.sleep(0.1)
    alive = [p for p in pids if pid_alive(p)]
    assert not alive, f"processes left behind: {alive}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def examples_cluster(tmp_path_factory):
    cluster = await start_cluster(tmp_path_factory.mktemp("edge-examples"), app=EXAMPLES)
    yield cluster
    await stop_cluster(cluster)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def room_cluster(tmp_path_factory):
    """The test app, nodes evicting idle objects after 1 s, small per-client buffers."""
    cluster = await start_cluster(
        tmp_path_factory.mktemp("edge-rooms"), app=TEST_APP, regions=("us-east",), replicas=1,
        node_args=("--idle-timeout", "1", "--sweep-interval", "0.2"),
        edge_args=("--max-socket-buffer-bytes", str(1 << 20), "--no-access-log"),
    )
    yield cluster
    await stop_cluster(cluster)
