"""The node's gRPC adapter for WebSockets: ``duro.v1.NodeSockets.Sockets`` over a ``SocketHub``.

One long-lived bidirectional stream per edge-node pair carries the frames of every socket the edge
holds for objects on this node (see ``duro.node.runtime.websockets`` and docs/edge.md)::

    SocketBatch ──▶ reader ──▶ hub.receive(edge, frame) ──▶ events through the host
    SocketBatch ◀── writer ◀── outbox (+ ACKs folded per socket) ◀── hub pushes (output-gated)

Batching is as in ``duro.node.server``: everything pushed during one loop turn (and while a write
is in progress) goes out as one message. ACKs of one socket are folded into one frame with a
count. An edge that stops reading lets its outbox grow only up to ``max_outbox_bytes``; beyond it
the stream is ended (the edge reconnects and re-registers its sockets), so one stuck edge cannot
grow the node's memory without bound. Batches are cut by bytes (``duro._socket_batches``), below
gRPC's message limit. Client messages an edge has in flight here (received, not yet ACKed or
answered UNKNOWN) are bounded too (``max_inflight_bytes``, 512 MiB): an edge past it, which
ignored its own windows, has its stream ended with ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import AsyncIterator

import grpc
from grpc import aio

from duro import tls
from duro._pb import node_pb2, node_pb2_grpc
from duro._socket_batches import frame_stream
from duro._transport import EDGE_ID_METADATA
from duro.node.runtime.websockets import Frame, Op, SocketHub

__all__ = ["SocketServicer", "frame_to_pb", "frame_from_pb"]

log = logging.getLogger("duro.node.sockets")

# Client message bytes one edge may have in flight here (received, not yet handled). An edge
# keeps to its own budget (socket_inflight_bytes, 256 MiB by default, over all nodes), so only
# an edge that ignores it reaches this; its stream ends with RESOURCE_EXHAUSTED.
DEFAULT_MAX_INFLIGHT_BYTES = 512 * 1024 * 1024


def frame_to_pb(f: Frame) -> node_pb2.SocketFrame:
    pb = node_pb2.SocketFrame(socket_id=f.socket_id, op=int(f.op))
    if f.binding:
        pb.binding = f.binding
        pb.object_id = f.object_id
    if f.data:
        pb.data = f.data
    if f.text:
        pb.text = True
    if f.code:
        pb.code = f.code
    if f.reason:
        pb.reason = f.reason
    if f.was_clean:
        pb.was_clean = True
    if f.tags:
        pb.tags.extend(f.tags)
    if f.attachment is not None:
        pb.attachment = f.attachment
        pb.has_attachment = True
    if f.auto is not None:
        pb.auto_request, pb.auto_response = f.auto
    if f.count:
        pb.count = f.count
    if f.seq:
        pb.seq = f.seq
    if f.owner:
        pb.owner = f.owner
    if f.auto_at:
        pb.auto_response_at = f.auto_at
    return pb


def frame_from_pb(pb: node_pb2.SocketFrame) -> Frame:
    return Frame(
        Op(pb.op), pb.socket_id, pb.binding, pb.object_id, pb.data, pb.text, pb.code, pb.reason,
        pb.was_clean, tuple(pb.tags), pb.attachment if pb.has_attachment else None,
        (pb.auto_request, pb.auto_response) if pb.auto_request else None, pb.count, pb.seq,
        pb.owner, pb.auto_response_at,
    )


_MESSAGE = node_pb2.SOCKET_OP_MESSAGE


class _EdgeLink:
    """The writing half of one edge's stream: outbox, folded ACKs, one writer."""

    __slots__ = ("edge", "_context", "_outbox", "_acks", "_limit", "_inflight", "inflight_bytes",
                 "refused")

    def __init__(self, edge: str, context: aio.ServicerContext, limit: int) -> None:
        self.edge = edge
        self._context = context
        self._outbox = frame_stream(prepare=self._with_acks)
        self._acks: dict[int, int] = {}
        self._limit = limit
        # Sizes of the messages received and not yet handled, per socket, oldest first (a
        # socket's messages are handled in order; each ends in an ACK or an UNKNOWN).
        self._inflight: dict[int, deque[int]] = {}
        self.inflight_bytes = 0
        self.refused = ""  # why the stream is ended by this side (RESOURCE_EXHAUSTED)

    @property
    def closed(self) -> bool:
        return self._outbox.closed

    def received(self, socket_id: int, n: int) -> None:
        q = self._inflight.get(socket_id)
        if q is None:
            q = self._inflight[socket_id] = deque()
        q.append(n)
        self.inflight_bytes += n

    def handled(self, socket_id: int) -> None:
        q = self._inflight.get(socket_id)
        if q:
            self.inflight_bytes -= q.popleft()
            if not q:
                del self._inflight[socket_id]

    def push(self, frame: Frame) -> None:
        if self.closed:
            return
        if frame.op is Op.UNKNOWN:  # a message that did not run here: it is handled
            self.handled(frame.socket_id)
        self._outbox.send(frame_to_pb(frame))
        if self._outbox.queued_bytes > self._limit:
            log.warning("edge %s is not reading (%d bytes queued): ending its stream",
                        self.edge, self._outbox.queued_bytes)
            self.close()

    def ack(self, socket_id: int) -> None:
        if not self.closed:
            self.handled(socket_id)
            self._acks[socket_id] = self._acks.get(socket_id, 0) + 1
            self._outbox.wake()

    def _with_acks(self, frames: list[node_pb2.SocketFrame]) -> list[node_pb2.SocketFrame]:
        """The ACKs counted since the last batch, one frame per socket, after its other frames
        (an ACK must not overtake an UNKNOWN of the same socket)."""
        if self._acks:
            acks, self._acks = self._acks, {}
            frames.extend(node_pb2.SocketFrame(socket_id=sid, op=int(Op.ACK), count=n)
                          for sid, n in acks.items())
        return frames

    def close(self) -> None:
        self._outbox.close()

    async def run(self) -> None:
        await self._outbox.run(self._write)

    async def _write(self, frames: list[node_pb2.SocketFrame]) -> None:
        await self._context.write(node_pb2.SocketBatch(frames=frames))


