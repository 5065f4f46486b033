"""The cluster fixture: ``duro.dev.LocalCluster`` (what ``duro dev`` runs), with leak checks.

``make_cluster(**kw)`` starts etcd, placement replicas and node processes on free 127.0.0.1
ports under the test's tmp dir; at teardown every cluster is stopped and the test fails if any
pid the cluster ever started (``cluster.all_pids()``) is still alive, or if any process whose
command line mentions the cluster's root directory is left (grandchildren included).
``cluster`` is the default: 3 nodes in 3 regions, 1 placement replica.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from etcd3aio import Etcd3Client

from duro.dev import LocalCluster
from duro.topology.nodes import node_key
from tests.cluster.etcd_fixture import pid_alive
from tests.helpers.tls import cluster_tls_kwargs

__all__ = [
    "ROOT",
    "activations",
    "metric",
    "node_registered",
    "processes_mentioning",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]

MakeCluster = Callable[..., Awaitable[LocalCluster]]


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line contains *text*."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and pid_alive(int(entry)):
            found.append((int(entry), cmd))
    return found


async def assert_no_leaks(pids: list[int], root: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        strays = processes_mentioning(root)
        if not alive and not strays:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"leaked processes: pids {alive}, by cmdline {strays}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[MakeCluster]:
    clusters: list[LocalCluster] = []

    async def make(*, start: bool = True, **kw: Any) -> LocalCluster:
        kw.setdefault("etcd_no_fsync", True)
        kw.setdefault("lease_ttl", 3)
        kw.setdefault("app", str(ROOT / "examples"))
        for k, v in cluster_tls_kwargs().items():  # mTLS with the session's CA (helpers/tls.py)
            kw.setdefault(k, v)
        if "edges" in inspect.signature(LocalCluster).parameters:
            kw.setdefault("edges", False)  # these tests are about nodes; edges have their own
        c = LocalCluster(tmp_path / f"cluster{len(clusters)}", **kw)
        clusters.append(c)
        if start:
            await c.start()
        return c

    try:
        yield make
    finally:
        errors = []
        for c in clusters:
            try:
                await c.stop()
            except Exception as exc:  # keep checking the others
                errors.append(exc)
            await assert_no_leaks(c.all_pids(), str(c.root))
        if errors:
            raise errors[0]


@pytest.fixture
async def cluster(make_cluster: MakeCluster) -> LocalCluster:
    return await make_cluster()


# -- observations -------------------------------------------------------------------------------

def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


async def metric(port: int | str, name: str) -> float:
    """Sum of the samples of metric *name* on a node's Prometheus endpoint."""
    text = await asyncio.to_thread(_scrape, int(port))
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def activations(cluster: LocalCluster) -> list[float]:
    """``duro_runtime_activations_total`` of every running node, in node order."""
    return [await metric(n.ready["metrics_port"], "duro_runtime_activations_total")
            for n in cluster.nodes]


async def node_registered(client: Etcd3Client, cluster: LocalCluster, node_id: str) -> bool:
    resp = await client.kv.get(node_key(cluster.cluster, node_id).encode(), timeout=2.0)
    return bool(resp.kvs)


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
    message: str = "condition not reached",
) -> float:
    """Poll *predicate* (sync or async) until truthy; return the seconds it took."""
    t0 = time.monotonic()
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{message} (after {timeout}s)")
        await asyncio.sleep(interval)
