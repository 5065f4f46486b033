"""HTTP fidelity through a real edge and node (issue 13): repeated headers both ways (HTTP and the
Gateway's Fetch), a request body of hundreds of MiB streamed into an object with the edge's and
the node's memory bounded, server-sent events delivered as they are produced, and bodies that fail
midway; through the default route (separate edge, and an edge co-located in the node) and a worker
fetch. The in-process twin (Testbed, Headers, bodies): tests/test_http.py."""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from grpc import aio

from duro._pb import gateway_pb2
from tests.cluster.conftest import metric
from tests.edge.conftest import start_cluster, stop_cluster
from tests.helpers.proc import rss_mib

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(300)]

APP = Path(__file__).parent / "http_app"
MiB = 1024 * 1024
# The upload's size: 1 GiB by default; DURO_TEST_UPLOAD_MIB makes it smaller on a slow machine.
UPLOAD_MIB = int(os.environ.get("DURO_TEST_UPLOAD_MIB", "1024"))
BODY_TIMEOUT = 3.0  # seconds of waiting for a client before 408 (plus 1 s per 8 MiB received)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    c = await start_cluster(
        tmp_path_factory.mktemp("http-bodies"), app=APP, regions=("us-east",), replicas=1,
        edge_args=("--no-access-log", "--max-body-bytes", str(4096 * MiB),
                   "--body-timeout", str(BODY_TIMEOUT), "--body-min-rate", str(8 * MiB)))
    yield c
    await stop_cluster(c)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(cluster):
    async with aiohttp.ClientSession(cluster.edge_url(0),
                                     timeout=aiohttp.ClientTimeout(total=240)) as s:
        yield s


async def test_repeated_headers_reach_the_object_and_the_client(http):
    headers = aiohttp.client.CIMultiDict([("X-Multi", "one"), ("X-Multi", "two")])
    async with http.get("/mirror/h/headers", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"joined": "one, two", "all": ["one", "two"], "streamed": False}
        assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert r.headers.getall("X-Multi") == ["one", "two"]
        assert {c.key: c.value for c in r.cookies.values()} == {"a": "1", "b": "2"}


async def test_repeated_headers_through_the_gateway_fetch(cluster):
    token = (("authorization", f"Bearer {cluster.gateway_token}"),)
    async with aio.insecure_channel(cluster.edges[0].ready["grpc"]) as ch:
        fetch = ch.unary_unary("/duro.v1.Gateway/Fetch",
                               request_serializer=gateway_pb2.FetchRequest.SerializeToString,
                               response_deserializer=gateway_pb2.FetchResponse.FromString)
        r = await fetch(gateway_pb2.FetchRequest(
            binding="MIRROR", name="g", url="/mirror/g/headers",
            headers=[gateway_pb2.HttpHeader(name="X-Multi", value="one"),
                     gateway_pb2.HttpHeader(name="x-multi", value="two")]),
            metadata=token, timeout=30)
        assert not r.HasField("error"), r.error
        assert json.loads(r.body) == {"joined": "one, two", "all": ["one", "two"],
                                      "streamed": False}
        pairs = [(h.name.lower(), h.value) for h in r.headers]
        assert pairs.count(("set-cookie", "a=1; Path=/")) == 1
        assert pairs.count(("set-cookie", "b=2; Path=/")) == 1
        assert [v for k, v in pairs if k == "x-multi"] == ["one", "two"]
        # A streamed response reaches a Gateway client whole (a unary answer).
        r = await fetch(gateway_pb2.FetchRequest(binding="MIRROR", name="g", url="/mirror/g/echo",
                                                 method="POST", body=b"via the gateway"),
                        metadata=token, timeout=30)
        assert (r.status, r.body) == (200, b"via the gateway")
        r = await fetch(gateway_pb2.FetchRequest(
            binding="MIRROR", name="g", url="/", headers=[
                gateway_pb2.HttpHeader(name="Bad Name", value="v")]), metadata=token, timeout=30)
        assert r.error.code == "invalid_argument" and "header name" in r.error.message


