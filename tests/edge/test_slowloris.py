"""Slowloris: 1,100 half-sent requests against an edge that may open 1,024 files.

Before the limits, every slow connection was kept forever: the edge ran out of descriptors,
``accept`` failed, and new clients hung. Now the edge holds at most ``max_connections`` (by
default its open-file limit less 256), answers a connection beyond that with a clear 503, and
closes a connection whose request head is not complete within ``header_timeout``: new clients
get an answer all along, and are served again once the slow ones are gone.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

import aiohttp
import pytest
import pytest_asyncio

from duro.dev import LocalCluster
from tests.edge.conftest import EXAMPLES, stop_cluster
from tests.helpers.tls import cluster_tls_kwargs

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(150)]

EDGE_FILES = 1024
SLOW = 1100
HEADER_TIMEOUT = 4.0

# Run the edge with RLIMIT_NOFILE = 1024 (soft and hard: it cannot raise it).
_LIMITED = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({EDGE_FILES}, {EDGE_FILES})); "
            "sys.argv[0] = 'duro'; runpy.run_module('duro.cli', run_name='__main__')")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * SLOW:  # this test's own side of the 1,100 connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16 * SLOW), hard))
    c = LocalCluster(tmp_path_factory.mktemp("edge-slowloris"), app=EXAMPLES,
                     regions=("us-east",), replicas=1, etcd_no_fsync=True,
                     edge_args=("--header-timeout", str(HEADER_TIMEOUT), "--no-access-log"),
                     **cluster_tls_kwargs())
    args = c.edges[0].args
    i = args.index("duro.cli")
    assert args[i - 1] == "-m" and args[i - 2] == sys.executable
    args[i - 1:i + 1] = ["-c", _LIMITED]
    await c.start()
    yield c
    await stop_cluster(c)


async def slow_client(host: str, port: int, stop: asyncio.Event) -> str:
    """One half-sent request, a header line a second: 'refused' (503), 'closed', or 'open'."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return "connect failed"
    try:
        writer.write(b"GET /counter/slow/get HTTP/1.1\r\nHost: x\r\n")
        i = 0
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except asyncio.TimeoutError:
                writer.write(f"X-Slow-{i}: 1\r\n".encode())
                i += 1
                continue
            if data.startswith(b"HTTP/1.1 503"):
                assert b'"overloaded"' in data and b"maximum of connections" in data, data
                return "refused"
            assert not data, data  # nothing but a 503 or the end
            return "closed"
        return "open"
    except ConnectionError:
        return "closed"
    finally:
        writer.close()


async def one_request(url: str, timeout: float) -> tuple[int, float]:
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(url) as r:
            if r.status == 503:
                assert (await r.json())["error"]["code"] == "overloaded"
            return r.status, time.monotonic() - t0


async def test_slow_connections_cannot_exhaust_the_edge(cluster):
    url = cluster.edge_url(0)
    host, port = url.removeprefix("http://").split(":")
    assert (await one_request(f"{url}/counter/fresh/increment", 10))[0] == 200
    stop = asyncio.Event()
    t0 = time.monotonic()
    clients = [asyncio.ensure_future(slow_client(host, int(port), stop)) for _ in range(SLOW)]
    try:
        await asyncio.sleep(1.0)
        # While the slow ones hold the edge, a new client gets an answer at once: 503 (beyond
        # the cap) or 200, never a hang or a refused connection.
        during = [await one_request(f"{url}/counter/fresh/get", 5) for _ in range(3)]
        assert all(s in (200, 503) and dt < 5 for s, dt in during), during
        # The slow ones are closed on the deadline (or were refused at once).
        outcomes = await asyncio.wait_for(asyncio.gather(*clients), HEADER_TIMEOUT + 20)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    elapsed = time.monotonic() - t0
    refused, closed = outcomes.count("refused"), outcomes.count("closed")
    assert refused + closed == SLOW, {o: outcomes.count(o) for o in set(outcomes)}
    # (at most 1,024 - 256 held, the rest refused; a burst of refusals beyond 128 at once is
    # dropped without its 503, which counts as closed)
    assert refused >= 100 and closed >= 500, (refused, closed)
    assert elapsed < HEADER_TIMEOUT + 15
    # Served again, and the edge is healthy and counted what it did.
    status, dt = await one_request(f"{url}/counter/fresh/increment", 10)
    assert status == 200 and dt < 5
    async with aiohttp.ClientSession() as http:
        async with http.get(cluster.edge_admin_url(0) + "/metrics") as r:
            text = await r.text()
    assert 'duro_edge_refused_total{reason="connections"}' in text
    assert 'duro_edge_refused_total{reason="header_timeout"}' in text
