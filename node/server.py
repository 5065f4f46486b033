"""The host node's gRPC adapter: ``duro.v1.Node`` over an ``ObjectHost``.

The hot path is ``Node.Stream``, one long-lived bidirectional stream per caller connection that
carries many calls per message in each direction::

    CallBatch ──▶ reader ──▶ one task per call, created in arrival order ──▶ host.invoke(call)
                                                                                  │ done callback
    ResultBatch ◀── writer ◀── outbox (every result finished in the same loop turn) ◀┘

* **Order.** Calls are turned into tasks in the order they arrive, and asyncio starts tasks in
  creation order, so calls to one object reach the host's admission (its input gate) in the order
  the caller sent them. Results go back in completion order, matched by ``seq``.
* **Batching.** A finished call appends its result to the stream's outbox and wakes the writer; the
  writer wakes on a later loop turn and sends everything in the outbox as one ResultBatch. While a
  write is in progress results keep accumulating, so batches grow with load by themselves and no
  timer is involved (one sequential caller pays no batching delay).
* **Backpressure.** A stream holds at most ``max_in_flight`` calls, from admission until their
  result is handed to gRPC. At the bound the reader stops reading, so HTTP/2 flow control pushes
  back on the caller instead of the node queueing without limit.
* **Bytes in flight, node-wide.** Calls running on the node (all streams and unary calls) hold
  at most ``max_call_bytes_in_flight`` bytes of arguments (their encoded payloads; 256 MiB by
  default). A call that would pass it is answered at once with a retryable ``overloaded`` error
  (the edge's 503, the Gateway's ``RESOURCE_EXHAUSTED``) and not executed; a call is always
  admitted when nothing else is in flight, so one large call is never refused forever. Per-stream
  ``max_in_flight`` bounds the count; this bounds the memory many callers together can pin.
* **Calls from this process** (:meth:`NodeServicer.invoke_local`: the node's co-located edge and
  its objects' calls to objects it serves, through the Router's local shortcut) take the same
  admission (draining, the byte bound, tracking for a graceful stop, shielding from a caller that
  goes away) and answer with the same values and errors, without protobuf or a socket.
* **Bad input** (wrong id length, unknown kind, private method name, undecodable payload) is
  answered with an ``invalid_argument`` Result for that call only; the stream carries on.
* **Shutdown** (:meth:`NodeGrpcServer.stop`): stop accepting new RPCs and answer calls that still
  arrive with a retryable ``unavailable`` ("not executed"), let admitted calls finish and their
  results go out, end each stream once it is idle; after ``grace`` cancel what is left.
  A host call whose stream vanished (caller gone) runs to completion (cancelling it halfway would
  only make its outcome murkier); its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, Sequence

from grpc import aio

from duro import _tracing, tls
from duro._batched import BatchedStream
from duro._namespace import Call
from duro._pb import node_pb2, node_pb2_grpc
from duro._transport import MAX_MESSAGE_BYTES, MAX_VALUE_BYTES, server_options
from duro._wire import call_from_pb, error_from_pb, result_error, result_ok
from duro.errors import (
    CallTimeoutError,
    DuroError,
    InvalidValueError,
    OverloadedError,
    UnavailableError,
)

__all__ = [
    "Host",
    "HealthStatus",
    "NodeServicer",
    "NodeGrpcServer",
    "ServerStatus",
    "MAX_MESSAGE_BYTES",
    "server_options",
]

log = logging.getLogger("duro.node.server")

_RESULT_OVERHEAD = 64  # bytes of a Result beside its value, for cutting batches

DEFAULT_MAX_IN_FLIGHT = 2048
DEFAULT_MAX_CALL_BYTES_IN_FLIGHT = 256 * 1024 * 1024


class Host(Protocol):
    """What the server needs of the runtime (``duro.node.runtime.host.ObjectHost``)."""

    async def invoke(self, call: Call) -> bytes: ...


@dataclass(frozen=True, slots=True)
class HealthStatus:
    node_id: str = ""
    status: str = "serving"  # "serving", "fenced", "draining"
    active_objects: int = 0


HealthCallback = Callable[[], "HealthStatus | Awaitable[HealthStatus]"]


_SHUTTING_DOWN = "node is shutting down; the call was not executed"
_CANCELLED = "node stopped before the call finished; it may or may not have executed"


class NodeServicer(node_pb2_grpc.NodeServicer):
    """``duro.v1.Node`` over a host. Use it through :class:`NodeGrpcServer`."""

    def __init__(
        self,
        host: Host,
        *,
        health: HealthCallback | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_call_bytes_in_flight: int = DEFAULT_MAX_CALL_BYTES_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_call_bytes_in_flight < 1:
            raise ValueError("max_call_bytes_in_flight must be at least 1 byte")
        self.host = host
        self.max_in_flight = max_in_flight
        self.max_call_bytes_in_flight = max_call_bytes_in_flight
        self.call_bytes_in_flight = 0  # encoded payloads of the running host calls
        self.refused_overloaded = 0  # calls answered "overloaded" by the bound above
        self._health = health
        self._draining = False
        self._tasks: set[asyncio.Task[bytes]] = set()  # every running host call, all streams
        self._sessions: set[_StreamSession] = set()

    # -- RPCs ------------------------------------------------------------------------------

    async def Stream(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[node_pb2.CallBatch], context: aio.ServicerContext
    ) -> None:
        session = _StreamSession(self, context)
        self._sessions.add(session)
        try:
            await session.run(request_iterator)
        finally:
            self._sessions.discard(session)

    async def Invoke(  # noqa: N802
        self, request: node_pb2.Call, context: aio.ServicerContext
    ) -> node_pb2.Result:
        if self._draining:
            return result_error(request.seq, UnavailableError(_SHUTTING_DOWN))
        try:
            call = call_from_pb(request)
        except DuroError as exc:
            return result_error(request.seq, exc)
        return await self.run(call, request.seq, trace=request)

    async def Body(  # noqa: N802
        self, request_iterator: Any, context: aio.ServicerContext
    ) -> None:
        """One streamed HTTP body (duro.node.body_server)."""
        from duro.node.body_server import serve_body

        await serve_body(self, context)

    async def run(self, call: Call, seq: int, trace: Any = None) -> node_pb2.Result:
        """Run one call to its end and answer its Result (``Invoke``, ``Node.Body``); ``trace``
        as for ``_spawn``."""
        refused = self._refuse_bytes(len(call.payload))
        if refused is not None:
            return result_error(seq, refused)
        task = self._spawn(call, len(call.payload), trace=trace)
        try:
            # Shielded: a caller that goes away does not cut the call short (see module doc).
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise
        except BaseException:
            pass
        return _result_of(seq, task)

    async def Health(  # noqa: N802
        self, request: node_pb2.HealthRequest, context: aio.ServicerContext
    ) -> node_pb2.HealthResponse:
        status = await self.health()
        return node_pb2.HealthResponse(
            node_id=status.node_id, status=status.status, active_objects=status.active_objects
        )

    # -- control ---------------------------------------------------------------------------

    async def health(self) -> HealthStatus:
        if self._health is None:
            return HealthStatus(status="draining" if self._draining else "serving")
        status = self._health()
        if inspect.isawaitable(status):
            status = await status
        return status  # type: ignore[return-value]

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        """Host calls running now (all streams and unary calls)."""
        return len(self._tasks)

    def drain(self) -> None:
        """Refuse new calls (retryable, not executed); end each stream once it is idle."""
        self._draining = True
        for session in list(self._sessions):
            session.wake()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no host call runs; return whether that happened within ``timeout``."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            return not pending
        return True

    async def cancel_all(self) -> None:
        """Cancel every host call still running and wait for them to unwind."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def invoke_local(self, call: Call, timeout: float | None = None) -> bytes:
        """A call made in this process (docs/architecture.md, "co-located edge"): what a stream's
        call gets, minus the wire. The call must be well-formed (made by a ``Namespace``).

        It runs in a task of its own with a fresh context, as a call from a gRPC stream does (an
        object's call to another object must not run inside the caller's context). ``timeout``
        raises :class:`~duro.errors.CallTimeoutError`; the call may still run, as with a remote
        node.
        """
        if self._draining:
            raise UnavailableError(_SHUTTING_DOWN)
        size = len(call.payload)
        refused = self._refuse_bytes(size)
        if refused is not None:
            raise refused
        trace: dict[str, str] | None = None
        if _tracing.tracer is not None:  # the caller's span, across the fresh context
            trace = {}
            _tracing.inject(trace)
        task = self._spawn(call, size, fresh_context=True, trace=trace)
        if not task.done():
            # Wait on a future of our own, not on the task: a caller that goes away (cancelled)
            # or gives up (timeout) does not cut the call short (see module doc). Cheaper than
            # asyncio.shield plus asyncio.timeout, which this path paid per call.
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            task.add_done_callback(functools.partial(_wake, done))
            timer = loop.call_later(timeout, _wake, done, None) if timeout is not None else None
            try:
                await done
            finally:
                if timer is not None:
                    timer.cancel()
            if not task.done():
                raise CallTimeoutError(
                    f"no answer from this node within {timeout:g}s; the call may or may not "
                    "have executed")
        if not task.cancelled() and task.exception() is None:
            value = task.result()
            if type(value) is bytes and len(value) <= MAX_VALUE_BYTES:
                return value
        result = _result_of(0, task)  # the rare path: exactly the error a stream would carry
        if result.HasField("error"):
            raise error_from_pb(result.error)
        return result.value

    async def invoke_local_fetch(self, call: Call, body: AsyncIterator[bytes] | None,
                                 timeout: float | None = None
                                 ) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """:meth:`invoke_local` for a FETCH with streamed bodies (docs/http.md): the request's
        chunks reach the object in process, and a streamed response's body is handed over as
        ``Node.Body`` would carry it. ``timeout`` does not apply to a streamed request."""
        from duro.node.runtime.bodies import fetch_in_process

        return await fetch_in_process(
            lambda c: self.invoke_local(c, timeout if body is None else None),
            self.host.bodies, call, body)

    def _refuse_bytes(self, size: int) -> OverloadedError | None:
        """The error for a call of ``size`` payload bytes past the node-wide bound, or None."""
        used = self.call_bytes_in_flight
        if used == 0 or used + size <= self.max_call_bytes_in_flight:
            return None
        self.refused_overloaded += 1
        return OverloadedError(
            f"node has {used} bytes of call arguments in flight (limit "
            f"{self.max_call_bytes_in_flight}); this {size}-byte call was not executed; retry",
            retryable=True,  # not executed, so safe to send again (after backing off)
        )

    def _spawn(self, call: Call, size: int, fresh_context: bool = False,
               trace: Any = None) -> asyncio.Task[bytes]:
        """Run the host call in a task; ``trace`` (the Call message, or a dict of W3C trace
        headers) names the caller's span when tracing is on."""
        if _tracing.tracer is None:
            coro = self.host.invoke(call)
        else:  # tracing on: the host call in a span, a child of the caller's
            coro = _traced_invoke(self.host, call, trace)
        if fresh_context:
            task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        else:
            task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        self.call_bytes_in_flight += size
        task.add_done_callback(functools.partial(self._finished, size))
        return task

    def _finished(self, size: int, task: asyncio.Task[bytes]) -> None:
        self._tasks.discard(task)
        self.call_bytes_in_flight -= size


