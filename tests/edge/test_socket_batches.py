"""Big WebSocket messages from many sockets at once: the edge-node stream keeps flowing.

Every socket an edge holds on a node shares one gRPC stream. The edge once sent everything
queued as one message; a few ~30 MiB messages from several sockets at once exceeded gRPC's
64 MiB message limit, the write failed, the frames were put back and resent in the same
too-big message forever, and every socket on that node stalled. The edge now cuts its queue
by bytes (``duro._socket_batches``) and counts its flow-control windows in bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import aiohttp
import pytest
import pytest_asyncio

from tests.edge.conftest import TEST_APP, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(180)]

MiB = 1024 * 1024
BIG = 30 * MiB
SENDERS = 6
ROUNDS = 2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    # One node: every socket of the test is on the same edge-node stream.
    c = await start_cluster(tmp_path_factory.mktemp("edge-batches"), app=TEST_APP,
                            regions=("us-east",), replicas=1, edge_args=("--no-access-log",))
    yield c
    await stop_cluster(c)


def big_message(k: int, r: int) -> bytes:
    head = f"digest:{k}:{r}:".encode()
    return head + bytes([65 + k]) * (BIG - len(head))


async def test_big_messages_from_many_sockets_all_arrive_and_others_keep_flowing(cluster):
    url = cluster.edge_url(0) + "/room/batches"
    async with aiohttp.ClientSession() as http:
        small = await http.ws_connect(f"{url}/ws?i=100")
        bigs = [await http.ws_connect(f"{url}/ws?i={k}", max_msg_size=0) for k in range(SENDERS)]
        await small.send_str("warm")
        assert await asyncio.wait_for(small.receive_str(), 10) == "warm"
        done = asyncio.Event()
        got: dict[tuple[int, int], dict] = {}

        async def sender(k: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            # Each socket sends its messages back to back (no waiting for the answers), so
            # several big messages of several sockets are queued at the edge at once.
            want = {}
            for r in range(ROUNDS):
                data = big_message(k, r)
                want[r] = hashlib.sha256(data).hexdigest()
                await ws.send_bytes(data)
                del data
            for _ in range(ROUNDS):
                msg = json.loads(await asyncio.wait_for(ws.receive_str(), 90))
                assert msg["type"] == "digest" and msg["len"] == BIG, msg
                r = [r for r, h in want.items() if h == msg["sha256"]]
                assert r, f"socket {k}: a message arrived altered: {msg}"
                got[(k, r[0])] = msg

        async def chatter() -> list[float]:
            # A small socket on the same node keeps getting answers while the big ones flow.
            delays = []
            i = 0
            while not done.is_set():
                t0 = time.monotonic()
                await small.send_str(f"ping-{i}")
                assert await asyncio.wait_for(small.receive_str(), 15) == f"ping-{i}"
                delays.append(time.monotonic() - t0)
                i += 1
                await asyncio.sleep(0.05)
            return delays

        chat = asyncio.ensure_future(chatter())
        try:
            await asyncio.wait_for(
                asyncio.gather(*(sender(k, ws) for k, ws in enumerate(bigs))), 150)
        finally:
            done.set()
        delays = await chat
        assert sorted(got) == [(k, r) for k in range(SENDERS) for r in range(ROUNDS)]
        assert delays and max(delays) < 15
        # The stream is still healthy afterwards: every socket still works.
        for ws in (small, *bigs):
            await ws.send_str("after")
            assert await asyncio.wait_for(ws.receive_str(), 15) == "after"
            await ws.close()
