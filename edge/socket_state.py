"""One client WebSocket as the edge holds it (:class:`EdgeSocket`), and the names the edge's
socket modules share: the frame ops of ``NodeSockets.Sockets`` and the close codes.

A socket's fields fall in three groups: who it is (id, object, tags, attachment), the way to its
client (``duro.edge.client_writer``), and its messages towards the object, counted for flow
control (``duro.edge.socket_flow``) and held or bounced while the object moves
(``duro.edge.sockets``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from aiohttp import web

from duro._pb import node_pb2

__all__ = ["EdgeSocket", "release", "CLOSE_SLOW_CLIENT", "CLOSE_SERVICE_RESTART",
           "CLOSE_INTERNAL", "CLOSE_GOING_AWAY", "UNCLEAN"]

CLOSE_SLOW_CLIENT = 1008
CLOSE_SERVICE_RESTART = 1012
CLOSE_INTERNAL = 1011
CLOSE_GOING_AWAY = 1001
# Close codes that mean the connection did not end with a clean closing handshake.
UNCLEAN = frozenset({1005, 1006, 1009, CLOSE_SLOW_CLIENT, CLOSE_INTERNAL, CLOSE_SERVICE_RESTART})

MESSAGE = node_pb2.SOCKET_OP_MESSAGE
CLOSE = node_pb2.SOCKET_OP_CLOSE
REGISTER = node_pb2.SOCKET_OP_REGISTER
ACCEPT = node_pb2.SOCKET_OP_ACCEPT
ATTACH = node_pb2.SOCKET_OP_ATTACH
AUTO = node_pb2.SOCKET_OP_AUTO_RESPONSE
ACK = node_pb2.SOCKET_OP_ACK
UNKNOWN = node_pb2.SOCKET_OP_UNKNOWN
BARRIER = node_pb2.SOCKET_OP_BARRIER


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


def release(s: EdgeSocket) -> None:
    """Wake the client reader of ``s`` if it waits for room to send."""
    if s.credit is not None and not s.credit.done():
        s.credit.set_result(None)

