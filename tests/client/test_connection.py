"""``duro.client.connection`` against a real node server (``duro.node.server``) and a fake host.

Set ``DURO_TEST_UVLOOP=1`` to run these tests on uvloop.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator

import pytest


from duro import _codec
from duro._namespace import Call, CallKind, Namespace
from duro._pb import node_pb2
from duro.client.connection import ConnectionPool, NodeConnection
from duro.errors import (
    BrokenStubError,
    CallTimeoutError,
    InvalidValueError,
    ObjectError,
    UnavailableError,
)
from duro.node.server import NodeGrpcServer, NodeServicer

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("plaintext")]  # in-process, no TLS

if os.environ.get("DURO_TEST_UVLOOP"):
    import uvloop

    @pytest.fixture(scope="module")
    def event_loop_policy() -> Any:
        return uvloop.EventLoopPolicy()


class Host:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def invoke(self, call: Call) -> bytes:
        args, _ = _codec.decode(call.payload)
        self.seen.append(args[0] if args else None)
        if call.method == "sleep":
            await asyncio.sleep(args[0])
        if call.method == "raise":
            raise ObjectError("nope", remote_type="RuntimeError")
        return _codec.encode(args[0] if args else None)


class RecordingServicer(NodeServicer):
    """Records the seqs of every CallBatch the server reads."""

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.batches: list[list[int]] = []

    async def Stream(  # noqa: N802
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> None:
        async def recorded() -> AsyncIterator[node_pb2.CallBatch]:
            async for batch in request_iterator:
                self.batches.append([c.seq for c in batch.calls])
                yield batch

        await super().Stream(recorded(), context)


def call(method: str, arg: Any = None, obj: int = 1) -> Call:
    return Call(
        binding="COUNTER",
        object_id=obj.to_bytes(32, "big"),
        kind=CallKind.RPC,
        method=method,
        payload=_codec.encode([[arg], {}]),
    )


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
async def server(host: Host) -> Any:
    srv = NodeGrpcServer(host)
    srv.servicer = RecordingServicer(host)
    await srv.start()
    yield srv
    await srv.stop(grace=1.0)


@pytest.fixture
async def conn(server: NodeGrpcServer) -> Any:
    async with NodeConnection(server.address) as c:
        yield c


async def test_calls_made_in_one_loop_turn_travel_in_one_batch(
    server: NodeGrpcServer, conn: NodeConnection
) -> None:
    futs = [asyncio.ensure_future(conn.invoke(call("echo", i))) for i in range(100)]
    results = [_codec.decode(r) for r in await asyncio.gather(*futs)]
    assert results == list(range(100))
    batches = server.servicer.batches  # type: ignore[attr-defined]
    assert batches == [list(range(1, 101))]


async def test_sequential_calls_are_not_delayed_into_batches(
    server: NodeGrpcServer, conn: NodeConnection
) -> None:
    for i in range(20):
        assert _codec.decode(await conn.invoke(call("echo", i))) == i
    assert server.servicer.batches == [[i] for i in range(1, 21)]  # type: ignore[attr-defined]


async def test_object_errors_come_back_as_duro_errors(conn: NodeConnection) -> None:
    with pytest.raises(ObjectError) as info:
        await conn.invoke(call("raise"))
    assert info.value.remote_type == "RuntimeError" and info.value.message == "nope"
    assert conn.pending == 0


async def test_node_not_listening_fails_fast_and_retryable() -> None:
    port = _free_port()
    async with NodeConnection(f"127.0.0.1:{port}") as c:
        t0 = time.monotonic()
        with pytest.raises(UnavailableError) as info:
            await c.invoke(call("echo", 1))
        assert info.value.retryable
        assert time.monotonic() - t0 < 5.0
        assert c.pending == 0


async def test_timeout_leaves_connection_usable(conn: NodeConnection, host: Host) -> None:
    with pytest.raises(CallTimeoutError) as info:
        await conn.invoke(call("sleep", 5), timeout=0.1)
    assert "may or may not have executed" in str(info.value)
    assert conn.pending == 0
    assert _codec.decode(await conn.invoke(call("echo", 3), timeout=5)) == 3


async def test_cancelled_caller_is_forgotten(conn: NodeConnection) -> None:
    slow = asyncio.ensure_future(conn.invoke(call("sleep", 5)))
    await asyncio.sleep(0.05)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert conn.pending == 0
    assert _codec.decode(await conn.invoke(call("echo", 4))) == 4


async def test_call_cancelled_before_it_is_sent_is_not_sent(
    conn: NodeConnection, host: Host
) -> None:
    await conn.invoke(call("echo", 0))  # stream open
    # Drive the first invoke by hand, within this loop turn, up to where it waits for its
    # result (the call is in the outbox), then cancel it before the writer can run.
    first = conn.invoke(call("echo", 1))
    first.send(None)
    with pytest.raises(asyncio.CancelledError):
        first.throw(asyncio.CancelledError())
    second = asyncio.ensure_future(conn.invoke(call("echo", 2)))
    assert _codec.decode(await second) == 2
    assert host.seen == [0, 2]


async def test_close_fails_pending_calls_and_refuses_new_ones(server: NodeGrpcServer) -> None:
    conn = NodeConnection(server.address)
    fut = asyncio.ensure_future(conn.invoke(call("sleep", 5)))
    await asyncio.sleep(0.1)
    await conn.close()
    await conn.close()  # idempotent
    with pytest.raises(UnavailableError) as info:
        await fut
    assert info.value.retryable
    with pytest.raises(UnavailableError):
        await conn.invoke(call("echo", 1))


async def test_oversized_payload_is_refused_before_sending(conn: NodeConnection) -> None:
    big = call("echo")
    big.payload = bytes(64 * 1024 * 1024)
    with pytest.raises(InvalidValueError):
        await conn.invoke(big)
    assert conn.pending == 0


async def test_graceful_restart_reopens_the_stream(host: Host) -> None:
    srv = NodeGrpcServer(host)
    await srv.start()
    port = srv.port
    conn = NodeConnection(srv.address)
    assert _codec.decode(await conn.invoke(call("echo", 1))) == 1
    await srv.stop(grace=2.0)  # the idle stream is ended by the node
    async with NodeGrpcServer(Host(), f"127.0.0.1:{port}"):
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _codec.decode(await conn.invoke(call("echo", 2))) == 2
                break
            except UnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    await conn.close()


async def test_stub_over_a_dead_node_breaks(host: Host) -> None:
    conn = NodeConnection(f"127.0.0.1:{_free_port()}")
    stub = Namespace("COUNTER", "Counter", conn).get_by_name("x")
    with pytest.raises(UnavailableError):
        await stub.echo(1)
    with pytest.raises(BrokenStubError):
        await stub.echo(2)
    await conn.close()


async def test_health(conn: NodeConnection) -> None:
    health = await conn.health()
    assert health.status == "serving"


async def test_pool_keeps_one_connection_per_address(host: Host) -> None:
    async with NodeGrpcServer(host) as a, NodeGrpcServer(host) as b:
        async with ConnectionPool() as pool:
            assert pool.get(a.address) is pool.get(a.address)
            assert pool.get(a.address) is not pool.get(b.address)
            assert len(pool) == 2 and a.address in pool
            assert _codec.decode(await pool.invoke(b.address, call("echo", 9))) == 9
            conn_a = pool.get(a.address)
            await pool.discard(a.address)
            assert conn_a.closed and a.address not in pool
            conn_b = pool.get(b.address)
        assert conn_b.closed
        with pytest.raises(UnavailableError):
            pool.get(b.address)


def _free_port() -> int:
    from duro._etcd import free_port  # outside the ephemeral range: see its docstring

    return free_port()



