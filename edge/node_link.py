"""The edge's stream to one node (``duro.v1.NodeSockets.Sockets``): one long-lived stream per
edge-node pair, carrying the frames of every socket whose object lives there, reconnected when it
breaks.

* **Out**: frames queue in a batched stream (``duro._socket_batches.frame_stream``) and go in
  batches cut by bytes. A batch the stream could not send is kept (but its REGISTERs, which the
  next stream sends afresh) and goes first on the next stream.
* **In**: every batch goes to the owner (``on_batch``); the node's first, empty batch marks the
  link up.
* **Reconnect**: after a break, wait (backoff from 50 ms doubling to 1 s), let the owner check its
  sockets on that node (``check_orphans``), open a new stream, and first re-register every socket
  the edge holds there (``register_frames``), so a restarted node knows its sockets again before
  any message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from grpc import aio

from duro import tls
from duro._backoff import Backoff
from duro._pb import node_pb2, node_pb2_grpc
from duro._socket_batches import frame_stream
from duro._transport import EDGE_ID_METADATA, channel_options
from duro.edge.socket_state import REGISTER

__all__ = ["NodeLink", "LinkOwner"]

log = logging.getLogger("duro.edge.sockets")


class LinkOwner(Protocol):
    """What a link needs of the edge's socket registry (``duro.edge.sockets.SocketManager``)."""

    edge_id: str

    def register_frames(self, address: str) -> list[node_pb2.SocketFrame]: ...
    def stream_lost(self, address: str) -> None: ...
    def check_orphans(self, address: str) -> None: ...
    def on_batch(self, link: NodeLink, batch: node_pb2.SocketBatch) -> None: ...
    def count_upstream_batch(self) -> None: ...


class NodeLink:
    """The stream to one node: outbox, reconnecting writer and reader."""

    def __init__(self, owner: LinkOwner, address: str) -> None:
        self.owner = owner
        self.address = address
        # Dead nodes are noticed sooner than on call channels: their sockets are closed after
        # a grace period (docs/edge.md).
        self._channel = tls.channel(
            address, options=channel_options(keepalive_ms=10_000, max_backoff_ms=1_000))
        self._stub = node_pb2_grpc.NodeSocketsStub(self._channel)
        self._outbox = frame_stream()
        self.connected = False
        self.down_since: float | None = time.monotonic()
        self._task = asyncio.ensure_future(self._run())
        self._closing = False

    def push(self, pb: node_pb2.SocketFrame) -> None:
        self._outbox.send(pb)

    def mark_up(self) -> None:
        """The node answered on the current stream."""
        if not self.connected:
            self.connected = True
            self.down_since = None

    async def _run(self) -> None:
        # (not reset after a good stream: a node that keeps dropping it is retried at most
        # once a second)
        backoff = Backoff(0.05, 1.0)
        owner = self.owner
        while not self._closing:
            call = self._stub.Sockets(metadata=((EDGE_ID_METADATA, owner.edge_id),))
            reader = asyncio.ensure_future(self._read(call))
            try:
                # Re-register every socket this edge holds on that node before anything else.
                regs = owner.register_frames(self.address)
                owner.stream_lost(self.address)
                self._outbox.send_first(regs)
                await self._write(call, reader)
            except asyncio.CancelledError:
                call.cancel()
                reader.cancel()
                raise
            except Exception as exc:
                log.debug("socket stream to %s failed: %r", self.address, exc)
            finally:
                reader.cancel()
                call.cancel()
                if self.connected:
                    self.connected = False
                    self.down_since = time.monotonic()
                    log.warning("socket stream to node %s lost; reconnecting", self.address)
            if self._closing:
                return
            await backoff.sleep()
            owner.check_orphans(self.address)

    async def _write(self, call: Any, reader: asyncio.Future[None]) -> None:
        outbox = self._outbox
        reader.add_done_callback(lambda _: outbox.wake())  # a stream the node ended: reconnect

        async def write(frames: list[node_pb2.SocketFrame]) -> None:
            await call.write(node_pb2.SocketBatch(frames=frames))
            self.owner.count_upstream_batch()

        try:
            await outbox.run(write, done=reader.done)
        except Exception:
            # Not sent: keep the frames (MESSAGE/CLOSE) for the next stream, after the REGISTERs
            # it starts with.
            outbox.send_first([f for f in outbox.unsent if f.op != REGISTER])
            raise

    async def _read(self, call: Any) -> None:
        try:
            while True:
                batch = await call.read()
                if batch is aio.EOF:
                    return
                self.owner.on_batch(self, batch)  # the node's first (empty) batch marks it up
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("socket stream from %s ended: %r", self.address, exc)

    async def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.connected

    async def close(self) -> None:
        self._closing = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()
