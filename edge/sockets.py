"""Client WebSockets at the edge, multiplexed onto one gRPC stream per edge-node pair.

The edge terminates every client WebSocket and keeps the authoritative list of its sockets
(object, tags, a copy of the attachment): :class:`SocketManager` here. Frames travel to and from
the owning node on ``duro.v1.NodeSockets.Sockets``, one long-lived stream per node, many sockets
and many frames per message::

    client ─▶ serve(): read ─▶ window (per socket) ─▶ NodeLink outbox ─▶ node (web_socket_message)
    client ◀─ per-socket writer ◀─ bounded queue ◀── NodeLink reader ◀── node (ws.send, gated)

One job per module:

* ``socket_state``: one socket's record (:class:`EdgeSocket`), frame ops and close codes;
* ``node_link``: the reconnecting stream to one node (backoff up to 1 s; re-registers every
  socket it holds there on each new stream, before any message);
* ``socket_flow``: client -> object flow control: at most ``socket_window`` messages and
  ``socket_window_bytes`` bytes of one socket in flight to its object (one message is always
  allowed), at most ``socket_inflight_bytes`` over the edge; the node ACKs handled messages
  (folded per socket); beyond that the edge stops reading that client only;
* ``client_writer``: object -> client: each socket's own queue and writer; a client whose queue
  (plus its transport buffer) grows over ``max_socket_buffer_bytes`` is closed with **1008**
  ("client too slow") and its object sees ``web_socket_close(ws, 1008, ...)``;
* ``socket_moves``: sockets whose object moves or bounces a message: paused, then the bounced
  messages resent to the owner in order, then the held ones;
* ``ws_frames``: the RFC 6455 frames the edge writes itself;
* here: the registry of sockets and node links, frames from nodes, and serving a client.

Node loss: sockets whose node stays unreachable for ``node_loss_grace`` seconds are closed with
**1012** (service restart). A node that answers UNKNOWN (not the owner any more, or it lost the
socket) makes the edge look the owner up again, re-register the socket there and resend the
message (bounded attempts, then **1011**). Messages in flight to an object that moves are
ACKed or bounced before later ones go to the new owner: every message runs once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from duro._pb import node_pb2
from duro.edge.client_writer import ClientWriter, tcp_keepalive
from duro.edge.node_link import NodeLink
from duro.edge.socket_flow import FlowControl
from duro.edge.socket_moves import SocketMoves
from duro.edge.socket_state import (
    ACCEPT,
    ACK,
    ATTACH,
    AUTO,
    BARRIER,
    CLOSE,
    CLOSE_GOING_AWAY,
    CLOSE_SERVICE_RESTART,
    CLOSE_SLOW_CLIENT,
    MESSAGE,
    REGISTER,
    UNCLEAN,
    UNKNOWN,
    EdgeSocket,
    release,
)
from duro.edge.ws_masking import ClientWebSocket

if TYPE_CHECKING:
    from duro.client.router import Router
    from duro.edge.config import EdgeConfig
    from duro.edge.metrics import EdgeMetrics

__all__ = ["SocketManager", "EdgeSocket", "NodeLink", "CLOSE_SLOW_CLIENT"]

log = logging.getLogger("duro.edge.sockets")

_ACCEPT_TIMEOUT = 10.0


class SocketManager:
    """Every client socket of this edge, and one :class:`NodeLink` per live node."""

    def __init__(
        self, edge_id: str, router: Router, config: EdgeConfig, metrics: EdgeMetrics
    ) -> None:
        self.edge_id = edge_id
        self.router = router
        self.config = config
        self.metrics = metrics
        self.sockets: dict[int, EdgeSocket] = {}
        self.links: dict[str, NodeLink] = {}
        self.auto: dict[bytes, tuple[str, str]] = {}  # object id -> auto-response pair
        self.by_object: dict[bytes, set[int]] = {}  # object id -> its socket ids (re-binding)
        self._next_sid = 0
        self.flow = FlowControl(config)  # client -> object windows and the edge's budget
        self.writer = ClientWriter(config, metrics, self._gone)  # object -> client
        self.moves = SocketMoves(self)  # sockets whose object moves
        metrics.socket_inflight_bytes.set_function(lambda: self.flow.inflight_bytes)
        self._sync_task: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        # An object that moves (migration) re-binds its sockets on its first frame from the new
        # owner, which knows every socket from the migration snapshot (docs/migration.md). A
        # replica group failed over: its objects' sockets re-bind to the new primary at once
        # (re-registering rebuilds the object's socket registry there: docs/replication.md).
        self.router.groups.callbacks.append(self._on_group_change)
        self.router.nodes.callbacks.append(self._on_node_change)
        self._sync_links()
        self._sync_task = asyncio.ensure_future(self._sync_loop())
        # Give the first links a moment, so an ACCEPT rarely waits for a connection.
        await asyncio.gather(*(link.wait_connected(2.0) for link in self.links.values()))

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            try:
                self._sync_links()
            except Exception:
                log.exception("socket link sync failed")

    def _sync_links(self) -> None:
        """One link per live node (the router's node view), so ACCEPTs can reach us."""
        for info in self.router.nodes.live():
            if info.address not in self.links:
                self.links[info.address] = NodeLink(self, info.address)

    def link(self, address: str) -> NodeLink:
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = NodeLink(self, address)
        return link

    async def close(self, grace: float = 5.0) -> None:
        """Close every client socket with 1001 (going away), then the node links."""
        self._closing = True
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        socks = [s for s in self.sockets.values() if s.ws is not None and not s.closed]
        for s in socks:
            s.close_code, s.close_reason = CLOSE_GOING_AWAY, "edge shutting down"
        await asyncio.gather(
            *(asyncio.wait_for(s.ws.close(code=CLOSE_GOING_AWAY, message=b"edge shutting down"),
                               grace) for s in socks if s.ws is not None),
            return_exceptions=True,
        )
        # Let the CLOSE frames reach the nodes, then stop the links.
        await asyncio.sleep(0.1)
        await asyncio.gather(*(link.close() for link in self.links.values()),
                             return_exceptions=True)

    # -- helpers ------------------------------------------------------------------------------
    def new_socket(self) -> EdgeSocket:
        self._next_sid += 1
        s = EdgeSocket(self._next_sid)
        s.accepted = asyncio.get_running_loop().create_future()
        self.sockets[s.sid] = s
        return s

    def upgrade_mark(self, s: EdgeSocket) -> str:
        return f"{self.edge_id} {s.sid}"

    def sockets_on(self, address: str) -> list[EdgeSocket]:
        return [s for s in self.sockets.values() if s.node == address and not s.closed]

    def stream_lost(self, address: str) -> None:
        """A (new) stream to ``address`` starts: messages in flight on the old one are lost
        (at-most-once), so they no longer count against the window or keep a socket paused."""
        for s in list(self.sockets.values()):
            if s.up == address and s.unacked and not s.closed:
                s.unacked = 0
                self.flow.drop(s)
                release(s)
                if s.held is not None:
                    self.moves.resume(s)

    def register_frames(self, address: str) -> list[node_pb2.SocketFrame]:
        """A REGISTER for every socket this edge holds on ``address`` (a new stream starts)."""
        return [self.register_frame(s) for s in self.sockets_on(address)]

    def count_upstream_batch(self) -> None:
        self.metrics.upstream_batches.inc()

    def register_frame(self, s: EdgeSocket) -> node_pb2.SocketFrame:
        pb = node_pb2.SocketFrame(socket_id=s.sid, op=REGISTER, binding=s.binding,
                                  object_id=s.oid, tags=s.tags)
        if s.attachment is not None:
            pb.attachment, pb.has_attachment = s.attachment, True
        pair = self.auto.get(s.oid)
        if pair is not None:
            pb.auto_request, pb.auto_response = pair
        if s.auto_at:
            pb.auto_response_at = s.auto_at
        return pb

    def auto_answered(self, s: EdgeSocket) -> None:
        """``s`` was just answered with its object's auto-response: tell the object's node when
        (``ctx.get_web_socket_auto_response_timestamp``), without waking the object."""
        s.auto_at = int(time.time() * 1000)
        if s.node:
            self.link(s.node).push(node_pb2.SocketFrame(
                socket_id=s.sid, op=AUTO, binding=s.binding, object_id=s.oid,
                auto_response_at=s.auto_at))

    def check_orphans(self, address: str) -> None:
        """Close sockets whose node has been unreachable for longer than the grace period."""
        link = self.links.get(address)
        if link is None or link.connected or link.down_since is None:
            return
        if time.monotonic() - link.down_since < self.config.node_loss_grace:
            return
        for s in self.sockets_on(address):
            # Its object may have moved to a live node meanwhile: re-bind there instead.
            owner = self.owner_address(s)
            if owner and owner != address and owner in self.links:
                self.moves.rebind(s, owner)
                continue
            self.writer.close_client(s, CLOSE_SERVICE_RESTART, "node unavailable; reconnect")
        if address not in {i.address for i in self.router.nodes.live()} \
                and not self.sockets_on(address):
            self.links.pop(address, None)
            asyncio.ensure_future(link.close())

    def owner_address(self, s: EdgeSocket) -> str:
        """The address of the node serving ``s``'s object, as the router's directory sees it."""
        entry = self.router.directory.lookup(s.oid.hex())
        if entry is None:
            return ""
        return self.router.owner_address(entry)

    def _on_group_change(self, _name: str, old: Any, new: Any) -> None:
        if new is not None and (old is None or (old.primary, old.lease) != (new.primary, new.lease)):
            self._rebind_stale()

    def _on_node_change(self, _name: str, old: Any, new: Any) -> None:
        if new is not None and (old is None or (old.lease, old.address) != (new.lease,
                                                                             new.address)):
            self._rebind_stale()  # a (new) primary registered: it may serve a group now

    def _rebind_stale(self) -> None:
        """Re-bind every socket whose object is now served by another node than the one it is
        bound to (a group failed over, or its new primary just registered)."""
        moved = 0
        for s in list(self.sockets.values()):
            if s.closed or not s.oid or s.accepted is not None:
                continue
            address = self.owner_address(s)
            if address and address != s.node:
                self.moves.rebind(s, address)
                moved += 1
        if moved:
            log.info("%d sockets re-bound to their objects' new primaries", moved)

    # -- frames from nodes --------------------------------------------------------------------
    def on_batch(self, link: NodeLink, batch: node_pb2.SocketBatch) -> None:
        link.mark_up()
        frames = nbytes = 0
        for f in batch.frames:
            s = self.sockets.get(f.socket_id)
            op = f.op
            if op == MESSAGE:
                if s is None or s.closed:
                    continue
                if s.node != link.address and s.oid and s.accepted is None:
                    # The first frame from the object's new owner (it got the socket registry in
                    # the migration snapshot): talk to it from now on, even before our directory
                    # watch shows the move. (The old owner's frames all arrived before it let go:
                    # its BARRIER, below, was answered before the directory switch.)
                    self.moves.rebind(s, link.address)
                frames += 1
                nbytes += len(f.data)
                if s.pre is not None:
                    s.pre.append(f)
                else:
                    self.writer.enqueue(s, f.data, f.text)
            elif op == ACK:
                if s is not None:
                    s.unacked = max(0, s.unacked - f.count)
                    self.flow.acked(s, f.count)
                    release(s)
                    self.moves.acked(s)
            elif op == ACCEPT:
                if s is None or s.closed:
                    # Not ours (any more): tell the node the client is gone.
                    link.push(node_pb2.SocketFrame(
                        socket_id=f.socket_id, op=CLOSE, binding=f.binding,
                        object_id=f.object_id, code=1006, reason="client is gone"))
                    continue
                sids = self.by_object.get(f.object_id)
                if sids:  # share one id and binding object among an object's sockets
                    other = self.sockets.get(next(iter(sids)))
                    if other is not None:
                        s.binding, s.oid = other.binding, other.oid
                if not s.oid:
                    s.binding, s.oid = sys.intern(f.binding), f.object_id
                s.node = link.address
                self.by_object.setdefault(s.oid, set()).add(s.sid)
                s.tags = tuple(f.tags)
                s.attachment = f.attachment if f.has_attachment else None
                if f.auto_request:
                    self.auto[s.oid] = (f.auto_request, f.auto_response)
                if s.accepted is not None and not s.accepted.done():
                    s.accepted.set_result(None)
            elif op == ATTACH:
                if s is not None:
                    s.attachment = f.attachment if f.has_attachment else None
            elif op == AUTO:
                if f.auto_request:
                    self.auto[f.object_id] = (f.auto_request, f.auto_response)
                else:
                    self.auto.pop(f.object_id, None)
            elif op == CLOSE:
                if s is None or s.closed:
                    continue
                s.object_closed = True
                if s.pre is not None:
                    s.pre.append(f)
                else:
                    self.writer.close_after_queue(s, f.code or 1000, f.reason)
            elif op == UNKNOWN:
                if s is None or s.closed:
                    continue
                s.unacked = max(0, s.unacked - 1)
                self.flow.bounced(s, f.seq)
                self.moves.bounced(s, f.seq, f.data, f.text, f.owner)
            elif op == BARRIER:
                # Every frame before it on this stream is handled (queued for its client, in
                # order): say so on the same link (a migration's source waits for this).
                link.push(node_pb2.SocketFrame(op=BARRIER, seq=f.seq))
        if frames:
            self.metrics.frames_out.inc(frames)
            self.metrics.bytes_out.inc(nbytes)

    # -- towards the object -------------------------------------------------------------------
    def send_up(self, s: EdgeSocket, link: NodeLink, data: bytes, text: bool) -> None:
        """Send one client message of ``s`` to its object on ``link``, counted in flight."""
        seq = self.flow.sent(s, len(data))
        s.up = link.address
        link.push(node_pb2.SocketFrame(socket_id=s.sid, op=MESSAGE, binding=s.binding,
                                       object_id=s.oid, data=data, text=text, seq=seq))

    def _gone(self, s: EdgeSocket) -> None:
        """The client is gone: tell the object (unless it closed the socket itself)."""
        if s.closed:
            return
        s.closed = True
        self.sockets.pop(s.sid, None)
        self.flow.forget(s)
        self.moves.forget(s)
        sids = self.by_object.get(s.oid)
        if sids is not None:
            sids.discard(s.sid)
            if not sids:
                del self.by_object[s.oid]
        release(s)
        if s.oid and not s.object_closed:
            code = s.close_code or 1006
            pb = node_pb2.SocketFrame(
                socket_id=s.sid, op=CLOSE, binding=s.binding, object_id=s.oid, code=code,
                reason=s.close_reason, was_clean=code not in UNCLEAN,
                tags=s.tags)
            if s.attachment is not None:
                pb.attachment, pb.has_attachment = s.attachment, True
            link = self.links.get(s.node)
            if link is not None:  # (no link: the node left the cluster, its registry with it)
                link.push(pb)

    async def serve(self, request: web.BaseRequest, s: EdgeSocket) -> web.WebSocketResponse:
        """Complete the upgrade of ``s`` (its object answered 101) and pump its frames."""
        cfg = self.config
        try:
            assert s.accepted is not None
            if not s.accepted.done():
                await asyncio.wait_for(asyncio.shield(s.accepted), _ACCEPT_TIMEOUT)
        except asyncio.TimeoutError:
            self.sockets.pop(s.sid, None)
            s.closed = True
            raise web.HTTPBadGateway(text="the object accepted the WebSocket but its node did "
                                          "not confirm it in time; retry")
        ws = ClientWebSocket(  # unmasked client frames fail the connection (1002)
            max_msg_size=cfg.max_message_bytes,
            heartbeat=cfg.ws_heartbeat or None,
            compress=False,
        )
        if not cfg.ws_heartbeat:
            tcp_keepalive(request.transport)
        try:
            await ws.prepare(request)
        except Exception:
            s.close_code, s.close_reason = 1006, "upgrade failed"
            self._gone(s)
            raise
        s.ws = ws
        s.transport = request.transport
        s.accepted = None
        self.metrics.ws_open.inc()
        self.metrics.ws_accepted.inc()
        pre, s.pre = s.pre, None
        for f in pre or ():
            if f.op == MESSAGE:
                self.writer.enqueue(s, f.data, f.text)
            elif f.op == CLOSE:
                self.writer.close_after_queue(s, f.code or 1000, f.reason)
        pre = None
        # The client's messages, read here (no frame of its own: this coroutine lives as long as
        # the socket, and every frame costs memory per idle socket).
        try:
            metrics = self.metrics
            auto = self.auto
            while True:
                msg = await ws.receive()
                t = msg.type
                if t == WSMsgType.TEXT:
                    data = msg.data
                    pair = auto.get(s.oid) if auto else None
                    if pair is not None and data == pair[0]:
                        metrics.auto_responses.inc()
                        self.writer.enqueue(s, pair[1].encode(), True)
                        self.auto_answered(s)
                        continue
                    raw, text = data.encode(), True
                elif t == WSMsgType.BINARY:
                    raw, text = msg.data, False
                elif t == WSMsgType.CLOSE:
                    s.close_code = ws.close_code or msg.data or 1005
                    s.close_reason = msg.extra or ""
                    break
                elif t == WSMsgType.ERROR:
                    exc = msg.data if isinstance(msg.data, BaseException) else ws.exception()
                    if s.close_code == 0:
                        # A protocol error the edge failed the connection for (1002 unmasked
                        # frame, 1007, 1009...) is the code its object hears; else 1006.
                        s.close_code = getattr(exc, "code", 0) or ws.close_code or 1006
                        s.close_reason = str(exc or "")[:120]
                    break
                else:  # CLOSING, CLOSED
                    break
                metrics.frames_in.inc()
                metrics.bytes_in.inc(len(raw))
                # Flow control: stop reading this client (TCP pushes back on it) until its
                # message may go (see _may_send).
                while not s.closed and not self.flow.may_send(s, len(raw)):
                    s.credit = asyncio.get_running_loop().create_future()
                    await s.credit
                    s.credit = None
                if s.closed:
                    break
                if s.held is not None:  # paused (its object is moving): keep the order
                    s.held.append((raw, text))
                    continue
                self.send_up(s, self.link(s.node), raw, text)
        finally:
            self.metrics.ws_open.dec()
            if not s.close_code:
                s.close_code = ws.close_code or 1006
                if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
                    s.close_reason = "message too big"
            self.metrics.ws_closed.labels(code=str(s.close_code)).inc()
            self._gone(s)
        return ws