async def test_a_large_upload_streams_with_bounded_memory(cluster, http):
    chunk = os.urandom(MiB)
    crc = 0
    for _ in range(UPLOAD_MIB):
        crc = zlib.crc32(chunk, crc)
    edge_pid, node_pid = cluster.edges[0].proc.pid, cluster.nodes[0].proc.pid
    base = {"edge": rss_mib(edge_pid), "node": rss_mib(node_pid)}
    peak = dict(base)
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak["edge"] = max(peak["edge"], rss_mib(edge_pid))
            peak["node"] = max(peak["node"], rss_mib(node_pid))
            await asyncio.sleep(0.05)

    async def upload():
        for _ in range(UPLOAD_MIB):
            yield chunk

    sampler = asyncio.ensure_future(sample())
    started = time.monotonic()
    try:
        async with http.post("/mirror/big/count", data=upload(),
                             headers={"Content-Length": str(UPLOAD_MIB * MiB)}) as r:
            body = await r.json()
    finally:
        done.set()
        await sampler
    elapsed = time.monotonic() - started
    assert r.status == 200, body
    assert body["bytes"] == UPLOAD_MIB * MiB and body["crc32"] == crc and body["streamed"]
    growth = {k: peak[k] - base[k] for k in base}
    print(f"\n{UPLOAD_MIB} MiB upload in {elapsed:.1f} s ({UPLOAD_MIB / elapsed:.0f} MiB/s); "
          f"RSS growth MiB: edge {growth['edge']:.0f}, node {growth['node']:.0f} "
          f"(base edge {base['edge']:.0f}, node {base['node']:.0f})")
    # Generous bounds: a buffered upload would grow both by the body's size (or more).
    assert growth["edge"] < 150 and growth["node"] < 150, growth


async def test_an_upload_without_length_streams_too(http):
    async def upload():
        for i in range(40):  # 40 x 64 KiB, more than the 1 MiB the edge buffers
            yield bytes([i]) * 65536

    async with http.post("/mirror/chunked/count", data=upload()) as r:
        body = await r.json()
    assert body["bytes"] == 40 * 65536 and body["streamed"] and body["chunks"] >= 2
    async with http.post("/mirror/chunked/count", data=b"small") as r:  # the fast path
        assert await r.json() == {"bytes": 5, "crc32": zlib.crc32(b"small"), "chunks": 1,
                                  "streamed": False}


async def test_an_echo_streams_back_while_the_upload_goes_on(http):
    sent = [os.urandom(256 * 1024) for _ in range(16)]

    async def upload():
        for c in sent:
            yield c

    async with http.put("/mirror/echo/echo", data=upload()) as r:
        assert r.status == 200 and "Content-Length" not in r.headers
        assert await r.read() == b"".join(sent)


async def test_server_sent_events_arrive_as_they_are_produced(http):
    async with http.get("/mirror/sse/sse?n=3") as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 30)
        assert first == b"id: 0\ndata: event 0\n\n"
        # The object's generator is waiting for `release` now: event 0 left before it finished,
        # and its write was durable first. The object answers other requests meanwhile.
        async with http.get("/mirror/sse/sent") as s:
            assert await s.json() == {"sent": 0}
        async with http.post("/mirror/sse/release") as rel:
            assert await rel.text() == "released"
        rest = await asyncio.wait_for(r.content.read(), 30)
        assert rest == b"id: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n"
    async with http.get("/mirror/sse/sent") as s:
        assert await s.json() == {"sent": 2}


async def test_a_client_that_leaves_a_stream_frees_the_object(http):
    for _ in range(3):  # each stream abandoned after its first event
        async with http.get("/mirror/gone/sse?n=2") as r:
            assert await asyncio.wait_for(r.content.readuntil(b"\n\n"), 30)
            r.close()
    # The node closes each abandoned generator (its `finally` runs), and the object serves on.
    deadline = time.monotonic() + 30
    while True:
        async with http.get("/mirror/gone/closed") as c:
            closed = (await c.json())["closed"]
        if closed == 3 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert closed == 3


