"""The node side of the WebSocket hibernation API: sockets belong to the object, not the instance.

The edge terminates client WebSockets (``duro.edge.sockets``); frames travel between the edge and
this node on one long-lived stream per edge-node pair (``duro.node.socket_server``). This module is
the runtime half, with no transport in it:

* :class:`SocketHub` (one per host) keeps every object's socket registry **outside** its
  activation: socket id, edge, tags, attachment (a copy; the edge holds the authoritative one and
  re-registers it after a reconnect). An object with sockets can therefore be evicted while its
  sockets stay open at the edge; the next frame re-activates it and ``ctx.get_web_sockets()``
  returns every socket with its attachment.
* :class:`WebSocket` is the ``ws`` an object sees. ``send`` and ``close`` go through the output
  gate: a frame made after a storage write leaves only once that write is durable, and frames of
  one object leave in the order they were made.
* :class:`WebSocketContext` adds ``accept_web_socket``, ``get_web_sockets``, ``get_tags`` and the
  auto-response pair to ``ctx`` on nodes that serve sockets (the Testbed has none: objects there
  see a ``ctx`` without ``accept_web_socket`` and answer 426).

Client events (message, close, error) are delivered as ordinary events through the host (input
gate, ownership check) with the ``ws`` in ``Call.meta["ws"]``. When an edge's stream ends and the
edge does not come back within ``edge_grace`` seconds, its sockets are closed on this side
(``web_socket_close(ws, 1006, "edge connection lost", False)``): no socket looks open after its
client is gone.

Limits (as Cloudflare's, docs/edge.md): 32,768 sockets per object, 32 MiB per message, 10 tags of at most 256
characters, attachments of at most 16 KiB encoded.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from duro import _codec
from duro._namespace import Call, CallKind
from duro._transport import SOCKET_HEADER
from duro.errors import DuroError, InvalidArgumentError, OverloadedError, UnavailableError
from duro.node.runtime.activation import current_activation
from duro.node.runtime.context import ObjectContext

if TYPE_CHECKING:
    from duro._http import Request
    from duro.node.runtime.activation import Activation
    from duro.node.runtime.host import ObjectHost

__all__ = [
    "Op",
    "Frame",
    "EdgeLink",
    "SocketHub",
    "WebSocket",
    "WebSocketContext",
    "MAX_SOCKETS_PER_OBJECT",
    "MAX_MESSAGE_BYTES",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MAX_ATTACHMENT_BYTES",
]

log = logging.getLogger("duro.node.websockets")

MAX_SOCKETS_PER_OBJECT = 32_768
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_TAGS = 10
MAX_TAG_CHARS = 256
MAX_ATTACHMENT_BYTES = 16 * 1024
MAX_EVENT_TIMEOUT_MS = 7 * 24 * 3600 * 1000  # setHibernatableWebSocketEventTimeout's maximum
_ORPHAN_LIMIT = 100_000  # frames kept for an edge that is not connected (yet)

# Close codes the runtime uses itself.
CLOSE_ABNORMAL = 1006
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013


class Op(IntEnum):
    """Mirrors ``duro.v1.SocketOp``."""

    MESSAGE = 1
    CLOSE = 2
    ERROR = 3
    REGISTER = 4
    ACCEPT = 5
    ATTACH = 6
    AUTO_RESPONSE = 7
    ACK = 8
    UNKNOWN = 9
    BARRIER = 10


@dataclass(slots=True)
class Frame:
    """One socket frame, transport-free (the adapter converts it to ``duro.v1.SocketFrame``)."""

    op: Op
    socket_id: int
    binding: str = ""
    object_id: bytes = b""
    data: bytes = b""
    text: bool = False
    code: int = 0
    reason: str = ""
    was_clean: bool = False
    tags: tuple[str, ...] = ()
    attachment: bytes | None = None
    auto: tuple[str, str] | None = None
    count: int = 0
    seq: int = 0  # MESSAGE: the edge's per-socket number (echoed by UNKNOWN); BARRIER: the token
    owner: str = ""  # UNKNOWN: the object's owner now, when this node knows it
    auto_at: int = 0  # AUTO_RESPONSE/REGISTER from the edge: its last auto-response (Unix ms)


class EdgeLink(Protocol):
    """The transport towards one edge (one ``Node.Sockets`` stream)."""

    def push(self, frame: Frame) -> None: ...

    def ack(self, socket_id: int) -> None: ...


class _Record:
    """One socket as this node knows it."""

    __slots__ = ("edge", "sid", "oid", "tags", "attachment", "open", "accepted", "ws", "turn",
                 "auto_at")

    def __init__(self, edge: str, sid: int, oid: bytes) -> None:
        self.edge = edge
        self.sid = sid
        self.oid = oid
        self.tags: tuple[str, ...] = ()
        self.attachment: bytes | None = None
        self.open = False
        self.accepted = False
        self.ws: WebSocket | None = None
        self.auto_at = 0  # when the edge last answered it with the auto-response (Unix ms)
        # Resolved when the socket's latest client event is admitted at the object's input gate
        # (or failed before): the next event waits for it (SocketHub._deliver). None when idle.
        self.turn: asyncio.Future[None] | None = None


class _ObjectSockets:
    __slots__ = ("binding", "sockets", "auto", "outq", "gate_seq", "epoch", "name",
                 "event_timeout")

    def __init__(self, binding: str) -> None:
        self.binding = binding
        self.name: str | None = None  # ctx.id.name, for events of a hibernated object
        self.event_timeout: int | None = None  # ms a web_socket_* handler may run (None: no limit)
        # The epoch a migration handed the registry over with (0: none): socket events carry it,
        # so a new owner whose directory view still lags reads its entry from etcd instead of
        # redirecting them back to the old owner.
        self.epoch = 0
        self.sockets: dict[tuple[str, int], _Record] = {}
        self.auto: tuple[str, str] | None = None
        # Frames waiting for the output gate: (gate future or None, edge, frame), in send order.
        self.outq: deque[tuple[asyncio.Future | None, str, Frame]] = deque()
        self.gate_seq = 0  # the write sequence number the last queued gate waits for


class WebSocket:
    """The server end of a client WebSocket, as an object sees it (hibernation API)."""

    __slots__ = ("_hub", "_rec", "_binding")

    def __init__(self, hub: SocketHub, rec: _Record, binding: str) -> None:
        self._hub = hub
        self._rec = rec
        self._binding = binding

    @property
    def id(self) -> str:
        return f"{self._rec.edge}/{self._rec.sid}"

    @property
    def ready_state(self) -> int:
        """1 (OPEN) while the socket is open, else 3 (CLOSED), as in the browser API."""
        return 1 if self._rec.open else 3

    def send(self, message: str | bytes) -> None:
        """Send one message (str: text, bytes: binary), after earlier writes are durable."""
        if isinstance(message, str):
            data, text = message.encode(), True
        elif isinstance(message, (bytes, bytearray, memoryview)):
            data, text = bytes(message), False
        else:
            raise InvalidArgumentError(
                f"ws.send() takes str or bytes, not {type(message).__name__}")
        if len(data) > MAX_MESSAGE_BYTES:
            raise InvalidArgumentError(
                f"WebSocket message is {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}"
            )
        rec = self._rec
        if not rec.open:
            raise InvalidArgumentError("WebSocket is closed; cannot send")
        self._hub._emit(rec, Frame(Op.MESSAGE, rec.sid, data=data, text=text))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket (code 1000 or 3000-4999, reason at most 123 bytes).

        Closing a socket that is already closed (e.g. echoing the client's code back in
        ``web_socket_close``, as the article does) does nothing.
        """
        if not self._rec.open:
            return
        if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999 or
                                             code in (1001, 1008, 1011, 1012, 1013)):
            raise InvalidArgumentError(f"invalid close code {code!r} (use 1000 or 3000-4999)")
        if not isinstance(reason, str) or len(reason.encode()) > 123:
            raise InvalidArgumentError("close reason must be a str of at most 123 bytes")
        self._hub._close(self._rec, code, reason)

    def serialize_attachment(self, value: Any) -> None:
        """Keep ``value`` (msgpack-encodable, at most 16 KiB encoded) with the socket."""
        data = _codec.encode(value)
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise InvalidArgumentError(
                f"attachment is {len(data)} bytes encoded; the limit is {MAX_ATTACHMENT_BYTES}"
            )
        rec = self._rec
        rec.attachment = data
        if rec.accepted and rec.open:
            self._hub._emit(rec, Frame(Op.ATTACH, rec.sid, attachment=data))

    def deserialize_attachment(self) -> Any:
        """The value given to :meth:`serialize_attachment` (None if none)."""
        data = self._rec.attachment
        return None if data is None else _codec.decode(data)

    def __repr__(self) -> str:
        state = "open" if self._rec.open else "closed"
        return f"<WebSocket {self.id} {state} tags={list(self._rec.tags)}>"


