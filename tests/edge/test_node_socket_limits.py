"""The node's side of the socket stream bounds what an edge may have in flight: an edge that
ignores its windows has its stream ended with RESOURCE_EXHAUSTED, one that waits for ACKs (or
UNKNOWN answers) never does. A real gRPC server and stream; the hub behind it is a stand-in
that decides when messages are handled."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio

from duro._pb import node_pb2, node_pb2_grpc
from duro._transport import EDGE_ID_METADATA
from duro.node.runtime.websockets import Frame, Op
from duro.node.socket_server import SocketServicer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

KiB = 1024
LIMIT = 1024 * KiB


class Hub:
    """Handles messages as told: ``ack`` them, answer ``unknown``, or hold them (neither)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.received: list[Frame] = []
        self.link = None

    def attach(self, edge: str, link) -> None:
        self.link = link

    def detach(self, edge: str, link) -> None:
        pass

    def receive(self, edge: str, f: Frame) -> None:
        self.received.append(f)
        if f.op is not Op.MESSAGE:
            return
        if self.mode == "ack":
            self.link.ack(f.socket_id)
        elif self.mode == "unknown":
            self.link.push(Frame(Op.UNKNOWN, f.socket_id, data=f.data, seq=f.seq))


async def stream(mode: str, messages: int, size: int):
    hub = Hub(mode)
    server = aio.server()
    node_pb2_grpc.add_NodeSocketsServicer_to_server(
        SocketServicer(hub, max_inflight_bytes=LIMIT), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = node_pb2_grpc.NodeSocketsStub(channel).Sockets(
            metadata=((EDGE_ID_METADATA, "edge-greedy"),))
        assert len((await call.read()).frames) == 0  # the stream is up
        for i in range(messages):
            await call.write(node_pb2.SocketBatch(frames=[node_pb2.SocketFrame(
                socket_id=1 + i % 3, op=node_pb2.SOCKET_OP_MESSAGE, binding="ROOM",
                object_id=b"o" * 32, data=b"m" * size, seq=i + 1)]))
        answers = []
        status = None
        try:
            while True:
                batch = await asyncio.wait_for(call.read(), 1.0)
                if batch is aio.EOF:
                    break
                answers.extend(batch.frames)
        except asyncio.TimeoutError:
            pass  # still open
        except aio.AioRpcError as exc:
            status = exc
        call.cancel()
        return hub, answers, status
    finally:
        await channel.close()
        await server.stop(0)


async def test_an_edge_past_its_bytes_in_flight_is_cut_off():
    hub, _answers, status = await stream("hold", messages=6, size=300 * KiB)
    assert status is not None and status.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "in flight" in status.details()
    # what fit was delivered, in order; nothing past the limit was
    assert [f.seq for f in hub.received] == [1, 2, 3]


@pytest.mark.parametrize("mode,op", [("ack", node_pb2.SOCKET_OP_ACK),
                                     ("unknown", node_pb2.SOCKET_OP_UNKNOWN)])
async def test_an_edge_that_gets_answers_is_never_cut_off(mode, op):
    hub, answers, status = await stream(mode, messages=20, size=300 * KiB)
    assert status is None
    assert len(hub.received) == 20
    assert {f.op for f in answers} == {op}
    if mode == "ack":
        assert sum(f.count for f in answers) == 20
    else:
        assert len(answers) == 20