async def test_a_response_that_fails_midway_is_cut_short(http):
    async with http.get("/mirror/b/broken") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_a_stalled_streamed_upload_is_answered_408(cluster):
    host, port = cluster.edge_url(0).removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /mirror/stall/count HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        part = b"x" * (2 * MiB)  # over the 1 MiB the edge buffers: the body streams
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BODY_TIMEOUT + 20)
        assert head.startswith(b"HTTP/1.1 408"), head
    finally:
        writer.close()


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(cluster):
    host, port = cluster.edge_url(0).removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /mirror/x/count HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % (4097 * MiB))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 413"), head
    finally:
        writer.close()


# -- the same through an edge co-located in the node process (calls to its own objects in process)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def colocated(tmp_path_factory):
    c = await start_cluster(tmp_path_factory.mktemp("http-colocated"), app=APP,
                            regions=("us-east",), replicas=1, colocated_edges=True)
    try:
        async with aiohttp.ClientSession(c.edge_url(0),
                                         timeout=aiohttp.ClientTimeout(total=120)) as s:
            yield c, s
    finally:
        await stop_cluster(c)


async def test_colocated_edge_streams_both_ways_in_process(colocated):
    cluster, colocated = colocated
    port = cluster.nodes[0].ready["metrics_port"]
    local_before = await metric(port, "duro_client_local_calls_total")
    headers = aiohttp.client.CIMultiDict([("X-Multi", "one"), ("X-Multi", "two")])
    async with colocated.get("/mirror/h/headers", headers=headers) as r:
        assert (await r.json())["all"] == ["one", "two"]
        assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    chunk = os.urandom(MiB)

    async def upload():
        for _ in range(12):  # 12 MiB: streamed (over 1 MiB), within the default 16 MiB limit
            yield chunk

    async with colocated.post("/mirror/up/count", data=upload()) as r:
        body = await r.json()
    assert body["bytes"] == 12 * MiB and body["streamed"]
    async with colocated.get("/mirror/sse/sse?n=2") as r:
        assert await asyncio.wait_for(r.content.readuntil(b"\n\n"), 30) == (
            b"id: 0\ndata: event 0\n\n")
        async with colocated.post("/mirror/sse/release") as rel:
            assert rel.status == 200
        assert await asyncio.wait_for(r.content.read(), 30) == b"id: 1\ndata: event 1\n\n"
    # Every one of those calls (headers, upload, sse, release) went to the node in process.
    assert await metric(port, "duro_client_local_calls_total") >= local_before + 4


# -- through a worker fetch: its Request streams, and so does the Response it returns


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tmp_path_factory):
    c = await start_cluster(tmp_path_factory.mktemp("http-worker"),
                            app=Path(__file__).parent / "http_worker_app", regions=("us-east",),
                            replicas=1, edge_args=("--no-access-log",))
    try:
        async with aiohttp.ClientSession(c.edge_url(0),
                                         timeout=aiohttp.ClientTimeout(total=120)) as s:
            yield s
    finally:
        await stop_cluster(c)


async def test_a_worker_passes_streamed_bodies_through(worker):
    async def upload():
        for _ in range(6):
            yield b"w" * MiB

    async with worker.post("/anything", data=upload()) as r:
        assert await r.text() == f"{6 * MiB} True"
        assert r.headers.getall("Set-Cookie") == ["t=1", "u=2"]
    async with worker.post("/anything", data=b"small") as r:
        assert await r.text() == "5 False"
    async with worker.get("/t/ticks") as r:
        assert await r.read() == b"tick 0\ntick 1\ntick 2\n"
    async with worker.get("/worker-stream") as r:
        assert r.headers["Content-Type"] == "text/plain"
        assert await r.read() == b"tick 0\ntick 1\n"