def _check_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise InvalidArgumentError("tags must be a list of str, not one str")
    out = tuple(tags)
    if len(out) > MAX_TAGS:
        raise InvalidArgumentError(f"a WebSocket has at most {MAX_TAGS} tags, got {len(out)}")
    for t in out:
        if not isinstance(t, str) or not t:
            raise InvalidArgumentError("tags must be non-empty str")
        if len(t) > MAX_TAG_CHARS:
            raise InvalidArgumentError(
                f"a tag has at most {MAX_TAG_CHARS} characters, got {len(t)}")
    if len(set(out)) != len(out):
        raise InvalidArgumentError("tags must be distinct")
    return out


class WebSocketContext(ObjectContext):
    """``ctx`` on a node that serves WebSockets (through an edge)."""

    __slots__ = ()

    def _hub(self) -> SocketHub:
        hub = self._act.host.sockets
        assert hub is not None
        return hub

    def accept_web_socket(self, ws: WebSocket, tags: Iterable[str] | None = ()) -> None:
        """Make ``ws`` (from ``request.web_socket_pair()``) a hibernatable socket of this object."""
        self._hub().accept(self._act, ws, _check_tags(tags))

    def get_web_sockets(self, tag: str | None = None) -> list[WebSocket]:
        """Every open socket of this object (with ``tag``, if given), including hibernated ones."""
        return self._hub().sockets_of(self._act, tag)

    def get_tags(self, ws: WebSocket) -> list[str]:
        if not isinstance(ws, WebSocket):
            raise InvalidArgumentError("get_tags() takes a WebSocket")
        return list(ws._rec.tags)

    def set_web_socket_auto_response(
        self, request: str | None = None, response: str | None = None
    ) -> None:
        """Answer ``request`` with ``response`` at the edge, without waking the object.

        Both None clears the pair. Each is a text message of at most 2,048 characters.
        """
        if request is None and response is None:
            pair = None
        else:
            for what, v in (("request", request), ("response", response)):
                if not isinstance(v, str) or not v or len(v) > 2048:
                    raise InvalidArgumentError(
                        f"auto-response {what} must be a str of 1..2048 chars")
            pair = (request, response)
        self._hub().set_auto_response(self._act, pair)  # type: ignore[arg-type]

    def get_web_socket_auto_response(self) -> tuple[str, str] | None:
        obj = self._hub().objects.get(self._act.oid)
        return obj.auto if obj is not None else None

    def get_web_socket_auto_response_timestamp(self, ws: WebSocket) -> _dt.datetime | None:
        """When the edge last answered ``ws`` with the auto-response (an aware UTC datetime),
        or None if it never did. Learnt from the edge without waking the object."""
        if not isinstance(ws, WebSocket):
            raise InvalidArgumentError("get_web_socket_auto_response_timestamp() takes a WebSocket")
        at = ws._rec.auto_at
        return _dt.datetime.fromtimestamp(at / 1000, _dt.timezone.utc) if at else None

    def set_hibernatable_web_socket_event_timeout(self, timeout_ms: int | None = None) -> None:
        """The longest a ``web_socket_message/close/error`` handler of this object may run, in
        milliseconds (at most 7 days); None or 0 removes the limit. A handler that runs longer
        is cancelled (docs/runtime.md)."""
        if timeout_ms is not None and (
                isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int)
                or not 0 <= timeout_ms <= MAX_EVENT_TIMEOUT_MS):
            raise InvalidArgumentError(
                f"the WebSocket event timeout is an int of milliseconds from 0 to "
                f"{MAX_EVENT_TIMEOUT_MS} (7 days), or None; got {timeout_ms!r}")
        self._hub().set_event_timeout(self._act, timeout_ms or None)

    def get_hibernatable_web_socket_event_timeout(self) -> int | None:
        """The limit set by :meth:`set_hibernatable_web_socket_event_timeout` (ms), or None."""
        return self._hub().event_timeout(self._act.oid)