def _wake(fut: asyncio.Future[None], _task: object) -> None:
    if not fut.done():
        fut.set_result(None)


async def _traced_invoke(host: Host, call: Call, trace: Any) -> bytes:
    carrier = dict(trace.trace_context if isinstance(trace, node_pb2.Call) else trace or {})
    method = call.method or call.kind.name
    attrs = {"duro.binding": call.binding, "duro.method": method,
             "duro.object_id": call.object_id.hex(), "duro.caller_region": call.caller_region,
             "duro.hops": call.hops}
    with _tracing.span(f"node {call.binding}.{method}", kind="server",
                       parent=_tracing.extract(carrier), attributes=attrs):
        return await host.invoke(call)


def _result_of(seq: int, task: asyncio.Task[bytes]) -> node_pb2.Result:
    """The Result for a finished host call."""
    if task.cancelled():
        return result_error(seq, UnavailableError(_CANCELLED))
    exc = task.exception()
    if exc is None:
        value = task.result()
        if type(value) is not bytes:
            if isinstance(value, (bytearray, memoryview)):
                value = bytes(value)
            else:
                log.error("host returned %s instead of bytes", type(value).__name__)
                return result_error(
                    seq, DuroError(f"node returned {type(value).__name__}, not encoded bytes")
                )
        if len(value) > MAX_VALUE_BYTES:
            return result_error(
                seq,
                InvalidValueError(
                    f"result is {len(value)} bytes encoded; the limit is {MAX_VALUE_BYTES} bytes"
                ),
            )
        return result_ok(seq, value)
    if not isinstance(exc, DuroError):
        # The host wraps the object's exceptions itself; anything else here is a runtime bug.
        log.error("host.invoke raised a non-duro error", exc_info=exc)
    return result_error(seq, exc)


