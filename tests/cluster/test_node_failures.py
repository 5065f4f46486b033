"""Node failures without replicas (``replicas = 1``, explicit): SIGKILL (lease expiry, retryable
errors, restart with every acked write) and a node partitioned from etcd (self-fencing before its
lease can expire, then serving again). With replicas, a dead node's objects fail over instead:
tests/cluster/test_failover.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from etcd3aio import Etcd3Client

import duro.client
from duro.client.connection import NodeConnection
from duro.dev import LocalCluster
from duro.errors import DuroError
from tests.cluster.conftest import MakeCluster, node_registered, wait_until
from tests.helpers.proxy import BlackholeProxy

pytestmark = [pytest.mark.cluster]


async def outcome(client: duro.client.Client, name: str, method: str = "get") -> object:
    """Call on a fresh stub; return the value, or the DuroError raised."""
    try:
        return await client.namespace("COUNTER").get_by_name(name).call(method)
    except DuroError as exc:
        return exc


@pytest.mark.timeout(120)
async def test_sigkilled_node_lease_expires_and_it_comes_back_with_every_acked_write(
    make_cluster: MakeCluster,
) -> None:
    cluster = await make_cluster(replicas=1)  # one copy: nothing to fail over to
    victim = 1  # eu-west-0, the only node of eu-west: eu-west callers' objects go there
    vid = cluster.nodes[victim].ready["node_id"]
    names = [f"k-{i}" for i in range(6)]
    acked: dict[str, int] = {}
    async with (
        duro.client.connect(etcd=cluster.etcd.endpoint, region="eu-west") as c,
        duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as other,
        cluster.etcd_client() as etcd,
    ):
        for n in names:
            for _ in range(5):
                acked[n] = await c.namespace("COUNTER").get_by_name(n).increment()
        assert {(await _where(c, n)) for n in names} == {vid}
        assert await other.namespace("COUNTER").get_by_name("elsewhere").increment() == 1
        assert await _where(other, "elsewhere") != vid

        # Keep writing while the node dies: only retryable errors, and acked ones are counted.
        stop = asyncio.Event()
        errors: list[DuroError] = []

        async def writer(name: str) -> None:
            while not stop.is_set():
                try:
                    acked[name] = await c.namespace("COUNTER").get_by_name(name).increment()
                except DuroError as exc:
                    errors.append(exc)
                    await asyncio.sleep(0.05)

        writers = [asyncio.create_task(writer(n)) for n in names[:3]]
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        await cluster.kill_node(victim)
        assert await node_registered(etcd, cluster, vid)  # its lease outlives it for a while
        expired = await wait_until(lambda: _gone(etcd, cluster, vid), timeout=cluster.lease_ttl + 3,
                                   message="the killed node's lease did not expire")
        assert expired <= cluster.lease_ttl + 2.5
        # The router has seen the node leave: its objects answer retryable errors, at once.
        await wait_until(lambda: vid not in c.invoker.nodes.nodes, timeout=5)  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*writers)
        assert errors, "no call failed while the node was down"
        assert all(e.retryable for e in errors), [e for e in errors if not e.retryable]
        for n in names:
            res = await outcome(c, n)
            assert isinstance(res, DuroError) and res.retryable is True, res
        # Other nodes' objects are unaffected.
        assert await other.namespace("COUNTER").get_by_name("elsewhere").increment() == 2
        down_for = time.monotonic() - t0

        await cluster.start_node(victim)
        await wait_until(lambda: _serves(c, names[0]), timeout=15,
                         message="restarted node does not serve its objects")
        for n in names:
            # every acknowledged increment is there; an in-doubt one (failed while dying) may be
            value = await c.namespace("COUNTER").get_by_name(n).get()
            assert value >= acked[n], (n, value, acked[n])
        for n in names[3:]:  # not written during the crash: exact
            assert await c.namespace("COUNTER").get_by_name(n).get() == acked[n]
        assert await _where(c, names[0]) == vid  # still bound to the same node (epoch 1)
        assert down_for > 0


async def _where(c: duro.client.Client, name: str) -> str:
    router = c.invoker
    oid = c.namespace("COUNTER").id_from_name(name).hex()
    entry = await router.directory.resolve(bytes.fromhex(oid), create=False)  # type: ignore[attr-defined]
    owner = router.owner_of(entry)  # type: ignore[attr-defined]
    return owner[0] if owner else ""


async def _gone(etcd: Etcd3Client, cluster: LocalCluster, node_id: str) -> bool:
    return not await node_registered(etcd, cluster, node_id)


async def _serves(c: duro.client.Client, name: str) -> bool:
    return not isinstance(await outcome(c, name), DuroError)


@pytest.mark.timeout(120)
async def test_node_partitioned_from_etcd_self_fences_before_its_lease_expires(
    make_cluster: MakeCluster,
) -> None:
    cluster = await make_cluster(regions=("us-east",), replicas=1, start=False)
    spec = cluster.nodes[0]
    async with BlackholeProxy(cluster.etcd.client_port) as proxy:
        spec.args[spec.args.index("--etcd") + 1] = proxy.address  # the node sees etcd via proxy
        await cluster.start()
        nid = spec.ready["node_id"]
        async with (
            duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c,
            cluster.etcd_client() as observer,  # NOT through the proxy
        ):
            conn = NodeConnection(spec.address)
            try:
                assert (await conn.health()).status == "serving"
                for _ in range(3):
                    await c.namespace("COUNTER").get_by_name("p").increment()
                await asyncio.sleep(0.5)

                proxy.blocked = True
                t0 = time.monotonic()
                lease_alive_when_fenced: list[bool] = []

                async def fenced() -> bool:
                    if (await conn.health()).status != "fenced":
                        return False
                    lease_alive_when_fenced.append(await node_registered(observer, cluster, nid))
                    return True

                await wait_until(fenced, timeout=cluster.lease_ttl + 3, interval=0.02,
                                 message="the partitioned node did not self-fence")
                fenced_after = time.monotonic() - t0
                # It stopped serving while etcd still held its registration (lease not expired).
                assert lease_alive_when_fenced == [True]
                assert fenced_after < cluster.lease_ttl
                # Its objects answer retryable errors, both directly and through the router.
                res = await outcome(c, "p")
                assert isinstance(res, DuroError) and res.retryable is True, res
                direct = duro.client.Client(conn, c.bindings)
                res = await outcome(direct, "p")
                assert isinstance(res, DuroError) and res.retryable is True, res
                # Later, etcd expires the lease (the node can no longer renew it).
                await wait_until(lambda: _gone(observer, cluster, nid), timeout=cluster.lease_ttl + 3,
                                 message="the partitioned node's lease did not expire")

                proxy.blocked = False  # heal
                await wait_until(lambda: _status_is(conn, "serving"), timeout=20,
                                 message="the node did not unfence after the partition healed")
                assert await node_registered(observer, cluster, nid)
                await wait_until(lambda: _serves(c, "p"), timeout=15)
                assert await c.namespace("COUNTER").get_by_name("p").get() == 3
                assert await c.namespace("COUNTER").get_by_name("p").increment() == 4
            finally:
                proxy.blocked = False
                await conn.close()


async def _status_is(conn: NodeConnection, status: str) -> bool:
    try:
        return (await conn.health()).status == status
    except DuroError:
        return False
