"""Migration scenarios across a real network stack: regions as namespaces, netem delays.

The same scenarios as ``tests/cluster/test_migration.py``, with the in-process latency simulation
(``DURO_SIMULATE_LATENCY``) replaced by veth pairs with ``tc netem`` delays between region
namespaces (``tests/netns/README.md``):

* the delays are real: a TCP handshake between two regions takes their configured round trip;
* an object created from us-east then called only from eu-west moves to the eu-west node within a
  bounded time; the eu-west caller's p50 drops by about the round trip; its counter equals the
  acknowledged increments; no call failed;
* the source node crashing after the transfer (``DURO_MIGRATION_FAULT=after_transfer``) leaves
  exactly one node serving the object, with every acknowledged write (alarms after a crash are
  tests/cluster's: they do not depend on the network).
"""

from __future__ import annotations

import asyncio
import statistics

import pytest

from tests.netns.cluster import run_client
from tests.netns.conftest import delays_or_router_fallback, need_delays
from tests.netns.topology import Topology

pytestmark = [pytest.mark.slow, pytest.mark.netns]

CLOSED_PORT = 9  # nothing listens there: a connect costs exactly one round trip (SYN -> RST)


@pytest.mark.timeout(60)
async def test_inter_region_delays_are_real(netns_topology: Topology) -> None:
    topo = netns_topology
    need_delays(topo)
    pairs = [("us-east", "eu-west"), ("us-east", "ap-south"), ("eu-west", "ap-south")]
    for src in ("us-east", "eu-west"):
        targets = [[dst, topo.addr(dst), CLOSED_PORT] for a, dst in pairs if a == src]
        targets.append(["hub", topo.hub_addr, CLOSED_PORT])
        res = await run_client(topo.ns(src), "rtt", targets=targets, samples=5)
        for dst, _, _ in targets:
            want = 0.0 if dst == "hub" else topo.rtt_ms(src, dst)
            got = res[dst]["median_ms"]
            assert want * 0.95 <= got <= want + 20, \
                f"{src}->{dst}: TCP handshake {got:.1f} ms, configured RTT {want:.0f} ms ({res})"


@pytest.mark.timeout(150)
async def test_object_follows_its_callers_across_namespaces(
    netns_topology: Topology, make_netns_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    topo = netns_topology
    delays = delays_or_router_fallback(topo, monkeypatch)
    print(f"inter-region delays: {delays}")
    cluster = await make_netns_cluster(
        regions=("us-east", "eu-west"),
        placement_args=("--rebalance-interval", "0.5", "--min-dwell", "1", "--min-calls", "5"))
    created = await cluster.run_client(topo.ns("us-east"), "call", region="us-east",
                                       binding="ACC", name="follow", method="add")
    assert created["owner"] == "us-east-0", created
    res = await cluster.run_client(topo.ns("eu-west"), "follow", region="eu-west",
                                   binding="ACC", name="follow", to_node="eu-west-0",
                                   max_seconds=60, after=30, timeout=100)
    assert not res["errors"], f"callers saw errors during the move: {res['errors'][:5]}"
    assert res["moved_after_s"] is not None, "the object did not move to eu-west within 60 s"
    assert res["owner"] == "eu-west-0", res["owner"]
    # The counter holds exactly the acknowledged increments (1 from us-east + each eu-west add).
    assert res["final"] == res["acked"] == 1 + len(res["calls"]), \
        (res["final"], res["acked"], len(res["calls"]))
    before = [dt for dt, node in res["calls"] if node != "eu-west-0"]
    after = [dt for dt, node in res["calls"] if node == "eu-west-0"]
    assert len(before) >= 5, f"only {len(before)} calls before the move"
    p50_before = statistics.median(before[-30:])
    p50_after = statistics.median(after[5:])
    rtt = topo.rtt_ms("us-east", "eu-west") / 1000
    print(f"moved after {res['moved_after_s']:.1f} s; p50 before {p50_before * 1000:.1f} ms, "
          f"after {p50_after * 1000:.1f} ms (RTT {rtt * 1000:.0f} ms)")
    assert p50_before - p50_after >= rtt * 0.9, \
        f"p50 dropped by only {(p50_before - p50_after) * 1000:.1f} ms (RTT {rtt * 1000:.0f} ms)"


@pytest.mark.timeout(150)
async def test_source_crash_after_transfer_keeps_one_owner_with_all_writes(
    make_netns_cluster,
) -> None:
    cluster = await make_netns_cluster(regions=("us-east", "eu-west"),
                                       placement_args=("--rebalance", "false"))
    topo = cluster.topo
    name = "crash-after-transfer"
    first = await cluster.run_client(topo.ns("us-east"), "call", region="us-east",
                                     binding="ACC", name=name, method="add", times=20)
    acked = first["results"][-1]
    assert acked == 20 and first["owner"] == "us-east-0", first
    src, dst = cluster.node_by_id(first["owner"]), cluster.node_by_id("eu-west-0")
    await cluster.stop_node(src)
    await cluster.start_node(src, env={"DURO_MIGRATION_FAULT": "after_transfer"})
    await cluster.run_client(topo.hub, "registered", node=cluster.nodes[src].name)
    res = await cluster.run_client(topo.ns("us-east"), "migrate", binding="ACC", name=name,
                                   to_node=cluster.nodes[dst].name)
    assert res.get("outcome") in ("error", "aborted", "released"), res
    proc = cluster.nodes[src].proc
    assert proc is not None
    code = await asyncio.wait_for(proc.wait(), 30)
    log = cluster.nodes[src].log_path.read_text()
    assert code == 137 and "DURO_MIGRATION_FAULT: exiting at after_transfer" in log, \
        f"the source did not crash after the transfer (exit {code}, migrate {res})"
    await cluster.start_node(src)
    out = await cluster.run_client(topo.ns("eu-west"), "settle", region="eu-west",
                                   binding="ACC", name=name, acked=acked,
                                   nodes=cluster.node_addresses(), wait=40,
                                   timeout=120)
    print(f"migrate: {res}; after the restart: {out}")
    assert "error" not in out, out
    assert len(out["serving"]) == 1, out
    assert out["value"] == acked, out
    assert out["add_after"] == acked + 1, out