def _result_bytes(result: node_pb2.Result) -> int:
    return len(result.value) + _RESULT_OVERHEAD


class _StreamSession:
    """One ``Node.Stream`` RPC: a reader, a writer, and the calls in flight between them."""

    __slots__ = ("_servicer", "_context", "_outbox", "_in_flight", "_room", "_reading_done")

    def __init__(self, servicer: NodeServicer, context: aio.ServicerContext) -> None:
        self._servicer = servicer
        self._context = context
        self._outbox: BatchedStream[node_pb2.Result] = BatchedStream(_result_bytes)
        self._in_flight = 0  # admitted calls whose result has not been handed to gRPC yet
        self._room: asyncio.Future[None] | None = None
        self._reading_done = False

    def wake(self) -> None:
        self._outbox.wake()

    async def run(self, request_iterator: AsyncIterator[node_pb2.CallBatch]) -> None:
        reader = asyncio.ensure_future(self._read(request_iterator))
        try:
            # The stream ends when the writer does: the caller half-closed (or the node drains)
            # and every admitted call has been answered.
            await self._outbox.run(self._write, done=self._answered_all)
        except Exception as exc:  # the caller went away mid-write; nothing left to answer to
            log.debug("stream write ended: %r", exc)
        finally:
            reader.cancel()
            if not reader.done():
                await asyncio.wait([reader])
            if self._room is not None and not self._room.done():
                self._room.cancel()

    async def _read(self, request_iterator: AsyncIterator[node_pb2.CallBatch]) -> None:
        try:
            async for batch in request_iterator:
                for pb in batch.calls:
                    if self._in_flight >= self._servicer.max_in_flight:
                        self._room = asyncio.get_running_loop().create_future()
                        await self._room
                        self._room = None
                    self._admit(pb)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the RPC broke; the writer notices on its own
            log.debug("stream read ended: %r", exc)
        finally:
            self._reading_done = True
            self._outbox.wake()

    def _admit(self, pb: node_pb2.Call) -> None:
        self._in_flight += 1
        servicer = self._servicer
        if servicer.draining:
            self._outbox.send(result_error(pb.seq, UnavailableError(_SHUTTING_DOWN)))
            return
        try:
            call = call_from_pb(pb)
        except DuroError as exc:
            self._outbox.send(result_error(pb.seq, exc))
            return
        size = len(pb.payload)
        refused = servicer._refuse_bytes(size)
        if refused is not None:
            self._outbox.send(result_error(pb.seq, refused))
            return
        task = servicer._spawn(call, size, trace=pb)
        task.add_done_callback(functools.partial(self._done, pb.seq))

    def _done(self, seq: int, task: asyncio.Task[bytes]) -> None:
        self._outbox.send(_result_of(seq, task))

    def _answered_all(self) -> bool:
        # Every admitted call is answered (in_flight counts the queued results too), and no more
        # will come: the caller half-closed, or the node drains.
        return self._in_flight == 0 and (self._reading_done or self._servicer.draining)

    async def _write(self, results: list[node_pb2.Result]) -> None:
        await self._context.write(node_pb2.ResultBatch(results=results))
        self._in_flight -= len(results)
        room = self._room
        if room is not None and not room.done() and self._in_flight < self._servicer.max_in_flight:
            room.set_result(None)


