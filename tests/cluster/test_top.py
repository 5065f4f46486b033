"""``duro top`` through the CLI against a real cluster: one frame as text (``--once``) and the same
picture as JSON (``--json``), while calls are being made so that the rates move."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

import duro.client
from tests.cluster.conftest import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]


async def _top(cluster, *args: str) -> tuple[int, str, str]:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURO_")}
    env.update(cluster.client_tls.env() if cluster.client_tls else {})
    env["COLUMNS"] = "160"  # rich's width when stdout is not a terminal
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duro.cli", "top", "--etcd", cluster.etcd.endpoint,
        "--cluster", cluster.cluster, *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_duro_top_once_and_json(make_cluster) -> None:
    cluster = await make_cluster(regions=("us-east", "eu-west"),
                                 placement_args=("--rebalance", "false"))
    stop = asyncio.Event()
    calls = 0

    async def traffic() -> None:
        nonlocal calls
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            stubs = [c.namespace("COUNTER").get_by_name(f"top-{i}") for i in range(5)]
            while not stop.is_set():
                await asyncio.gather(*(s.increment() for s in stubs))
                calls += len(stubs)
                await asyncio.sleep(0.02)

    load = asyncio.create_task(traffic())
    try:
        while calls < 10:  # the objects exist before the first sample
            await asyncio.sleep(0.1)
        rc, out, err = await _top(cluster, "--once", "--interval", "1")
        assert rc == 0, err
        rc_j, out_j, err_j = await _top(cluster, "--json", "--interval", "1")
        assert rc_j == 0, err_j
    finally:
        stop.set()
        await load

    # The text frame: every node with its region and health, the leader, the binding's rate.
    ids = [n.ready["node_id"] for n in cluster.nodes]
    for node_id in ids:
        assert node_id in out, out
    for region in ("us-east", "eu-west"):
        assert region in out
    assert "leader placement-0" in out
    assert out.count("serving") >= len(ids)
    assert "COUNTER" in out and "under-replicated groups: none" in out and "p99 ms" in out

    # The picture as data: objects and memory per node, calls per second per binding.
    pic = json.loads(out_j)
    assert pic["leader"] == "placement-0"
    rows = [n for zones in pic["regions"].values() for ns in zones.values() for n in ns]
    assert sorted(r["node_id"] for r in rows) == sorted(ids)
    assert all(r["health"] == "serving" and r["memory_bytes"] > 10 << 20 for r in rows), rows
    assert sum(r["objects"] for r in rows) >= 5  # the five counters, wherever they live
    assert sum(r["events_per_s"] for r in rows) > 0
    assert pic["bindings"]["COUNTER"]["per_s"] > 0
    assert pic["bindings"]["COUNTER"]["calls"] >= 10
    assert 0 < pic["bindings"]["COUNTER"]["p99_ms"] <= 16384  # a bucket bound (call_stats.py)
    assert pic["under_replicated_groups"] == [] and pic["groups_without_primary"] == []


async def test_duro_top_shows_a_dead_node_unreachable(make_cluster) -> None:
    cluster = await make_cluster(regions=("us-east", "eu-west"),
                                 placement_args=("--rebalance", "false"), lease_ttl=30)
    victim = cluster.nodes[1].ready["node_id"]
    await cluster.kill_node(1)  # its registration outlives it (long lease): metrics gone
    rc, out, err = await _top(cluster, "--json", "--interval", "0.2")
    assert rc == 0, err
    pic = json.loads(out)
    rows = {n["node_id"]: n for zones in pic["regions"].values() for ns in zones.values()
            for n in ns}
    assert rows[victim]["health"] == "unreachable" and rows[victim]["objects"] is None
    assert any(r["health"] == "serving" for r in rows.values())
    rc, _out, err = await _top(cluster, "--once", "--interval", "0")
    assert rc == 2 and "--interval" in err
    # No etcd there: one line that says so, no traceback.
    rc, _out, err = await _top(cluster, "--once", "--interval", "0.1", "--etcd", "127.0.0.1:1")
    assert rc == 1 and "cannot read cluster 'duro' from etcd 127.0.0.1:1" in err, err
    assert "Traceback" not in err
