"""``duro.node.server`` against a real grpc.aio server on 127.0.0.1 and a fake host.

The fake host stands in for the runtime's ``ObjectHost``: per-object counters, an arrival log (the
order in which calls reach ``invoke``, i.e. admission order), sleeps, gates, and every error kind.
Set ``DURO_TEST_UVLOOP=1`` to run these tests on uvloop.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from grpc import aio

from duro import _codec
from duro._namespace import Call, CallKind, Namespace
from duro._pb import node_pb2, node_pb2_grpc
from duro._wire import RedirectError
from duro.client.connection import NodeConnection
from duro.errors import (
    BrokenStubError,
    CallTimeoutError,
    DuroError,
    FencedError,
    InvalidArgumentError,
    InvalidIdError,
    InvalidValueError,
    MethodNotFoundError,
    ObjectError,
    ObjectResetError,
    OverloadedError,
    UnavailableError,
)
from duro.node.server import HealthStatus, NodeGrpcServer, ServerStatus

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("plaintext")]  # in-process, no TLS

if os.environ.get("DURO_TEST_UVLOOP"):
    import uvloop

    @pytest.fixture(scope="module")
    def event_loop_policy() -> Any:
        return uvloop.EventLoopPolicy()


def oid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def rpc(method: str, *args: Any, obj: int = 1, **kwargs: Any) -> Call:
    return Call(
        binding="COUNTER",
        object_id=oid(obj),
        kind=CallKind.RPC,
        method=method,
        payload=_codec.encode([list(args), kwargs]),
    )


ERRORS: dict[str, BaseException] = {
    "invalid_argument": InvalidArgumentError("bad argument"),
    "invalid_id": InvalidIdError("bad id"),
    "invalid_value": InvalidValueError("bad value"),
    "method_not_found": MethodNotFoundError("no method nope"),
    "object_error": ObjectError("boom", remote_type="KeyError"),
    "overloaded": OverloadedError("too many queued events"),
    "object_reset": ObjectResetError("constructor failed"),
    "unavailable": UnavailableError("lease lost"),
    "fenced": FencedError("epoch 3 is stale"),
    "timeout": CallTimeoutError("deadline passed"),
    "broken_stub": BrokenStubError("stub broke"),
    "redirect": RedirectError(node_id="n2", address="127.0.0.1:7002", epoch=9),
    "user_exception": ValueError("user code raised"),
    "custom_retryable": DuroError("custom", retryable=True),
}


class FakeHost:
    """An in-memory stand-in for ``ObjectHost.invoke``."""

    def __init__(self) -> None:
        self.counters: dict[bytes, int] = {}
        self.arrivals: list[tuple[bytes, Any]] = []
        self.running = 0
        self.max_running = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    async def invoke(self, call: Call) -> bytes:
        # Everything up to the first await is "admission": record the arrival order there.
        args, kwargs = _codec.decode(call.payload)
        self.arrivals.append((call.object_id, args[0] if args else None))
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            return await self._run(call, args, kwargs)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
            self.finished += 1

    async def _run(self, call: Call, args: list[Any], kwargs: dict[str, Any]) -> bytes:
        m = call.method
        if m == "add":
            value = self.counters.get(call.object_id, 0) + args[0]
            self.counters[call.object_id] = value
            return _codec.encode(value)
        if m == "echo":
            return _codec.encode([args, kwargs, call.caller_region, call.location_hint])
        if m == "sleep":
            await asyncio.sleep(args[0])
            return _codec.encode(args[1] if len(args) > 1 else None)
        if m == "record":
            return _codec.encode(args[0])
        if m == "gated":
            await self.gate.wait()
            return _codec.encode(args[0])
        if m == "fail":
            raise ERRORS[args[0]]
        raise MethodNotFoundError(f"no method {m!r}")


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
async def server(host: FakeHost) -> Any:
    srv = NodeGrpcServer(host, "127.0.0.1:0")
    await srv.start()
    yield srv
    await srv.stop(grace=1.0)


@pytest.fixture
async def conn(server: NodeGrpcServer) -> Any:
    c = NodeConnection(server.address)
    yield c
    await c.close()


async def call_value(conn: NodeConnection, call: Call, **kw: Any) -> Any:
    return _codec.decode(await conn.invoke(call, **kw))


# -- correctness under concurrency ---------------------------------------------------------------


async def test_start_binds_free_port(server: NodeGrpcServer) -> None:
    assert server.status is ServerStatus.RUNNING
    assert server.port > 0
    assert server.address == f"127.0.0.1:{server.port}"


async def test_many_concurrent_callers(conn: NodeConnection, host: FakeHost) -> None:
    callers, per_caller = 64, 32  # 2,048 calls
    shared = 10_000

    async def caller(i: int) -> list[int]:
        got = []
        for _ in range(per_caller):
            got.append(await call_value(conn, rpc("add", 1, obj=i)))
            await call_value(conn, rpc("add", 1, obj=shared))
        return got

    results = await asyncio.gather(*(caller(i) for i in range(callers)))
    for got in results:
        assert got == list(range(1, per_caller + 1))
    assert host.counters[oid(shared)] == callers * per_caller


async def test_results_out_of_order_are_matched_by_seq(conn: NodeConnection) -> None:
    delays = [0.2, 0.15, 0.1, 0.05, 0.0]
    tasks = [
        asyncio.ensure_future(call_value(conn, rpc("sleep", d, i, obj=i)))
        for i, d in enumerate(delays)
    ]
    done_order: list[int] = []
    for fut in asyncio.as_completed(tasks):
        done_order.append(await fut)
    assert done_order == [4, 3, 2, 1, 0]  # completed in reverse ...
    assert [t.result() for t in tasks] == [0, 1, 2, 3, 4]  # ... each matched to its own call


async def test_calls_made_in_one_loop_turn_are_admitted_in_order(
    conn: NodeConnection, host: FakeHost
) -> None:
    # All made without an await in between: one CallBatch, one object.
    futs = [asyncio.ensure_future(conn.invoke(rpc("record", i))) for i in range(300)]
    await asyncio.gather(*futs)
    assert [a for _, a in host.arrivals] == list(range(300))


async def test_calls_across_loop_turns_are_admitted_in_order(
    conn: NodeConnection, host: FakeHost
) -> None:
    futs = []
    for i in range(200):
        futs.append(asyncio.ensure_future(conn.invoke(rpc("record", i))))
        if i % 7 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*futs)
    assert [a for _, a in host.arrivals] == list(range(200))


async def test_stub_over_connection_keeps_call_order(conn: NodeConnection, host: FakeHost) -> None:
    ns = Namespace("COUNTER", "Counter", conn, caller_region="eu-west")
    stub = ns.get_by_name("a")
    futs = [stub.record(i) for i in range(50)]
    assert await asyncio.gather(*futs) == list(range(50))
    assert [a for _, a in host.arrivals] == list(range(50))
    assert await stub.echo(1, k="v") == [[1], {"k": "v"}, "eu-west", None]


async def test_results_finished_in_one_loop_turn_share_one_result_batch(
    server: NodeGrpcServer,
) -> None:
    async with aio.insecure_channel(server.address) as channel:
        stream = node_pb2_grpc.NodeStub(channel).Stream()
        calls = [_pb_call(rpc("record", i), seq=i + 1) for i in range(50)]
        await stream.write(node_pb2.CallBatch(calls=calls))
        batch = await stream.read()
        assert sorted(r.seq for r in batch.results) == list(range(1, 51))
        await stream.done_writing()
        assert await stream.read() is aio.EOF


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ERRORS))
async def test_error_kinds_round_trip(conn: NodeConnection, kind: str) -> None:
    sent = ERRORS[kind]
    with pytest.raises(DuroError) as info:
        await conn.invoke(rpc("fail", kind))
    _assert_same_error(info.value, sent)
    # The stream survives an error answer.
    assert await call_value(conn, rpc("add", 5)) == 5


@pytest.mark.parametrize("kind", ["overloaded", "redirect", "user_exception", "fenced"])
async def test_error_kinds_round_trip_unary(server: NodeGrpcServer, kind: str) -> None:
    async with aio.insecure_channel(server.address) as channel:
        result = await node_pb2_grpc.NodeStub(channel).Invoke(_pb_call(rpc("fail", kind), seq=7))
    assert result.seq == 7 and result.HasField("error")
    from duro._wire import error_from_pb

    _assert_same_error(error_from_pb(result.error), ERRORS[kind])


def _assert_same_error(got: DuroError, sent: BaseException) -> None:
    if isinstance(sent, DuroError):
        assert type(got) is type(sent)
        assert got.code == sent.code
        assert got.message == sent.message
        assert got.retryable == sent.retryable
        assert got.overloaded == sent.overloaded
    else:  # a non-duro exception from the host becomes an object_error naming its type
        assert type(got) is ObjectError
        assert got.remote_type == type(sent).__name__
        assert got.message == str(sent)
        assert not got.retryable
    if isinstance(sent, ObjectError):
        assert isinstance(got, ObjectError) and got.remote_type == sent.remote_type
    if isinstance(sent, RedirectError):
        assert isinstance(got, RedirectError)
        assert (got.node_id, got.address, got.epoch) == ("n2", "127.0.0.1:7002", 9)
        assert got.retryable
    if isinstance(sent, OverloadedError):
        assert got.overloaded and not got.retryable


def _pb_call(call: Call, seq: int) -> node_pb2.Call:
    from duro._wire import call_to_pb

    return call_to_pb(call, seq)


MALFORMED = {
    "short_id": dict(object_id=b"\x01" * 31),
    "long_id": dict(object_id=b"\x01" * 33),
    "unknown_kind": dict(kind=7),
    "garbage_payload": dict(payload=b"\xc1\xc1\xc1"),
    "truncated_payload": dict(payload=b"\x92\x91"),
    "wrong_shape_payload": dict(payload=_codec.encode({"a": 1})),
    "private_method": dict(method="_secret"),
    "no_binding": dict(binding=""),
    "bad_fetch_payload": dict(kind=int(CallKind.FETCH), payload=_codec.encode([1, 2])),
    "bad_alarm_payload": dict(kind=int(CallKind.ALARM), payload=_codec.encode(["x"])),
}


async def test_malformed_calls_get_invalid_argument_and_stream_survives(
    server: NodeGrpcServer, host: FakeHost
) -> None:
    good = _pb_call(rpc("add", 1), seq=1000)
    bad = []
    for i, fields in enumerate(MALFORMED.values()):
        pb = _pb_call(rpc("add", 1), seq=i + 1)
        for name, value in fields.items():
            setattr(pb, name, value)
        bad.append(pb)
    async with aio.insecure_channel(server.address) as channel:
        stream = node_pb2_grpc.NodeStub(channel).Stream()
        await stream.write(node_pb2.CallBatch(calls=[*bad, good]))
        results: dict[int, node_pb2.Result] = {}
        while len(results) < len(bad) + 1:
            batch = await stream.read()
            results.update((r.seq, r) for r in batch.results)
        for i, name in enumerate(MALFORMED):
            r = results[i + 1]
            assert r.HasField("error"), name
            err = r.error
            want = ("method_not_found",) if name == "private_method" else (  # duro._methods
                "invalid_argument", "invalid_id", "invalid_value")
            assert err.code in want, (name, err)
            assert not err.retryable and err.message, name
        assert _codec.decode(results[1000].value) == 1
        # The same stream still works afterwards.
        await stream.write(node_pb2.CallBatch(calls=[_pb_call(rpc("add", 1), seq=2000)]))
        batch = await stream.read()
        assert [(r.seq, _codec.decode(r.value)) for r in batch.results] == [(2000, 2)]
        await stream.done_writing()
    assert host.started == 2  # nothing malformed reached the host


async def test_malformed_unary_call(server: NodeGrpcServer) -> None:
    pb = _pb_call(rpc("add", 1), seq=3)
    pb.object_id = b"short"
    async with aio.insecure_channel(server.address) as channel:
        result = await node_pb2_grpc.NodeStub(channel).Invoke(pb)
    assert result.seq == 3 and result.error.code == "invalid_id"
    assert "32 bytes" in result.error.message


async def test_unary_invoke_and_health(host: FakeHost) -> None:
    status = HealthStatus(node_id="n1", status="serving", active_objects=3)
    async with NodeGrpcServer(host, health=lambda: status) as srv:
        async with aio.insecure_channel(srv.address) as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            result = await stub.Invoke(_pb_call(rpc("add", 4), seq=1))
            assert _codec.decode(result.value) == 4
            health = await stub.Health(node_pb2.HealthRequest())
            assert (health.node_id, health.status, health.active_objects) == ("n1", "serving", 3)
        conn = NodeConnection(srv.address)
        got = await conn.health()
        assert (got.node_id, got.status, got.active_objects) == ("n1", "serving", 3)
        await conn.close()


async def test_default_health_reports_draining(
    server: NodeGrpcServer, conn: NodeConnection
) -> None:
    assert (await conn.health()).status == "serving"
    server.servicer.drain()
    assert (await conn.health()).status == "draining"


# -- backpressure and shutdown -------------------------------------------------------------------


async def test_in_flight_calls_per_stream_are_bounded(host: FakeHost) -> None:
    host.gate.clear()
    async with NodeGrpcServer(host, max_in_flight=4) as srv:
        conn = NodeConnection(srv.address)
        futs = [asyncio.ensure_future(call_value(conn, rpc("gated", i))) for i in range(40)]
        await _eventually(lambda: host.started == 4)
        await asyncio.sleep(0.1)
        assert host.started == 4  # the server stopped reading at the bound
        host.gate.set()
        assert await asyncio.gather(*futs) == list(range(40))
        assert host.max_running <= 4
        await conn.close()


async def test_call_bytes_in_flight_are_bounded_node_wide(host: FakeHost) -> None:
    # Two callers on two streams share one node-wide budget of argument bytes.
    host.gate.clear()
    limit = 1024 * 1024
    async with NodeGrpcServer(host, max_call_bytes_in_flight=limit) as srv:
        a, b = NodeConnection(srv.address), NodeConnection(srv.address)
        big = "x" * (800 * 1024)
        held = asyncio.ensure_future(call_value(a, rpc("gated", big)))
        await _eventually(lambda: host.started == 1)
        assert srv.servicer.call_bytes_in_flight > 800 * 1024
        # Past the budget: refused at once, retryable, not executed (the host never saw it).
        with pytest.raises(OverloadedError, match="bytes of call arguments in flight") as info:
            await b.invoke(rpc("record", "y" * (400 * 1024)))
        assert info.value.retryable and info.value.overloaded
        assert host.started == 1 and srv.servicer.refused_overloaded == 1
        # Within what is left: admitted.
        assert await call_value(b, rpc("record", "z" * (100 * 1024))) == "z" * (100 * 1024)
        host.gate.set()
        assert await held == big
        await _eventually(lambda: srv.servicer.call_bytes_in_flight == 0)
        # Once the budget is free again the refused call goes through; a call larger than the
        # whole budget is admitted when nothing else is in flight (never refused forever).
        huge = "h" * (2 * limit)
        assert await call_value(b, rpc("record", huge)) == huge
        assert srv.servicer.call_bytes_in_flight == 0
        await a.close()
        await b.close()


async def test_graceful_stop_lets_in_flight_calls_finish(host: FakeHost) -> None:
    srv = NodeGrpcServer(host)
    await srv.start()
    conn = NodeConnection(srv.address)
    futs = [asyncio.ensure_future(call_value(conn, rpc("sleep", 0.3, i, obj=i))) for i in range(10)]
    await _eventually(lambda: host.started == 10)
    t0 = time.monotonic()
    await asyncio.gather(srv.stop(grace=5.0), srv.stop(grace=5.0))  # idempotent, concurrent
    assert time.monotonic() - t0 < 3.0
    assert srv.status is ServerStatus.STOPPED
    assert await asyncio.gather(*futs) == list(range(10))
    assert host.cancelled == 0
    with pytest.raises(UnavailableError) as info:
        await conn.invoke(rpc("add", 1))
    assert info.value.retryable
    await srv.stop()  # again: no-op
    await conn.close()


async def test_stop_cancels_calls_still_running_after_grace(host: FakeHost) -> None:
    srv = NodeGrpcServer(host)
    await srv.start()
    conn = NodeConnection(srv.address)
    fut = asyncio.ensure_future(conn.invoke(rpc("sleep", 30)))
    await _eventually(lambda: host.started == 1)
    t0 = time.monotonic()
    await srv.stop(grace=0.3)
    assert time.monotonic() - t0 < 3.0
    with pytest.raises(UnavailableError) as info:
        await fut
    assert info.value.retryable
    assert "may or may not have executed" in str(info.value)
    assert host.cancelled == 1 and host.running == 0
    await conn.close()


async def test_draining_node_refuses_new_calls_as_not_executed(
    server: NodeGrpcServer, host: FakeHost
) -> None:
    async with aio.insecure_channel(server.address) as channel:
        stream = node_pb2_grpc.NodeStub(channel).Stream()
        await stream.write(node_pb2.CallBatch(calls=[_pb_call(rpc("sleep", 0.3, 1), seq=1)]))
        await _eventually(lambda: host.started == 1)
        server.servicer.drain()
        await stream.write(node_pb2.CallBatch(calls=[_pb_call(rpc("add", 1), seq=2)]))
        results: dict[int, node_pb2.Result] = {}
        while True:
            batch = await stream.read()
            if batch is aio.EOF:
                break
            results.update((r.seq, r) for r in batch.results)
    assert _codec.decode(results[1].value) == 1
    assert results[2].error.code == "unavailable" and results[2].error.retryable
    assert "not executed" in results[2].error.message
    assert host.started == 1


async def test_stream_broken_mid_flight_then_new_server_on_same_port(host: FakeHost) -> None:
    srv = NodeGrpcServer(host)
    await srv.start()
    port = srv.port
    conn = NodeConnection(srv.address)
    assert await call_value(conn, rpc("add", 1)) == 1
    futs = [asyncio.ensure_future(conn.invoke(rpc("sleep", 30, obj=i))) for i in range(5)]
    await _eventually(lambda: host.started == 6)
    await srv.stop(grace=None)  # abrupt: streams cancelled at once
    for fut in futs:
        with pytest.raises(UnavailableError) as info:
            await fut
        assert info.value.retryable
        assert "may or may not have executed" in str(info.value)

    host2 = FakeHost()
    async with NodeGrpcServer(host2, f"127.0.0.1:{port}") as srv2:
        assert srv2.port == port

        async def reached() -> bool:
            try:
                return await call_value(conn, rpc("add", 7)) == 7
            except UnavailableError:
                return False

        await _eventually_async(reached, timeout=10.0)
    await conn.close()


async def test_async_with_and_stop_before_start(host: FakeHost) -> None:
    srv = NodeGrpcServer(host)
    await srv.stop()
    assert srv.status is ServerStatus.STOPPED
    async with NodeGrpcServer(host) as srv2:
        assert srv2.status is ServerStatus.RUNNING
    assert srv2.status is ServerStatus.STOPPED


async def test_binding_a_used_port_fails(server: NodeGrpcServer, host: FakeHost) -> None:
    with pytest.raises(OSError):
        await NodeGrpcServer(host, server.address).start()


# -- helpers -------------------------------------------------------------------------------------


async def _eventually(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def _eventually_async(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# -- calls from this process (the co-located edge's, through Router.local) ------------------------


@pytest.mark.parametrize("kind", sorted(ERRORS))
async def test_local_calls_answer_the_errors_a_stream_does(server: NodeGrpcServer,
                                                           conn: NodeConnection, kind: str) -> None:
    with pytest.raises(DuroError) as remote:
        await conn.invoke(rpc("fail", kind))
    with pytest.raises(DuroError) as local:
        await server.servicer.invoke_local(rpc("fail", kind))
    _assert_same_error(local.value, ERRORS[kind])
    _assert_same_error(remote.value, ERRORS[kind])
    assert _codec.decode(await server.servicer.invoke_local(rpc("add", 5))) == 5


async def test_a_local_call_outlives_its_caller_and_its_timeout(server: NodeGrpcServer,
                                                                host: FakeHost) -> None:
    host.gate.clear()
    servicer = server.servicer
    with pytest.raises(CallTimeoutError, match="may or may not have executed"):
        await servicer.invoke_local(rpc("gated", 1), 0.05)
    cancelled = asyncio.ensure_future(servicer.invoke_local(rpc("gated", 2)))
    await _eventually(lambda: host.started == 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert host.running == 2 and host.cancelled == 0  # both calls still run on the node
    assert servicer.in_flight == 2
    host.gate.set()
    await _eventually(lambda: host.finished == 2)
    assert host.cancelled == 0 and servicer.call_bytes_in_flight == 0


async def test_a_draining_node_refuses_local_calls_as_not_executed(server: NodeGrpcServer,
                                                                   host: FakeHost) -> None:
    server.servicer.drain()
    with pytest.raises(UnavailableError, match="not executed") as info:
        await server.servicer.invoke_local(rpc("add", 1))
    assert info.value.retryable and host.started == 0