class ServerStatus(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class NodeGrpcServer:
    """A grpc.aio server serving :class:`NodeServicer` on ``address`` (``host:port``; port 0
    picks a free one, see :attr:`port`). ``start()``, idempotent ``stop(grace)``, ``async with``.
    """

    def __init__(
        self,
        host: Host,
        address: str = "127.0.0.1:0",
        *,
        health: HealthCallback | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_call_bytes_in_flight: int = DEFAULT_MAX_CALL_BYTES_IN_FLIGHT,
        options: Sequence[tuple[str, int | str]] = (),
        sockets: Any = None,
        extra: Sequence[Callable[[aio.Server], None]] = (),
        tls_material: tls.TlsMaterial | None = None,
    ) -> None:
        self.servicer = NodeServicer(host, health=health, max_in_flight=max_in_flight,
                                     max_call_bytes_in_flight=max_call_bytes_in_flight)
        self._extra = list(extra)  # more services on the same port (e.g. duro.v1.Migration)
        # WebSocket frames from edges (duro.node.socket_server) when given a SocketHub.
        self.socket_servicer: Any = None
        if sockets is not None:
            from duro.node.socket_server import SocketServicer

            self.socket_servicer = SocketServicer(sockets)
        self._bind = address
        self._tls = tls_material  # mTLS and per-method rules (node/access.py); None: plaintext
        self._options = [*server_options(), *options]
        self._server: aio.Server | None = None
        self._port = 0
        self.status = ServerStatus.CREATED
        self._stopped: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` as callers should dial it (the bound port, not 0)."""
        host = self._bind.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{self._port}"

    async def start(self) -> None:
        if self.status is not ServerStatus.CREATED:
            raise RuntimeError(f"server is {self.status.value}; start() runs once")
        self._stopped = asyncio.Event()
        from duro.node.access import NODE_RULES

        server = aio.server(options=self._options,
                            interceptors=tls.authorizer(NODE_RULES, tls=self._tls))
        node_pb2_grpc.add_NodeServicer_to_server(self.servicer, server)
        if self.socket_servicer is not None:
            node_pb2_grpc.add_NodeSocketsServicer_to_server(self.socket_servicer, server)
        for add in self._extra:
            add(server)
        try:
            port = tls.add_port(server, self._bind, tls=self._tls)
        except RuntimeError as exc:
            raise OSError(f"cannot bind the node's gRPC server to {self._bind}: {exc}") from None
        if not port:
            raise OSError(f"cannot bind the node's gRPC server to {self._bind}")
        self._port = port
        await server.start()
        self._server = server
        self.status = ServerStatus.RUNNING
        log.info("node gRPC server listening on %s", self.address)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting, let admitted calls finish within ``grace`` seconds, then cancel.

        Idempotent; a second caller waits for the first stop to complete.
        """
        if self.status is ServerStatus.CREATED:
            self.status = ServerStatus.STOPPED
            return
        assert self._stopped is not None
        if self.status is not ServerStatus.RUNNING:
            await self._stopped.wait()
            return
        self.status = ServerStatus.STOPPING
        try:
            self.servicer.drain()
            if self.socket_servicer is not None:
                self.socket_servicer.close()  # socket streams never go idle by themselves
            assert self._server is not None
            wait = grace if grace else 0
            # Both in parallel: gRPC waits for the RPCs (streams end once idle) and cancels them at
            # the deadline; we wait for host calls whose stream is already gone.
            await asyncio.gather(self._server.stop(grace), self.servicer.wait_idle(wait))
            await self.servicer.cancel_all()
        finally:
            self.status = ServerStatus.STOPPED
            self._stopped.set()
            log.info("node gRPC server on %s stopped", self.address)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> NodeGrpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