COLOCATED_EDGE_PREFIX = "node:"  # edge ids of edges running inside a node (duro node --edge)


def may_attach_as(peer: tls.Identity, edge: str) -> bool:
    """Whether ``peer`` may attach a socket stream as edge ``edge``: an edge as the edge its
    certificate names (or an instance of it), a node only as its own co-located edge
    ``node:<node id>``; ``node:`` ids are never an edge certificate's."""
    if edge.startswith(COLOCATED_EDGE_PREFIX):
        return peer.role == "node" and peer.may_act_as("node", edge[len(COLOCATED_EDGE_PREFIX):])
    return peer.may_act_as("edge", edge)


class SocketServicer(node_pb2_grpc.NodeSocketsServicer):
    """``duro.v1.NodeSockets`` over a :class:`SocketHub`."""

    def __init__(self, hub: SocketHub, *, max_outbox_bytes: int = 256 * 1024 * 1024,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES) -> None:
        self.hub = hub
        self.max_outbox_bytes = max_outbox_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self._links: set[_EdgeLink] = set()

    async def Sockets(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[node_pb2.SocketBatch], context: aio.ServicerContext
    ) -> None:
        md = dict(context.invocation_metadata() or ())
        edge = str(md.get(EDGE_ID_METADATA, ""))
        if not edge:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Sockets needs the {EDGE_ID_METADATA} metadata",
            )
        # With TLS, an edge attaches only as the edge its certificate names (or an instance of
        # it): another edge's frames (its clients' messages, its sockets' closes) are not for it.
        peer = tls.peer_identity(context)
        if peer is not None and not may_attach_as(peer, edge):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{peer} may not attach as edge {edge!r}",
            )
        link = _EdgeLink(edge, context, self.max_outbox_bytes)
        self._links.add(link)
        # An empty first batch tells the edge the stream is up (before any socket has traffic).
        await context.write(node_pb2.SocketBatch())
        self.hub.attach(edge, link)
        reader = asyncio.ensure_future(self._read(edge, link, request_iterator))
        try:
            await link.run()
        except Exception as exc:  # the edge went away mid-write
            log.debug("socket stream to edge %s ended: %r", edge, exc)
        finally:
            link.close()
            self._links.discard(link)
            self.hub.detach(edge, link)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if link.refused:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, link.refused)

    async def _read(
        self, edge: str, link: _EdgeLink, request_iterator: AsyncIterator[node_pb2.SocketBatch]
    ) -> None:
        receive = self.hub.receive
        limit = self.max_inflight_bytes
        try:
            async for batch in request_iterator:
                for pb in batch.frames:
                    if pb.op == _MESSAGE:
                        link.received(pb.socket_id, len(pb.data))
                        if link.inflight_bytes > limit:
                            link.refused = (
                                f"edge {edge} has more than {limit} bytes of socket messages in "
                                f"flight on this node; it must wait for ACKs (docs/edge.md)")
                            log.warning("%s: ending its stream", link.refused)
                            return
                    try:
                        receive(edge, frame_from_pb(pb))
                    except Exception:  # a bad frame must not end the stream of every socket
                        log.exception("bad socket frame from edge %s", edge)
                        if pb.op == _MESSAGE:
                            link.handled(pb.socket_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("socket stream from edge %s ended: %r", edge, exc)
        finally:
            link.close()

    def close(self) -> None:
        """End every edge's stream (node shutdown); edges reconnect elsewhere or later."""
        for link in list(self._links):
            link.close()
