"""One ``Node.Body`` RPC seen from either end: body chunks under credit-based flow control.

``Node.Body`` (``proto/duro/v1/node.proto``, ``BodyFrame``) carries one streamed HTTP body — a
request body from the caller to the node, a response body back, or both at once. Both ends use
:class:`BodyLink`: the caller (``duro.client.connection``) over a grpc.aio call, the node
(``duro.node.body_server``) over its servicer context. It is a gRPC adapter, as ``duro._wire``.

Flow control is by frames, not bytes: a receiver grants ``credit`` (:data:`WINDOW` frames, topped
up as it consumes them) and a sender writes a ``data`` frame only against credit, so neither end
holds more than ``WINDOW`` chunks of at most :data:`MAX_FRAME_BYTES` whatever the other's pace. A
sender asks its source for the next chunk only once it holds credit: a request body is not touched
before the object starts reading it (a call refused before that can go elsewhere, body intact).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from grpc import aio

from duro._pb import node_pb2
from duro._wire import error_from_pb, error_from_status, error_to_pb
from duro.errors import DuroError, UnavailableError

__all__ = ["BodyLink", "WINDOW", "MAX_FRAME_BYTES"]

log = logging.getLogger("duro.body")

WINDOW = 8  # data frames a receiver allows in flight
MAX_FRAME_BYTES = 1024 * 1024  # larger chunks are split


class BodyLink:
    """Frames in and out of one ``Node.Body`` RPC: the incoming body, credit, the head."""

    def __init__(self, read: Callable[[], Awaitable[Any]],
                 write: Callable[[node_pb2.BodyFrame], Awaitable[None]], *, peer: str) -> None:
        self._read = read
        self._write = write
        self.peer = peer
        self._lock = asyncio.Lock()  # one write at a time (the body pump and credit grants)
        self._incoming: collections.deque[bytes] = collections.deque()
        self._ended = False  # the incoming body is complete
        self._failed: DuroError | None = None  # the sender reported an error, or the RPC broke
        self._closed = False  # no more frames will arrive
        self._granted = 0  # data frames allowed and not yet received
        self._credit = 0  # data frames this end may send
        self._changed = asyncio.Event()
        self.head: node_pb2.Result | None = None
        self.first: node_pb2.BodyFrame | None = None  # the caller's opening frame (node side)
        self._reader: asyncio.Task[None] | None = None

    def start(self, first: node_pb2.BodyFrame | None = None) -> None:
        self.first = first
        self._reader = asyncio.ensure_future(self._read_frames())

    async def close(self) -> None:
        """Stop reading (the RPC is done or abandoned)."""
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            await asyncio.wait([self._reader])

    async def wait_closed(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the peer to end the RPC. The node ends its side only
        then: a frame (credit) the caller writes after the node's end fails the whole call in
        gRPC (status INTERNAL, and frames not yet read are lost), so the caller ends it."""
        try:
            async with asyncio.timeout(timeout):
                while not self._closed:
                    await self._changed_wait()
        except TimeoutError:
            log.debug("%s did not end the body stream within %g s", self.peer, timeout)

    async def send(self, frame: node_pb2.BodyFrame) -> None:
        async with self._lock:
            await self._write(frame)

    async def _read_frames(self) -> None:
        try:
            while True:
                frame = await self._read()
                if frame is aio.EOF:
                    break
                if frame.credit:
                    self._credit += frame.credit
                if frame.data:
                    self._incoming.append(frame.data)
                    self._granted -= 1
                if frame.end:
                    self._ended = True
                if frame.HasField("result"):
                    self.head = frame.result
                if frame.HasField("error"):
                    self._failed = error_from_pb(frame.error)
                self._changed.set()
        except asyncio.CancelledError:
            raise
        except aio.AioRpcError as exc:
            self._failed = error_from_status(exc.code(), exc.details() or "", address=self.peer)
        except Exception as exc:  # the RPC ended under us
            self._failed = UnavailableError(f"body stream with {self.peer} failed: {exc!r}")
        finally:
            self._closed = True
            self._changed.set()

    async def _changed_wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _gone(self, what: str) -> DuroError:
        if self._failed is not None:
            return self._failed
        return UnavailableError(f"{what}: the body stream with {self.peer} ended early")

    async def wait_head(self) -> node_pb2.Result:
        """The node's answer to the call (caller side)."""
        while self.head is None:
            if self._closed:
                raise self._gone("no answer")
            await self._changed_wait()
        return self.head

    async def receive(self) -> AsyncIterator[bytes]:
        """The incoming body, chunk by chunk, granting credit as it is consumed."""
        while True:
            if self._incoming:
                yield self._incoming.popleft()
                continue
            if self._ended:
                return
            if self._failed is not None or self._closed:
                raise self._gone("the body was cut short")
            if self._granted <= WINDOW // 2:
                more = WINDOW - self._granted
                self._granted += more
                await self._grant(more)
                continue
            await self._changed_wait()

    async def _grant(self, more: int) -> None:
        """Send credit. The sender may have finished its side already (its last frames, then
        the end of the RPC, are on their way here): a write that fails then is no error of the
        body; the frames already received are read on, and the reader reports the RPC's end."""
        try:
            await self.send(node_pb2.BodyFrame(credit=more))
        except (aio.AioRpcError, asyncio.InvalidStateError) as exc:
            log.debug("credit to %s not sent: %r", self.peer, exc)

    async def send_body(self, source: AsyncIterator[bytes], *, close: bool = True) -> None:
        """Send ``source`` as data frames against the peer's credit, then ``end``; an error
        of the source (the object's generator raised) goes to the peer as ``error``. ``close``:
        close ``source`` at the end (else its owner does: a refused call's body is sent again)."""
        try:
            while True:
                await self._await_credit()
                try:
                    chunk = await source.__anext__()
                except StopAsyncIteration:
                    break
                except DuroError as exc:
                    await self.send(node_pb2.BodyFrame(error=error_to_pb(exc)))
                    return
                except Exception as exc:  # the producer's own failure: the peer is told
                    log.debug("body source failed: %r", exc)
                    await self.send(node_pb2.BodyFrame(error=error_to_pb(exc)))
                    return
                for start in range(0, len(chunk), MAX_FRAME_BYTES):
                    if start:
                        await self._await_credit()
                    self._credit -= 1
                    await self.send(node_pb2.BodyFrame(data=chunk[start:start + MAX_FRAME_BYTES]))
            await self.send(node_pb2.BodyFrame(end=True))
        finally:
            aclose = getattr(source, "aclose", None) if close else None
            if aclose is not None:
                await aclose()

    async def _await_credit(self) -> None:
        while self._credit <= 0:
            if self._closed:
                raise self._gone("the receiver went away")
            await self._changed_wait()