class SocketStats:
    __slots__ = ("accepted", "messages_in", "messages_out", "closed", "unknown", "edges_lost")

    def __init__(self) -> None:
        self.accepted = self.messages_in = self.messages_out = 0
        self.closed = self.unknown = self.edges_lost = 0


class SocketHub:
    """Every object's sockets on one node, and the links to the edges that hold them."""

    def __init__(self, host: ObjectHost, *, edge_grace: float = 10.0) -> None:
        self.host = host
        self.edge_grace = edge_grace
        self.objects: dict[bytes, _ObjectSockets] = {}
        self.stats = SocketStats()
        self._links: dict[str, EdgeLink] = {}
        self._orphans: dict[str, deque[Frame]] = {}
        self._gone: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Future] = set()
        self._barriers: dict[int, tuple[str, asyncio.Future]] = {}  # token -> (edge, answered)
        self._barrier_seq = 0

    def make_context(self, act: Activation) -> ObjectContext:
        return WebSocketContext(act)

    @property
    def socket_count(self) -> int:
        return sum(len(o.sockets) for o in self.objects.values())

    # -- runtime side -------------------------------------------------------------------------
    def bind_request(self, act: Activation, request: Request) -> None:
        """Give an upgrade request from an edge its ``web_socket_pair()``."""
        # The edge marks an upgrade request with "<edge id> <socket id>" (it strips the header
        # from client requests, so a client cannot forge it).
        mark = request.headers.get(SOCKET_HEADER)
        if not mark or (request.headers.get("upgrade") or "").lower() != "websocket":
            return
        try:
            edge, sid_text = mark.split(" ", 1)
            sid = int(sid_text)
        except ValueError:
            return
        made: list[WebSocket] = []

        def pair() -> WebSocket:
            if made:
                return made[0]
            rec = _Record(edge, sid, act.oid)
            rec.ws = WebSocket(self, rec, act.binding)
            made.append(rec.ws)
            return rec.ws

        request._ws_factory = pair

    def accept(self, act: Activation, ws: WebSocket, tags: tuple[str, ...]) -> None:
        if not isinstance(ws, WebSocket) or ws._hub is not self:
            raise InvalidArgumentError(
                "accept_web_socket() takes the ws of request.web_socket_pair()")
        rec = ws._rec
        if rec.accepted:
            raise InvalidArgumentError("this WebSocket was already accepted")
        if rec.oid != act.oid:
            raise InvalidArgumentError(
                "a WebSocket can only be accepted by the object it was made for")
        obj = self.objects.get(act.oid)
        if obj is None:
            obj = self.objects[act.oid] = _ObjectSockets(act.binding)
        if len(obj.sockets) >= MAX_SOCKETS_PER_OBJECT:
            raise InvalidArgumentError(
                f"object has {len(obj.sockets)} WebSockets; the limit is {MAX_SOCKETS_PER_OBJECT}"
            )
        rec.tags = tags
        rec.accepted = rec.open = True
        obj.sockets[(rec.edge, rec.sid)] = rec
        if act.name is not None:
            obj.name = act.name
        self.stats.accepted += 1
        self._emit(rec, Frame(Op.ACCEPT, rec.sid, binding=act.binding, object_id=act.oid,
                              tags=tags, attachment=rec.attachment, auto=obj.auto))

    def sockets_of(self, act: Activation, tag: str | None) -> list[WebSocket]:
        obj = self.objects.get(act.oid)
        if obj is None:
            return []
        out = []
        for rec in obj.sockets.values():
            if not rec.open or (tag is not None and tag not in rec.tags):
                continue
            if rec.ws is None:
                rec.ws = WebSocket(self, rec, obj.binding)
            out.append(rec.ws)
        return out

    def set_event_timeout(self, act: Activation, timeout_ms: int | None) -> None:
        obj = self.objects.get(act.oid)
        if obj is None:
            if timeout_ms is None:
                return
            obj = self.objects[act.oid] = _ObjectSockets(act.binding)
        obj.event_timeout = timeout_ms
        if timeout_ms is None:
            self._drop_if_empty(obj, act.oid)

    def event_timeout(self, oid: bytes) -> int | None:
        obj = self.objects.get(oid)
        return obj.event_timeout if obj is not None else None

    def set_auto_response(self, act: Activation, pair: tuple[str, str] | None) -> None:
        obj = self.objects.get(act.oid)
        if obj is None:
            obj = self.objects[act.oid] = _ObjectSockets(act.binding)
        obj.auto = pair
        edges = {rec.edge: rec for rec in obj.sockets.values() if rec.open}
        for rec in edges.values():  # one frame per edge: the edge applies it to the object
            self._emit(rec, Frame(Op.AUTO_RESPONSE, rec.sid, binding=obj.binding,
                                  object_id=act.oid, auto=pair))

    def _close(self, rec: _Record, code: int, reason: str) -> None:
        if not rec.open:
            return  # closing twice (e.g. ws.close() inside web_socket_close) is harmless
        rec.open = False
        self._forget(rec)
        if rec.accepted:
            self._emit(rec, Frame(Op.CLOSE, rec.sid, code=code, reason=reason))

    def _forget(self, rec: _Record) -> None:
        obj = self.objects.get(rec.oid)
        if obj is not None and obj.sockets.get((rec.edge, rec.sid)) is rec:
            del obj.sockets[(rec.edge, rec.sid)]
            self.stats.closed += 1
            self._drop_if_empty(obj, rec.oid)

    def _drop_if_empty(self, obj: _ObjectSockets, oid: bytes) -> None:
        if (not obj.sockets and obj.auto is None and not obj.outq
                and obj.event_timeout is None and self.objects.get(oid) is obj):
            del self.objects[oid]

    def _emit(self, rec: _Record, frame: Frame) -> None:
        """Send ``frame`` towards the socket's edge once earlier writes are durable, in order.

        One gate future per write, not per frame: a broadcast after one write queues its frames
        behind a single gate (frames with no gate of their own wait for the one before them).
        """
        obj = self.objects.get(rec.oid)
        if obj is None:
            self._push(rec.edge, frame)
            return
        act = current_activation.get()
        if act is None or act.oid != rec.oid:
            act = self.host.activation(rec.oid)
        st = act.storage if act is not None else None
        q = obj.outq
        # (ObjectStorage's sequence numbers: writes made vs. writes durable.)
        if st is None or st._durable_seq >= st._gate_seq:
            if q:
                q.append((None, rec.edge, frame))  # behind frames still waiting for a write
            else:
                self._push(rec.edge, frame)
            return
        seq = st._gate_seq
        if q and obj.gate_seq == seq:
            q.append((None, rec.edge, frame))  # the gate queued before covers this write too
            return
        gate = st.output_gate()
        assert gate is not None
        obj.gate_seq = seq
        q.append((gate, rec.edge, frame))
        gate.add_done_callback(lambda _f, o=obj: self._flush(o))

    def _flush(self, obj: _ObjectSockets) -> None:
        q = obj.outq
        while q:
            gate, edge, frame = q[0]
            if gate is not None and not gate.done():
                return
            if gate is not None and (gate.cancelled() or gate.exception() is not None):
                q.clear()  # the write failed and the object was reset: nothing after it leaves
                return
            q.popleft()
            self._push(edge, frame)

    def _push(self, edge: str, frame: Frame) -> None:
        if frame.op == Op.MESSAGE:
            self.stats.messages_out += 1
        link = self._links.get(edge)
        if link is not None:
            link.push(frame)
            return
        q = self._orphans.get(edge)
        if q is None:
            q = self._orphans[edge] = deque(maxlen=_ORPHAN_LIMIT)
            self._arm_gone(edge)
        q.append(frame)

    # -- migration ----------------------------------------------------------------------------
    def export(self, oid: bytes) -> tuple[list[tuple[str, int, tuple[str, ...], bytes | None]],
                                          tuple[str, str] | None]:
        """The object's registry for a migration snapshot: open sockets and the auto-response."""
        obj = self.objects.get(oid)
        if obj is None:
            return [], None
        return ([(r.edge, r.sid, r.tags, r.attachment) for r in obj.sockets.values() if r.open],
                obj.auto)

    def install(
        self, oid: bytes, binding: str,
        records: Iterable[tuple[str, int, tuple[str, ...], bytes | None]],
        auto: tuple[str, str] | None, epoch: int,
    ) -> int:
        """Migration target: take over the registry the source had (replacing a stale one), so
        the object knows every socket from the moment it owns it, before any edge re-registers."""
        self.objects.pop(oid, None)
        obj = _ObjectSockets(binding)
        obj.auto, obj.epoch = auto, epoch
        for edge, sid, tags, attachment in records:
            rec = _Record(edge, sid, oid)
            rec.tags, rec.attachment = tuple(tags), attachment
            rec.accepted = rec.open = True
            obj.sockets[(edge, sid)] = rec
        if obj.sockets or auto is not None:
            self.objects[oid] = obj
        return len(obj.sockets)

    async def flush_frames(self, oid: bytes, timeout: float) -> bool:
        """Migration drain: wait until every frame the object made has passed its output gate and
        every connected edge holding one of its sockets has handled everything this node sent it
        before (a BARRIER answered on the same stream). The new owner's frames travel on other
        streams; once this returns, they can only reach the clients after the old owner's.

        False if some edge did not answer within ``timeout`` (its stream is broken or stuck:
        frames on a broken stream are at-most-once anyway; docs/edge.md).
        """
        obj = self.objects.get(oid)
        if obj is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while obj.outq:  # the drain made every write durable: the gates are done or about to be
            self._flush(obj)
            if not obj.outq:
                break
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.001)
        waits = []
        for edge in {rec.edge for rec in obj.sockets.values()}:
            link = self._links.get(edge)
            if link is None:
                continue  # not connected: what it missed waits in its orphan queue
            self._barrier_seq += 1
            fut = loop.create_future()
            self._barriers[self._barrier_seq] = (edge, fut)
            link.push(Frame(Op.BARRIER, 0, seq=self._barrier_seq))
            waits.append((self._barrier_seq, fut))
        if not waits:
            return True
        _done, pending = await asyncio.wait([f for _, f in waits],
                                            timeout=max(0.0, deadline - loop.time()))
        for token, _ in waits:
            self._barriers.pop(token, None)
        if pending:
            log.warning("object %s: %d edges did not confirm its frames before the move",
                        oid.hex()[:16], len(pending))
        return not pending

    def _owner_hint(self, oid: bytes) -> str:
        moved = self.host.moved.get(oid)
        return getattr(moved, "node_id", "") or ""

    def forget_object(self, oid: bytes) -> None:
        """The object moved to another node: drop its registry here, without close events (its
        edges re-register the sockets with the new owner; see duro.edge.sockets)."""
        obj = self.objects.pop(oid, None)
        if obj is not None and obj.sockets:
            log.info("object %s moved away: forgot its %d sockets", oid.hex()[:16],
                     len(obj.sockets))

    # -- transport side -----------------------------------------------------------------------
    def attach(self, edge: str, link: EdgeLink) -> None:
        """An edge's stream is up (first time or again)."""
        self._links[edge] = link
        timer = self._gone.pop(edge, None)
        if timer is not None:
            timer.cancel()
        for frame in self._orphans.pop(edge, ()):
            link.push(frame)
        log.info("edge %s connected", edge)

    def detach(self, edge: str, link: EdgeLink) -> None:
        if self._links.get(edge) is link:
            del self._links[edge]
            self._arm_gone(edge)
            for token, (e, fut) in list(self._barriers.items()):
                if e == edge and not fut.done():  # its stream broke: nothing more to wait for
                    fut.set_result(None)
            log.info("edge %s disconnected; its sockets close in %.0f s unless it returns",
                     edge, self.edge_grace)

    def _arm_gone(self, edge: str) -> None:
        if edge not in self._gone:
            self._gone[edge] = asyncio.get_running_loop().call_later(
                self.edge_grace, self._edge_gone, edge
            )

    def _edge_gone(self, edge: str) -> None:
        self._gone.pop(edge, None)
        if edge in self._links:
            return
        self._orphans.pop(edge, None)
        self.stats.edges_lost += 1
        lost = [rec for obj in self.objects.values() for rec in obj.sockets.values()
                if rec.edge == edge]
        if lost:
            log.warning("edge %s did not come back: closing its %d sockets", edge, len(lost))
        for rec in lost:
            self._client_closed(rec, CLOSE_ABNORMAL, "edge connection lost", False)

    def receive(self, edge: str, f: Frame) -> None:
        """One frame from an edge."""
        op = f.op
        if op == Op.REGISTER:
            self._register(edge, f)
            return
        if op == Op.BARRIER:
            waiting = self._barriers.get(f.seq)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_result(None)
            return
        obj = self.objects.get(f.object_id)
        rec = obj.sockets.get((edge, f.socket_id)) if obj is not None else None
        if op == Op.AUTO_RESPONSE:  # the edge answered the socket itself, at f.auto_at
            if rec is not None and f.auto_at > rec.auto_at:
                rec.auto_at = f.auto_at
            return
        if op == Op.MESSAGE:
            if rec is None or not rec.open:
                self.stats.unknown += 1
                self._reply(edge, Frame(Op.UNKNOWN, f.socket_id, binding=f.binding,
                                        object_id=f.object_id, data=f.data, text=f.text,
                                        reason="no such socket here", seq=f.seq,
                                        owner=self._owner_hint(f.object_id)))
                return
            self.stats.messages_in += 1
            payload: str | bytes = f.data.decode() if f.text else f.data
            self._deliver(edge, obj, rec, "message", (payload,), ack=True,  # type: ignore[arg-type]
                          seq=f.seq)
        elif op == Op.CLOSE:
            if rec is None:
                if not f.binding:
                    return
                # Not registered here (e.g. closed while its stream was down): deliver anyway.
                rec = _Record(edge, f.socket_id, f.object_id)
                rec.tags, rec.attachment, rec.accepted = f.tags, f.attachment, True
                if obj is None:
                    obj = self.objects[f.object_id] = _ObjectSockets(f.binding)
            self._client_closed(rec, f.code, f.reason, f.was_clean, obj)
        elif op == Op.ERROR:
            if rec is not None and obj is not None:
                rec.open = False
                self._forget(rec)
                self._deliver(edge, obj, rec, "error", (f.reason,), ack=False)

    def _register(self, edge: str, f: Frame) -> None:
        obj = self.objects.get(f.object_id)
        if obj is None:
            obj = self.objects[f.object_id] = _ObjectSockets(f.binding)
        if obj.auto is None and f.auto is not None:
            obj.auto = f.auto
        key = (edge, f.socket_id)
        rec = obj.sockets.get(key)
        if rec is None:
            if len(obj.sockets) >= MAX_SOCKETS_PER_OBJECT:
                self._push(edge, Frame(Op.CLOSE, f.socket_id, code=1008,
                                       reason="too many WebSockets on this object"))
                return
            rec = obj.sockets[key] = _Record(edge, f.socket_id, f.object_id)
        rec.tags, rec.attachment = f.tags, f.attachment
        rec.accepted = rec.open = True
        rec.auto_at = max(rec.auto_at, f.auto_at)

    def _client_closed(
        self, rec: _Record, code: int, reason: str, was_clean: bool,
        obj: _ObjectSockets | None = None,
    ) -> None:
        obj = obj or self.objects.get(rec.oid)
        rec.open = False
        self._forget(rec)
        if obj is not None:
            self._deliver(rec.edge, obj, rec, "close", (code, reason, was_clean), ack=False)

    def _reply(self, edge: str, frame: Frame) -> None:
        link = self._links.get(edge)
        if link is not None:
            link.push(frame)

    def _deliver(
        self, edge: str, obj: _ObjectSockets, rec: _Record, kind: str, args: tuple, *, ack: bool,
        seq: int = 0,
    ) -> None:
        if rec.ws is None:
            rec.ws = WebSocket(self, rec, obj.binding)
        call = Call(binding=obj.binding, object_id=rec.oid, kind=CallKind.RPC,
                    method="web_socket_" + kind, meta={"ws": (kind, rec.ws, args)},
                    name=obj.name)
        if obj.epoch:
            call.epoch = obj.epoch
        # One socket's events reach the object in the order they came: each goes on only once the
        # one before it is admitted at the input gate (Activation.deliver resolves ``admitted``).
        # On its way there a call may wait (a migration's hold, the ownership check asking the
        # directory partition while the new owner's cache is cold) and a later message that
        # need not wait would overtake it (docs/edge.md, "An object moves").
        prev = rec.turn
        admitted = rec.turn = asyncio.get_running_loop().create_future()
        call.meta["admitted"] = admitted
        task = asyncio.ensure_future(self._invoke_in_turn(rec, prev, call, admitted))
        self._tasks.add(task)

        def done(t: asyncio.Future) -> None:
            self._tasks.discard(t)
            exc = None if t.cancelled() else t.exception()
            if kind == "message" and isinstance(exc, UnavailableError):
                # Not the owner (any more), or the node is fencing/stopping: the edge re-resolves
                # the owner, re-registers the socket there and resends (see duro.edge.sockets).
                # The UNKNOWN answer stands for the ACK; the message did not run here.
                data = args[0]
                self._reply(edge, Frame(
                    Op.UNKNOWN, rec.sid, binding=obj.binding, object_id=rec.oid,
                    data=data.encode() if isinstance(data, str) else data,
                    text=isinstance(data, str), reason=str(exc), seq=seq,
                    owner=getattr(exc, "node_id", "") or ""))
                return
            if ack:
                link = self._links.get(edge)
                if link is not None:
                    link.ack(rec.sid)
            if exc is None or isinstance(exc, UnavailableError):
                return
            if isinstance(exc, OverloadedError) and rec.open:
                self._close(rec, CLOSE_TRY_AGAIN, "object overloaded; reconnect later")
                return
            level = logging.DEBUG if isinstance(exc, DuroError) and exc.code == "object_error" \
                else logging.WARNING
            log.log(level, "web_socket_%s of %s failed: %r", kind, rec.oid.hex()[:16], exc)

        task.add_done_callback(done)

    async def _invoke_in_turn(self, rec: _Record, prev: asyncio.Future[None] | None, call: Call,
                              admitted: asyncio.Future[None]) -> bytes:
        try:
            if prev is not None and not prev.done():
                await prev
            return await self.host.invoke(call)
        finally:
            if not admitted.done():  # it failed before the gate (a redirect...): next one's turn
                admitted.set_result(None)
            if rec.turn is admitted:
                rec.turn = None

    async def close(self) -> None:
        for timer in self._gone.values():
            timer.cancel()
        self._gone.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
