"""Client WebSockets at the edge, multiplexed onto one gRPC stream per edge-node pair.

The edge terminates every client WebSocket and keeps the authoritative list of its sockets
(object, tags, a copy of the attachment). Frames travel to and from the owning node on
``duro.v1.NodeSockets.Sockets``, one long-lived stream per node, many sockets and many frames per
message (:class:`NodeLink`)::

    client ─▶ serve(): read ─▶ window (per socket) ─▶ NodeLink outbox ─▶ node (web_socket_message)
    client ◀─ per-socket writer ◀─ bounded queue ◀── NodeLink reader ◀── node (ws.send, gated)

Flow control, per socket so that one slow party cannot stall the others:

* client → object: at most ``socket_window`` messages and ``socket_window_bytes`` bytes of one
  socket are in flight to its object (one message is always allowed when none is in flight), and
  at most ``socket_inflight_bytes`` over every socket of the edge; the node ACKs handled messages
  (folded per socket). Beyond that the edge stops reading that client only. Batches on the
  stream are cut by bytes (``duro._socket_batches``), below gRPC's message limit.
* object → client: each socket has its own queue and writer; the stream reader never waits on a
  client. A client whose queue (plus its transport buffer) grows over ``max_socket_buffer_bytes``
  does not read: it is closed with **1008** ("client too slow") and its object sees
  ``web_socket_close(ws, 1008, ...)``.

Node loss: when a stream breaks, the link reconnects (backoff up to 1 s). On every (re)connect it
first sends REGISTER for every socket it holds on that node (tags, attachment, auto-response), so a
restarted node knows its sockets again before any message. Sockets whose node stays unreachable
for ``node_loss_grace`` seconds are closed with **1012** (service restart). A node that answers
UNKNOWN (not the owner any more, or it lost the socket) makes the edge look the owner up again,
re-register the socket there and resend the message (bounded attempts, then **1011**).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web
from grpc import aio

from duro import tls
from duro._pb import node_pb2, node_pb2_grpc
from duro._socket_batches import split_frames
from duro.edge.ws_masking import ClientWebSocket

if TYPE_CHECKING:
    from duro.client.router import Router
    from duro.edge.config import EdgeConfig
    from duro.edge.metrics import EdgeMetrics

__all__ = ["SocketManager", "EdgeSocket", "NodeLink", "SOCKET_HEADER", "CLOSE_SLOW_CLIENT"]

log = logging.getLogger("duro.edge.sockets")

SOCKET_HEADER = "Duro-Socket"  # must match duro.node.runtime.websockets.SOCKET_HEADER
EDGE_ID_METADATA = "duro-edge-id"
CLOSE_SLOW_CLIENT = 1008
CLOSE_SERVICE_RESTART = 1012
CLOSE_INTERNAL = 1011
CLOSE_GOING_AWAY = 1001
_MAX_REDELIVERIES = 5
# Close codes that mean the connection did not end with a clean closing handshake.
_UNCLEAN = frozenset({1005, 1006, 1009, CLOSE_SLOW_CLIENT, CLOSE_INTERNAL, CLOSE_SERVICE_RESTART})
_ACCEPT_TIMEOUT = 10.0

_MESSAGE = node_pb2.SOCKET_OP_MESSAGE
_CLOSE = node_pb2.SOCKET_OP_CLOSE
_ERROR = node_pb2.SOCKET_OP_ERROR
_REGISTER = node_pb2.SOCKET_OP_REGISTER
_ACCEPT = node_pb2.SOCKET_OP_ACCEPT
_ATTACH = node_pb2.SOCKET_OP_ATTACH
_AUTO = node_pb2.SOCKET_OP_AUTO_RESPONSE
_ACK = node_pb2.SOCKET_OP_ACK
_UNKNOWN = node_pb2.SOCKET_OP_UNKNOWN
_BARRIER = node_pb2.SOCKET_OP_BARRIER
_REDELIVERY_BACKOFF = 0.05  # s, doubled per round, when the node that bounced is still named owner


_DIRECT_WRITE_LIMIT = 64 * 1024


def _frame_header(n: int, text: bool) -> bytes:
    """An unmasked, final, uncompressed server frame header (RFC 6455 §5.2)."""
    first = 0x81 if text else 0x82
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big")
    return bytes((first, 127)) + n.to_bytes(8, "big")


class EdgeSocket:
    """One client WebSocket held by this edge."""

    __slots__ = (
        "sid", "binding", "oid", "node", "tags", "attachment", "ws", "transport", "pre",
        "out", "out_bytes", "writer", "unacked", "credit", "accepted", "closed",
        "close_code", "close_reason", "object_closed", "redeliveries", "up", "seq", "held",
        "bounced", "hint", "inflight", "unacked_bytes", "auto_at",
    )

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.binding = ""
        self.oid = b""
        self.node = ""  # address of the node its object lives on
        self.tags: tuple[str, ...] = ()
        self.attachment: bytes | None = None
        self.ws: web.WebSocketResponse | None = None
        self.transport: Any = None
        self.pre: list[node_pb2.SocketFrame] | None = []  # frames before the upgrade completed
        self.out: deque[tuple[bytes, bool]] | None = None  # made on first backlog (it is big)
        self.out_bytes = 0
        self.writer: asyncio.Task[None] | None = None
        self.unacked = 0
        self.credit: asyncio.Future[None] | None = None
        self.accepted: asyncio.Future[None] | None = None
        self.auto_at = 0  # when this edge last answered it with the auto-response (Unix ms)
        self.closed = False
        self.close_code = 0
        self.close_reason = ""
        self.object_closed = False
        self.redeliveries = 0  # rounds of re-delivery since the last ACK
        # Client -> object messages in flight (``unacked`` of them) all went to one node, ``up``;
        # ``seq`` numbers them. While ``held`` is not None the socket is *paused*: its object
        # moved (or a message bounced) while messages were in flight to the old owner, so new
        # client messages wait in ``held`` until each in-flight one is ACKed (ran there) or
        # bounced (UNKNOWN: did not run; kept in ``bounced`` with its number). Then the bounced
        # ones go to the new owner in their original order, then the held ones: every message
        # runs exactly once, in the order the client sent it, across a move.
        self.up = ""
        self.seq = 0
        self.held: deque[tuple[bytes, bool]] | None = None
        self.bounced: list[tuple[int, bytes, bool]] | None = None
        self.hint = ""  # the owner an UNKNOWN named
        # Bytes of the messages in flight (seq -> size, oldest first; made on the first send):
        # the window in bytes, and this socket's share of the edge's budget.
        self.inflight: dict[int, int] | None = None
        self.unacked_bytes = 0


class NodeLink:
    """The stream to one node: outbox, reconnecting writer and reader."""

    def __init__(self, mgr: SocketManager, address: str) -> None:
        self.mgr = mgr
        self.address = address
        self._channel = tls.channel(address, options=_channel_options())
        self._stub = node_pb2_grpc.NodeSocketsStub(self._channel)
        self._outbox: list[node_pb2.SocketFrame] = []
        self._wake = asyncio.Event()
        self.connected = False
        self.down_since: float | None = time.monotonic()
        self._task = asyncio.ensure_future(self._run())
        self._closing = False

    def push(self, pb: node_pb2.SocketFrame) -> None:
        self._outbox.append(pb)
        self._wake.set()

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            call = self._stub.Sockets(metadata=((EDGE_ID_METADATA, self.mgr.edge_id),))
            reader = asyncio.ensure_future(self._read(call))
            try:
                # Re-register every socket this edge holds on that node before anything else.
                regs = [self.mgr.register_frame(s) for s in self.mgr.sockets_on(self.address)]
                self.mgr.stream_lost(self.address)
                self._outbox[:0] = regs
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
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)
            self.mgr.check_orphans(self.address)

    async def _write(self, call: Any, reader: asyncio.Future[None]) -> None:
        while True:
            if reader.done():
                return
            if not self._outbox:
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait([waiter, reader], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            frames, self._outbox = self._outbox, []
            # Cut by bytes: a few big messages together would exceed gRPC's message limit, fail
            # the stream, and be resent together again, stalling every socket on this node.
            batches = list(split_frames(frames))
            for i, batch in enumerate(batches):
                try:
                    await call.write(node_pb2.SocketBatch(frames=batch))
                except Exception:
                    # Not sent: keep the frames (MESSAGE/CLOSE) for the next stream, after the
                    # REGISTERs it starts with.
                    self._outbox[:0] = [f for b in batches[i:] for f in b if f.op != _REGISTER]
                    raise
                self.mgr.metrics.upstream_batches.inc()

    async def _read(self, call: Any) -> None:
        try:
            while True:
                batch = await call.read()
                if batch is aio.EOF:
                    return
                self.mgr.on_batch(self, batch)  # the node's first (empty) batch marks it up
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


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]


def _tcp_keepalive(transport: Any) -> None:
    """Dead clients (no FIN: a pulled cable, a partition) are found by the kernel's TCP keepalive
    (about 60 s) instead of a ping timer per socket, which costs ~0.5 KiB per idle socket."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass


def _release(s: EdgeSocket) -> None:
    if s.credit is not None and not s.credit.done():
        s.credit.set_result(None)


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
        self._resume_timers: dict[int, asyncio.TimerHandle] = {}
        self._next_sid = 0
        # Client message bytes in flight to objects, over every socket (``socket_inflight_bytes``
        # bounds it), and the sockets waiting for some of it to be freed.
        self.inflight_bytes = 0
        self._blocked: set[EdgeSocket] = set()
        metrics.socket_inflight_bytes.set_function(lambda: self.inflight_bytes)
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
                self._drop_inflight(s)
                _release(s)
                if s.held is not None:
                    self._resume(s)

    def register_frame(self, s: EdgeSocket) -> node_pb2.SocketFrame:
        pb = node_pb2.SocketFrame(socket_id=s.sid, op=_REGISTER, binding=s.binding,
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
                socket_id=s.sid, op=_AUTO, binding=s.binding, object_id=s.oid,
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
            owner = self._owner_address(s)
            if owner and owner != address and owner in self.links:
                self._rebind(s, owner)
                continue
            self._close_client(s, CLOSE_SERVICE_RESTART, "node unavailable; reconnect")
        if address not in {i.address for i in self.router.nodes.live()} \
                and not self.sockets_on(address):
            self.links.pop(address, None)
            asyncio.ensure_future(link.close())

    def _owner_address(self, s: EdgeSocket) -> str:
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
            address = self._owner_address(s)
            if address and address != s.node:
                self._rebind(s, address)
                moved += 1
        if moved:
            log.info("%d sockets re-bound to their objects' new primaries", moved)

    def _rebind(self, s: EdgeSocket, address: str) -> None:
        s.node = address
        self.link(address).push(self.register_frame(s))
        if s.unacked and s.up != address and s.held is None:
            # Messages are in flight to the old owner: pause until each is ACKed or bounced, so
            # that none is overtaken by a later one sent straight to the new owner.
            s.held = deque()

    # -- frames from nodes --------------------------------------------------------------------
    def on_batch(self, link: NodeLink, batch: node_pb2.SocketBatch) -> None:
        if not link.connected:
            link.connected = True
            link.down_since = None
        frames = nbytes = 0
        for f in batch.frames:
            s = self.sockets.get(f.socket_id)
            op = f.op
            if op == _MESSAGE:
                if s is None or s.closed:
                    continue
                if s.node != link.address and s.oid and s.accepted is None:
                    # The first frame from the object's new owner (it got the socket registry in
                    # the migration snapshot): talk to it from now on, even before our directory
                    # watch shows the move. (The old owner's frames all arrived before it let go:
                    # its BARRIER, below, was answered before the directory switch.)
                    self._rebind(s, link.address)
                frames += 1
                nbytes += len(f.data)
                if s.pre is not None:
                    s.pre.append(f)
                else:
                    self._enqueue(s, f.data, f.text)
            elif op == _ACK:
                if s is not None:
                    s.unacked = max(0, s.unacked - f.count)
                    s.redeliveries = 0
                    self._acked(s, f.count)
                    _release(s)
                    if s.held is not None and not s.unacked:
                        self._resume(s)
            elif op == _ACCEPT:
                if s is None or s.closed:
                    # Not ours (any more): tell the node the client is gone.
                    link.push(node_pb2.SocketFrame(
                        socket_id=f.socket_id, op=_CLOSE, binding=f.binding,
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
            elif op == _ATTACH:
                if s is not None:
                    s.attachment = f.attachment if f.has_attachment else None
            elif op == _AUTO:
                if f.auto_request:
                    self.auto[f.object_id] = (f.auto_request, f.auto_response)
                else:
                    self.auto.pop(f.object_id, None)
            elif op == _CLOSE:
                if s is None or s.closed:
                    continue
                s.object_closed = True
                if s.pre is not None:
                    s.pre.append(f)
                else:
                    self._close_after_queue(s, f.code or 1000, f.reason)
            elif op == _UNKNOWN:
                if s is None or s.closed:
                    continue
                s.unacked = max(0, s.unacked - 1)
                self._bounced(s, f.seq)
                # It did not run there: keep it (with its number) for the owner, and pause.
                if s.bounced is None:
                    s.bounced = []
                s.bounced.append((f.seq, f.data, f.text))
                if f.owner:
                    s.hint = f.owner
                if s.held is None:
                    s.held = deque()
                if not s.unacked:
                    self._resume(s)
            elif op == _BARRIER:
                # Every frame before it on this stream is handled (queued for its client, in
                # order): say so on the same link (a migration's source waits for this).
                link.push(node_pb2.SocketFrame(op=_BARRIER, seq=f.seq))
        if frames:
            self.metrics.frames_out.inc(frames)
            self.metrics.bytes_out.inc(nbytes)

    def _resume(self, s: EdgeSocket, *, retry: bool = False) -> None:
        """Unpause ``s`` once nothing is in flight: bounced messages first, in the order the client
        sent them, to the owner; then the messages held meanwhile."""
        timer = self._resume_timers.pop(s.sid, None)
        if timer is not None:
            timer.cancel()
        if s.closed or s.held is None or s.unacked:
            return
        bounced = s.bounced
        if bounced:
            owner = ""
            if s.hint:
                info = self.router.nodes.nodes.get(s.hint)
                owner = info.address if info is not None else ""
            owner = owner or self._owner_address(s) or s.node
            if owner == s.up and not retry:
                # The node that bounced them is still the owner as far as we know (our watch
                # lags, or it was briefly unavailable): try again a little later.
                delay = _REDELIVERY_BACKOFF * (2 ** min(s.redeliveries, 5))
                self._resume_timers[s.sid] = asyncio.get_running_loop().call_later(
                    delay, lambda: self._resume(s, retry=True))
                return
            s.hint = ""
            s.redeliveries += 1
            if s.redeliveries > _MAX_REDELIVERIES:
                log.warning("socket %s: object %s unreachable; closing", s.sid, s.oid.hex()[:16])
                s.held = s.bounced = None
                self._close_client(s, CLOSE_INTERNAL, "object unreachable")
                return
            s.node = owner
            link = self.link(owner)
            link.push(self.register_frame(s))
            bounced.sort(key=lambda m: m[0])
            for _seq, data, text in bounced:
                self._send_up(s, link, data, text)
        held, s.held, s.bounced = s.held, None, None
        if held:
            link = self.link(s.node)
            for data, text in held:
                self._send_up(s, link, data, text)
        _release(s)

    # -- towards the client -------------------------------------------------------------------
    def _enqueue(self, s: EdgeSocket, data: bytes, text: bool) -> None:
        transport = s.transport
        out = s.out
        if (not out and s.writer is None and transport is not None
                and not transport.is_closing() and s.ws is not None and not s.ws.closed
                and transport.get_write_buffer_size() < _DIRECT_WRITE_LIMIT):
            # Fast path: the client keeps up, so write the frame now, without a task. One
            # transport.write per frame keeps frames whole next to aiohttp's own (pings, close).
            transport.write(_frame_header(len(data), text) + data)
            return
        if out is None:
            out = s.out = deque()
        out.append((data, text))
        s.out_bytes += len(data)
        buffered = s.out_bytes + (transport.get_write_buffer_size() if transport is not None else 0)
        if buffered > self.config.max_socket_buffer_bytes and len(out) > 1:
            self._slow_client(s)
            return
        if s.writer is None:
            s.writer = asyncio.ensure_future(self._drain(s))

    def _slow_client(self, s: EdgeSocket) -> None:
        self.metrics.slow_closed.inc()
        log.warning("socket %s: client does not read (%d bytes queued); closing with 1008",
                    s.sid, s.out_bytes)
        s.out = None
        s.out_bytes = 0
        s.close_code, s.close_reason = CLOSE_SLOW_CLIENT, "client too slow: send buffer full"
        transport = s.transport
        if transport is not None and not transport.is_closing():
            # Write the close frame straight into the transport (the writer is stuck waiting for
            # the client to drain), then drop the connection if it does not drain within 5 s.
            reason = s.close_reason.encode()
            payload = CLOSE_SLOW_CLIENT.to_bytes(2, "big") + reason
            transport.write(bytes([0x88, len(payload)]) + payload)
            transport.close()
            asyncio.get_running_loop().call_later(5.0, transport.abort)
        if s.writer is not None:
            s.writer.cancel()
        self._gone(s)

    async def _drain(self, s: EdgeSocket) -> None:
        ws = s.ws
        assert ws is not None
        try:
            out = s.out
            while out:  # (a slow-client close sets s.out to None; this copy drains no further)
                if s.out is None:
                    break
                data, text = out.popleft()
                s.out_bytes -= len(data)
                if text:
                    await ws.send_frame(data, WSMsgType.TEXT)
                else:
                    await ws.send_frame(data, WSMsgType.BINARY)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        except Exception as exc:
            log.debug("socket %s: send failed: %r", s.sid, exc)
        finally:
            s.writer = None

    def _close_after_queue(self, s: EdgeSocket, code: int, reason: str) -> None:
        async def run() -> None:
            if s.writer is not None:
                await asyncio.gather(s.writer, return_exceptions=True)
            if s.ws is not None and not s.ws.closed:
                s.close_code, s.close_reason = code, reason
                try:
                    await asyncio.wait_for(s.ws.close(code=code, message=reason.encode()), 10.0)
                except Exception:
                    pass

        asyncio.ensure_future(run())

    def _close_client(self, s: EdgeSocket, code: int, reason: str) -> None:
        """The edge closes a client socket itself; its object hears ``web_socket_close``."""
        s.close_code, s.close_reason = code, reason
        self._close_after_queue(s, code, reason)

    # -- towards the object -------------------------------------------------------------------
    def _send_up(self, s: EdgeSocket, link: NodeLink, data: bytes, text: bool) -> None:
        s.unacked += 1
        s.seq += 1
        s.up = link.address
        n = len(data)
        if s.inflight is None:
            s.inflight = {}
        s.inflight[s.seq] = n
        s.unacked_bytes += n
        self.inflight_bytes += n
        link.push(node_pb2.SocketFrame(socket_id=s.sid, op=_MESSAGE, binding=s.binding,
                                       object_id=s.oid, data=data, text=text, seq=s.seq))

    def _may_send(self, s: EdgeSocket, n: int) -> bool:
        """Whether a message of ``n`` bytes from ``s``'s client may go to its object now: the
        socket's windows (messages and bytes; one message is always allowed when nothing is in
        flight) and the edge's budget of bytes in flight over all sockets."""
        cfg = self.config
        if s.unacked + (len(s.held) if s.held else 0) >= cfg.socket_window:
            return False
        if s.unacked_bytes and s.unacked_bytes + n > cfg.socket_window_bytes:
            return False
        if self.inflight_bytes and self.inflight_bytes + n > cfg.socket_inflight_bytes:
            self._blocked.add(s)  # woken when any socket's bytes are freed
            return False
        return True

    def _acked(self, s: EdgeSocket, count: int) -> None:
        """The ``count`` oldest messages in flight of ``s`` were handled."""
        inflight = s.inflight
        freed = 0
        while count and inflight:
            freed += inflight.pop(next(iter(inflight)))
            count -= 1
        self._free(s, freed)

    def _bounced(self, s: EdgeSocket, seq: int) -> None:
        """Message ``seq`` did not run (UNKNOWN): it is sent again later, and charged again."""
        self._free(s, s.inflight.pop(seq, 0) if s.inflight else 0)

    def _drop_inflight(self, s: EdgeSocket) -> None:
        """Every message in flight of ``s`` is lost (its stream broke) or moot (it closed)."""
        if s.inflight:
            self._free(s, sum(s.inflight.values()))
        s.inflight = None

    def _free(self, s: EdgeSocket, n: int) -> None:
        if not n:
            return
        s.unacked_bytes -= n
        self.inflight_bytes -= n
        if self._blocked:
            blocked, self._blocked = self._blocked, set()
            for b in blocked:
                _release(b)

    def _gone(self, s: EdgeSocket) -> None:
        """The client is gone: tell the object (unless it closed the socket itself)."""
        if s.closed:
            return
        s.closed = True
        self.sockets.pop(s.sid, None)
        self._drop_inflight(s)
        self._blocked.discard(s)
        timer = self._resume_timers.pop(s.sid, None)
        if timer is not None:
            timer.cancel()
        s.held = s.bounced = None
        sids = self.by_object.get(s.oid)
        if sids is not None:
            sids.discard(s.sid)
            if not sids:
                del self.by_object[s.oid]
        _release(s)
        if s.oid and not s.object_closed:
            code = s.close_code or 1006
            pb = node_pb2.SocketFrame(
                socket_id=s.sid, op=_CLOSE, binding=s.binding, object_id=s.oid, code=code,
                reason=s.close_reason, was_clean=code not in _UNCLEAN,
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
            _tcp_keepalive(request.transport)
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
            if f.op == _MESSAGE:
                self._enqueue(s, f.data, f.text)
            elif f.op == _CLOSE:
                self._close_after_queue(s, f.code or 1000, f.reason)
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
                        self._enqueue(s, pair[1].encode(), True)
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
                while not s.closed and not self._may_send(s, len(raw)):
                    s.credit = asyncio.get_running_loop().create_future()
                    await s.credit
                    s.credit = None
                if s.closed:
                    break
                if s.held is not None:  # paused (its object is moving): keep the order
                    s.held.append((raw, text))
                    continue
                self._send_up(s, self.link(s.node), raw, text)
        finally:
            self.metrics.ws_open.dec()
            if not s.close_code:
                s.close_code = ws.close_code or 1006
                if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
                    s.close_reason = "message too big"
            self.metrics.ws_closed.labels(code=str(s.close_code)).inc()
            self._gone(s)
        return ws
