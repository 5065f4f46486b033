"""The edge's public port against a hostile HTTP client: every limit is a clear error, nothing is
lost, and the edge keeps serving everyone else (docs/security.md, "The edge's limits").

One edge with short deadlines and a small new-objects budget, in front of the examples.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest
import pytest_asyncio

from tests.cluster.conftest import metric
from tests.edge.conftest import EXAMPLES, start_cluster, stop_cluster
from tests.helpers.proc import rss_mib

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]

MiB = 1024 * 1024
RATE, BURST = 0.5, 8


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    c = await start_cluster(
        tmp_path_factory.mktemp("edge-hostile"), app=EXAMPLES, regions=("us-east",), replicas=1,
        edge_args=("--header-timeout", "2", "--idle-timeout", "4", "--body-timeout", "2",
                   "--body-min-rate", "10000",
                   "--max-requests", "32", "--new-objects-per-second", str(RATE),
                   "--new-objects-burst", str(BURST), "--no-access-log"))
    yield c
    await stop_cluster(c)


def hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*hostport(url))


async def read_answer(reader: asyncio.StreamReader, timeout: float) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 answer; (0, b"") if the edge closed without one."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await asyncio.wait_for(reader.readexactly(length), timeout)


async def closed_by_edge(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except ConnectionError:
        pass
    return True


async def directory_created(cluster) -> float:
    return sum([await metric(n.ready["metrics_port"], "duro_directory_created_total")
                for n in cluster.nodes if n.running])


async def test_a_name_that_is_not_utf8_is_400_never_another_name(cluster):
    url = cluster.edge_url(0)
    before = await directory_created(cluster)
    async with aiohttp.ClientSession() as http:
        for name in ("x%ff", "x%fe", "%c3%28", "%ed%a0%80"):  # invalid bytes, a surrogate
            async with http.get(f"{url}/counter/{name}/increment") as r:
                body = await r.json()
                assert r.status == 400, (name, body)
                assert body["error"]["code"] == "invalid_argument"
                assert "UTF-8" in body["error"]["message"]
        assert await directory_created(cluster) == before  # nothing was created
        # A valid percent-encoded name is the name it spells.
        async with http.get(f"{url}/counter/%C3%A9t%C3%A9/increment") as r:
            assert r.status == 200 and json.loads(await r.text()) == {"value": 1}
        async with http.get(f"{url}/counter/été/increment") as r:
            assert r.status == 200 and json.loads(await r.text()) == {"value": 2}


async def test_health_and_metrics_are_only_on_the_admin_listener(cluster):
    url, admin = cluster.edge_url(0), cluster.edge_admin_url(0)
    assert hostport(url)[1] != hostport(admin)[1]
    async with aiohttp.ClientSession() as http:
        for path in ("/_duro/health", "/_duro/metrics", "/health", "/metrics"):
            async with http.get(url + path) as r:
                text = await r.text()
                assert r.status == 404, (path, r.status)
                assert "duro_edge" not in text and "127.0.0.1" not in text
        async with http.get(admin + "/health") as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "serving" and body["nodes"]
        async with http.get(admin + "/metrics") as r:
            text = await r.text()
            assert r.status == 200
            for name in ("duro_edge_http_requests_total", "duro_edge_http_connections",
                         "duro_edge_refused_total", "duro_edge_websocket_in_flight_bytes"):
                assert name in text, name
        async with http.post(admin + "/health") as r:
            assert r.status == 405


async def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closes(cluster):
    url = cluster.edge_url(0)
    reader, writer = await raw(url)
    t0 = time.monotonic()
    writer.write(b"POST /counter/slowbody/increment HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: 100000\r\n\r\n" + b"a" * 10)
    status, body = await read_answer(reader, 15)
    assert status == 408 and json.loads(body)["error"]["code"] == "timeout"
    assert 1.5 < time.monotonic() - t0 < 10
    assert await closed_by_edge(reader, 15)
    writer.close()


async def test_a_head_that_does_not_arrive_is_closed_on_deadline(cluster):
    url = cluster.edge_url(0)

    async def trickled(writer: asyncio.StreamWriter) -> asyncio.Future:
        async def trickle() -> None:  # a header line every half second: never idle, never done
            i = 0
            while True:
                await asyncio.sleep(0.5)
                writer.write(f"X-Slow-{i}: 1\r\n".encode())
                i += 1
        return asyncio.ensure_future(trickle())

    # The first head of a connection: 2 s from the connection's start.
    reader, writer = await raw(url)
    t0 = time.monotonic()
    writer.write(b"GET /counter/slowhead/get HTTP/1.1\r\nHost: x\r\n")
    t = await trickled(writer)
    try:
        assert await closed_by_edge(reader, 15)
    finally:
        t.cancel()
        writer.close()
    assert 1.5 < time.monotonic() - t0 < 8
    # A later head on a kept-alive connection: 2 s from its first byte.
    reader, writer = await raw(url)
    writer.write(b"GET /counter/slowhead/get HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader, 10))[0] == 200
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    writer.write(b"GET /counter/slowhead/get HTTP/1.1\r\n")
    t = await trickled(writer)
    try:
        assert await closed_by_edge(reader, 15)
    finally:
        t.cancel()
        writer.close()
    assert 1.5 < time.monotonic() - t0 < 8
    # A kept-alive connection that sends nothing more: closed after idle_timeout (4 s).
    reader, writer = await raw(url)
    writer.write(b"GET /counter/slowhead/get HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader, 10))[0] == 200
    t0 = time.monotonic()
    assert await closed_by_edge(reader, 15)
    assert 3.5 < time.monotonic() - t0 < 10
    writer.close()


async def test_requests_beyond_the_cap_get_503_and_the_edge_recovers(cluster):
    url = cluster.edge_url(0)
    held = []
    for _ in range(32):  # each holds a request slot: its body never comes (408 after 2 s)
        reader, writer = await raw(url)
        writer.write(b"POST /counter/cap/increment HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n")
        held.append((reader, writer))
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/counter/cap/get") as r:
            body = await r.json()
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert body["error"]["code"] == "overloaded" and body["error"]["retryable"]
            assert "maximum of requests" in body["error"]["message"]
        for reader, writer in held:
            status, _ = await read_answer(reader, 15)
            assert status == 408
            writer.close()
        async with http.get(f"{url}/counter/cap/get") as r:
            assert r.status == 200


async def test_concurrent_big_bodies_are_bounded(cluster):
    """Eight concurrent 15 MiB bodies, three times: the edge answers each 200 or 503 (its budget
    of body bytes in flight is 64 MiB) and its memory stays bounded and is given back."""
    url = cluster.edge_url(0)
    pid = cluster.edges[0].proc.pid
    before = rss_mib(pid)
    body = b"x" * (15 * MiB)
    statuses = []
    async with aiohttp.ClientSession() as http:
        async def post() -> int:
            async with http.post(f"{url}/counter/bodies/increment", data=body) as r:
                if r.status == 503:
                    err = (await r.json())["error"]
                    assert err["code"] == "overloaded" and "body bytes" in err["message"]
                else:
                    await r.read()
                return r.status

        peak = 0.0
        for _ in range(3):
            statuses += await asyncio.gather(*(post() for _ in range(8)))
            peak = max(peak, rss_mib(pid))
    await asyncio.sleep(1.0)
    after = rss_mib(pid)
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 3, statuses
    assert peak - before < 400, (before, peak, after)
    assert after - before < 150, (before, peak, after)


async def test_many_first_calls_to_one_new_object_cost_one_token(cluster):
    """A burst of first calls to one new object (a thousand clients' first WebSockets to one
    room) is one creation: it takes one token, not one per call. From a client address of its
    own (127.0.0.2), so that its bucket starts full."""
    host, port = hostport(cluster.edge_url(0))
    me = ("127.0.0.2", 0)

    async def get(name: str, n: int) -> list[int]:
        conns = [await asyncio.open_connection(host, port, local_addr=me) for _ in range(n)]
        request = f"GET /counter/{name}/get HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for _, writer in conns:  # all connected first, so the requests arrive together
            writer.write(request)
        statuses = [(await read_answer(reader, 15))[0] for reader, _ in conns]
        for _, writer in conns:
            writer.close()
        return statuses

    tag = uuid.uuid4().hex[:6]
    assert await get(f"crowd-{tag}", 3 * BURST) == [200] * (3 * BURST)
    # The crowd took one token: the rest of the burst still creates.
    for i in range(BURST - 1):
        assert await get(f"after-crowd-{tag}-{i}", 1) == [200], i


async def test_creating_objects_faster_than_the_limit_gets_429_and_creates_nothing(cluster):
    url = cluster.edge_url(0)
    tag = uuid.uuid4().hex[:6]
    before = await directory_created(cluster)
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as http:
        created, refused = [], []
        for i in range(BURST + 30):
            name = f"new-{tag}-{i}"
            async with http.get(f"{url}/counter/{name}/increment") as r:
                if r.status == 200:
                    created.append(name)
                    continue
                body = await r.json()
                assert r.status == 429, (r.status, body)
                assert body["error"]["code"] == "rate_limited" and body["error"]["retryable"]
                assert "too many new objects" in body["error"]["message"]
                assert int(r.headers["Retry-After"]) >= 1
                refused.append(name)
        # Objects that exist are never refused, even with the bucket empty.
        for name in created:
            async with http.get(f"{url}/counter/{name}/get") as r:
                assert r.status == 200 and json.loads(await r.text()) == {"value": 1}
        elapsed = time.monotonic() - t0
        # At most the burst and the rate since; every refused one created nothing.
        assert len(refused) >= 20 and 1 <= len(created) <= BURST + RATE * elapsed + 1
        assert await directory_created(cluster) == before + len(created)
        # The bucket refills: creation resumes.
        for _ in range(20):
            async with http.get(f"{url}/counter/{refused[0]}/increment") as r:
                if r.status == 200:
                    assert json.loads(await r.text()) == {"value": 1}
                    break
                await asyncio.sleep(0.5)
        else:
            raise AssertionError("creation did not resume")
        assert await directory_created(cluster) == before + len(created) + 1
    # The admin listener counts the refusals.
    async with aiohttp.ClientSession() as http:
        async with http.get(cluster.edge_admin_url(0) + "/metrics") as r:
            text = await r.text()
    assert 'duro_edge_refused_total{reason="new_objects"}' in text
