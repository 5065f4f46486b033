"""A node's Prometheus endpoint carries the cluster metrics issue 3 asks for: directory cache
hits/misses and redirects of its router, redirects it sent, lease renewals, self-fencing events,
fenced writes, and migrations."""

from __future__ import annotations

import pytest

import duro.client
from duro.client.admin import migrate
from duro.client.connection import NodeConnection
from duro._namespace import Call, CallKind
from duro import _codec
from duro._wire import RedirectError
from tests.cluster.conftest import ROOT, metric, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


async def test_cluster_metrics_are_exported(make_cluster) -> None:
    cluster = await make_cluster(regions=("us-east", "eu-west"),
                                 placement_args=("--rebalance", "false"))
    e = cluster.etcd.endpoint
    ports = {n.name: n.ready["metrics_port"] for n in cluster.nodes}
    async with duro.client.connect(etcd=e, region="us-east") as c:
        stub = c.namespace("COUNTER").get_by_name("m")
        await stub.increment()
        # A call sent to the wrong node is answered with a redirect (and counted there).
        async with NodeConnection(cluster.nodes[1].address) as conn:
            with pytest.raises(RedirectError):
                await conn.invoke(Call("COUNTER", stub.id.raw, CallKind.RPC, "get",
                                       _codec.encode([[], {}])))
        res = await migrate(e, cluster.cluster, str(ROOT / "examples"), "COUNTER", "m",
                            to_region="eu-west")
        assert res["outcome"] == "released"
    await wait_until(lambda: _positive(ports["us-east-0"], "duro_node_lease_renewals_total"), 10)
    assert await metric(ports["eu-west-0"], "duro_node_redirects_sent_total") >= 1
    assert await metric(ports["us-east-0"], "duro_migration_moves_released_total") == 1
    assert await metric(ports["eu-west-0"], "duro_migration_ingested_total") == 1
    assert await metric(ports["us-east-0"], "duro_node_serving") == 1
    # Nothing was fenced in this run: those counters are exported, and zero.
    for name in ("duro_node_self_fencings_total", "duro_node_fenced_writes_total",
                 "duro_node_calls_refused_bytes_total"):
        assert await _exported(ports["us-east-0"], name), f"{name} is not exported"
        assert await metric(ports["us-east-0"], name) == 0, name
    # Nothing is running between calls: no argument bytes held.
    assert await _exported(ports["us-east-0"], "duro_node_call_bytes_in_flight")
    assert await metric(ports["us-east-0"], "duro_node_call_bytes_in_flight") == 0
    # The node's own router made no routed call here: exported, whatever their value.
    for name in ("duro_client_directory_cache_hits_total",
                 "duro_client_directory_cache_misses_total", "duro_client_redirects_total"):
        assert await _exported(ports["us-east-0"], name), f"{name} is not exported"


async def _positive(port, name) -> bool:  # noqa: ANN001
    return await metric(port, name) > 0


async def _exported(port, name) -> bool:  # noqa: ANN001
    import asyncio
    import urllib.request

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    return any(line.startswith(name) for line in (await asyncio.to_thread(scrape)).splitlines())
