"""Connections to host nodes: one gRPC channel and one long-lived ``Node.Stream`` per node.

:class:`NodeConnection` is an :class:`~duro._namespace.Invoker` for a single node::

    invoke(call) ──▶ seq, future ──▶ outbox ──▶ writer: one CallBatch per wake-up ──▶ node
    future.set_result ◀── reader: match by seq ◀── ResultBatch (any order) ◀──────────┘

* **Batching.** ``invoke`` appends the call to the stream's outbox and wakes the writer; the
  writer runs on a later loop turn and sends the whole outbox as one CallBatch, so every call made
  in one loop turn travels in one message. While a write is in progress calls keep accumulating,
  so batches grow with load without a timer (a lone caller pays no batching delay).
* **Order.** One writer, one stream, seqs in call order: the node receives calls in the order
  ``invoke`` was called, and admits them in that order (see ``duro.node.server``).
* **Failure.** When the stream breaks (node gone, network, the node ending the stream on shutdown)
  every call waiting on it fails with a retryable :class:`~duro.errors.UnavailableError` that says
  whether the call may have executed; the next ``invoke`` opens a new stream on the same channel
  (gRPC reconnects the channel itself, with a short backoff).
* **Errors** the node answered with come back as the same :class:`~duro.errors.DuroError`
  (flags included), rebuilt by :mod:`duro._wire`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from grpc import aio

from duro import _tracing, tls
from duro._batched import BatchedStream
from duro._http import stream_token
from duro._namespace import Call
from duro._pb import node_pb2, node_pb2_grpc
from duro._transport import MAX_VALUE_BYTES, channel_options
from duro._wire import RedirectError, call_to_pb, error_from_pb, error_from_status
from duro.client.bodies import pull_body, send_streamed
from duro.errors import CallTimeoutError, DuroError, InvalidValueError, UnavailableError

__all__ = ["NodeConnection", "ConnectionPool", "NodeHealth"]

log = logging.getLogger("duro.client.connection")

_CALL_OVERHEAD = 128  # bytes of a Call beside its payload, for cutting batches


def _call_bytes(call: node_pb2.Call) -> int:
    return len(call.payload) + _CALL_OVERHEAD


@dataclass(frozen=True, slots=True)
class NodeHealth:
    node_id: str
    status: str  # "serving", "fenced", "draining"
    active_objects: int


class _CallStream:
    """One ``Node.Stream`` RPC: the calls waiting on it, its outbox, a reader and a writer."""

    __slots__ = (
        "address", "_rpc", "pending", "_outbox", "_abandoned", "broken", "_writer", "_reader",
        "connected",
    )

    def __init__(self, address: str, stub: node_pb2_grpc.NodeStub) -> None:
        self.address = address
        self._rpc: Any = stub.Stream()
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self._outbox: BatchedStream[node_pb2.Call] = BatchedStream(
            _call_bytes, prepare=self._unabandoned)
        self._abandoned = 0  # calls given up by their caller while possibly still in the outbox
        self.broken: DuroError | None = None
        self.connected = False  # the transport to the node was established
        self._writer = asyncio.ensure_future(self._write())
        self._reader = asyncio.ensure_future(self._read())

    def submit(self, pb: node_pb2.Call) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[pb.seq] = fut
        self._outbox.send(pb)
        return fut

    def abandon(self, seq: int) -> None:
        """The caller stopped waiting (cancelled, timed out): forget the call, and do not send it
        if it is still queued."""
        if self.pending.pop(seq, None) is not None:
            self._abandoned += 1

    def _unabandoned(self, calls: list[node_pb2.Call]) -> list[node_pb2.Call]:
        if self._abandoned:
            self._abandoned = 0
            pending = self.pending
            calls = [c for c in calls if c.seq in pending]
        return calls

    async def _write_batch(self, calls: list[node_pb2.Call]) -> None:
        await self._rpc.write(node_pb2.CallBatch(calls=calls))

    async def _write(self) -> None:
        try:
            # Nothing is written before the node is reached: if it cannot be, no call of this
            # stream was delivered, and the router may send them elsewhere (a failover).
            await self._rpc.wait_for_connection()
            self.connected = True
            await self._outbox.run(self._write_batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._break(exc)

    async def _read(self) -> None:
        read = self._rpc.read
        pending = self.pending
        try:
            while True:
                batch = await read()
                if batch is aio.EOF:
                    self._break(None)
                    return
                for r in batch.results:
                    fut = pending.pop(r.seq, None)
                    if fut is None or fut.done():
                        continue  # abandoned by its caller
                    if r.HasField("error"):
                        fut.set_exception(error_from_pb(r.error))
                    else:
                        fut.set_result(r.value)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._break(exc)

    def _break(self, exc: BaseException | None, *, reason: str = "") -> None:
        """Mark the stream dead and fail every call still waiting on it (retryable)."""
        if self.broken is not None:
            return
        if reason:
            cause: DuroError = UnavailableError(reason)
        elif exc is None:
            cause = UnavailableError(f"node {self.address} ended the stream")
        elif isinstance(exc, aio.AioRpcError):
            cause = error_from_status(exc.code(), exc.details() or "", address=self.address)
        else:
            cause = UnavailableError(f"stream to {self.address} failed: {exc!r}")
        self.broken = cause
        unsent = {c.seq for c in self._outbox.take()}
        pending, self.pending = self.pending, {}
        for seq, fut in pending.items():
            if fut.done():
                continue
            if seq in unsent or not self.connected:
                # Never delivered: a redirect without an owner, which a router follows by
                # re-resolving the object (it is an UnavailableError, retryable, for others).
                err: DuroError = RedirectError(f"{cause}; the call was not sent")
            else:
                err = UnavailableError(f"{cause}; the call may or may not have executed")
            err.__cause__ = cause
            fut.set_exception(err)
        for task in (self._writer, self._reader):
            if task is not asyncio.current_task():
                task.cancel()
        self._rpc.cancel()
        if exc is not None and not isinstance(exc, aio.AioRpcError):
            # Usually a write racing the end of the RPC; the reader reports the real status.
            log.debug("stream to %s failed", self.address, exc_info=exc)

    async def close(self, reason: str) -> None:
        self._break(None, reason=reason)
        await asyncio.wait([self._writer, self._reader])


class NodeConnection:
    """Calls to one node over one channel and one long-lived stream (opened on first use).

    Implements :class:`~duro._namespace.Invoker`. Not thread-safe: use it from one event loop.
    """

    def __init__(
        self, address: str, *, options: Sequence[tuple[str, int | str]] = ()
    ) -> None:
        self.address = address
        self._options = [*channel_options(), *options]
        self._channel: aio.Channel | None = None
        self._stub: node_pb2_grpc.NodeStub | None = None
        self._stream: _CallStream | None = None
        self._seq = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Calls sent or queued on the current stream and not answered yet."""
        return len(self._stream.pending) if self._stream is not None else 0

    def _node_stub(self) -> node_pb2_grpc.NodeStub:
        if self._closed:
            raise UnavailableError(f"connection to {self.address} is closed")
        if self._stub is None:
            self._channel = tls.channel(self.address, options=self._options)
            self._stub = node_pb2_grpc.NodeStub(self._channel)
        return self._stub

    def _open(self) -> _CallStream:
        self._stream = _CallStream(self.address, self._node_stub())
        return self._stream

    async def invoke(self, call: Call, *, timeout: float | None = None) -> bytes:
        """Send ``call`` to the node; return its encoded result or raise its DuroError.

        ``timeout`` (seconds) raises :class:`~duro.errors.CallTimeoutError`; the call may still
        run on the node.
        """
        stream = self._stream
        if stream is None or stream.broken is not None:
            stream = self._open()
        if len(call.payload) > MAX_VALUE_BYTES:
            raise InvalidValueError(
                f"call payload is {len(call.payload)} bytes; the limit is {MAX_VALUE_BYTES}"
            )
        self._seq = seq = self._seq + 1
        if _tracing.tracer is not None:
            return await self._traced(stream, call, seq, timeout)
        return await self._wait(stream, stream.submit(call_to_pb(call, seq)), seq, timeout)

    async def _traced(self, stream: _CallStream, call: Call, seq: int,
                      timeout: float | None) -> bytes:
        """``invoke`` while tracing is on: a client span, its context inside the Call."""
        attrs = {"duro.binding": call.binding, "duro.method": call.method or call.kind.name,
                 "duro.object_id": call.object_id.hex(), "duro.hops": call.hops,
                 "server.address": self.address}
        with _tracing.span(f"call {call.binding}.{attrs['duro.method']}", kind="client",
                           attributes=attrs):
            pb = call_to_pb(call, seq)
            _tracing.inject(pb.trace_context)
            return await self._wait(stream, stream.submit(pb), seq, timeout)

    async def _wait(self, stream: _CallStream, fut: asyncio.Future[bytes], seq: int,
                    timeout: float | None) -> bytes:
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(
                timeout, _expire, fut, timeout, self.address
            )
        try:
            return await fut
        except (CallTimeoutError, asyncio.CancelledError):
            stream.abandon(seq)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def invoke_fetch(self, call: Call, body: AsyncIterator[bytes] | None, *,
                           timeout: float | None = None
                           ) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """A FETCH with streamed bodies (``call.stream_response`` set): the encoded response and,
        when the object streams it, its body's chunks (``duro.client.bodies``).

        Without a request body the call takes the batched stream as any other, and only a
        streamed response opens a ``Node.Body`` RPC to pull its body. A streamed request body
        always opens one; ``timeout`` does not apply to it (an upload lasts as long as the
        client sends: the edge's body limits bound that).
        """
        if body is None:
            answer = await self.invoke(call, timeout=timeout)
            token = stream_token(answer)
            if token is None:
                return answer, None
            return answer, pull_body(self._node_stub(), token, self.address)
        self._seq = seq = self._seq + 1
        return await send_streamed(self._node_stub(), call_to_pb(call, seq), body, self.address)

    async def health(self, *, timeout: float = 5.0) -> NodeHealth:
        """Ask the node for its status (unary ``Node.Health``)."""
        stub = self._node_stub()
        try:
            resp = await stub.Health(node_pb2.HealthRequest(), timeout=timeout)
        except aio.AioRpcError as exc:
            raise error_from_status(exc.code(), exc.details() or "", address=self.address) from None
        return NodeHealth(resp.node_id, resp.status, resp.active_objects)

    async def close(self) -> None:
        """Fail waiting calls (retryable), end the stream and close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            await self._stream.close(f"connection to {self.address} was closed")
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> NodeConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<NodeConnection {self.address} {state} pending={self.pending}>"


def _expire(fut: asyncio.Future[bytes], timeout: float, address: str) -> None:
    if not fut.done():
        fut.set_exception(
            CallTimeoutError(
                f"no answer from node {address} within {timeout:g}s; "
                "the call may or may not have executed"
            )
        )


class ConnectionPool:
    """One :class:`NodeConnection` per node address, made on first use."""

    def __init__(self, *, options: Sequence[tuple[str, int | str]] = ()) -> None:
        self._options = options
        self._conns: dict[str, NodeConnection] = {}
        self._closed = False

    def get(self, address: str) -> NodeConnection:
        conn = self._conns.get(address)
        if conn is None or conn.closed:
            if self._closed:
                raise UnavailableError("connection pool is closed")
            conn = self._conns[address] = NodeConnection(address, options=self._options)
        return conn

    async def invoke(self, address: str, call: Call, *, timeout: float | None = None) -> bytes:
        return await self.get(address).invoke(call, timeout=timeout)

    async def discard(self, address: str) -> None:
        """Close and forget the connection to ``address`` (e.g. the node left the cluster)."""
        conn = self._conns.pop(address, None)
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        self._closed = True
        conns, self._conns = list(self._conns.values()), {}
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    def __contains__(self, address: object) -> bool:
        return address in self._conns

    def __len__(self) -> int:
        return len(self._conns)

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

