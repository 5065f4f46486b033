"""RFC 6455 §5.1 through the real listener: a client frame that is not masked fails the
connection with close code 1002, and the object hears it; masked frames around it work."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from duro.client import connect
from tests.edge.test_ws_frames import TEXT, frame

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]


async def upgrade(url: str, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (unmasked, server) frame: (opcode, payload)."""
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 10)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    assert not b1 & 0x80, "a server frame must not be masked"
    return b0 & 0x0F, await reader.readexactly(n)


async def room_stats(cluster, name: str) -> dict:
    async with connect(etcd=cluster.etcd.endpoint, app=cluster.app, region="us-east") as c:
        return await c.namespace("ROOM").get_by_name(name).stats()


async def test_an_unmasked_client_frame_closes_with_1002(room_cluster):
    url = room_cluster.edge_url(0)
    reader, writer = await upgrade(url, "/room/masking/ws?i=7")
    writer.write(frame(TEXT, b"hello"))  # masked: echoed
    assert await read_frame(reader) == (0x1, b"hello")
    writer.write(frame(TEXT, b"not masked", masked=False) + frame(TEXT, b"after"))
    op, payload = await read_frame(reader)
    assert op == 0x8, (op, payload)  # a close frame, not the echo of either message
    assert int.from_bytes(payload[:2], "big") == 1002
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and the connection ends
    except ConnectionError:
        pass
    writer.close()

    async def heard() -> dict:
        return (await room_stats(room_cluster, "masking"))["closes"]

    for _ in range(100):
        closes = await heard()
        if "7" in closes:
            break
        await asyncio.sleep(0.1)
    assert closes["7"][0] == 1002 and "unmasked client frame" in closes["7"][1], closes

    # Everyone else is unaffected: a well-behaved client on the same object.
    reader, writer = await upgrade(url, "/room/masking/ws?i=8")
    writer.write(frame(TEXT, b"count"))
    op, payload = await read_frame(reader)
    assert op == 0x1 and json.loads(payload)["n"] == 1
    writer.close()
