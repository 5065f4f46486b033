"""Client messages of a socket whose object moves (migration, failover) or bounces them.

Every client message runs once, in the order the client sent it, across a move:

* **Pause.** When a socket is re-bound to a new owner while messages are in flight to the old
  one (:meth:`SocketMoves.rebind`), or a node answers UNKNOWN for one (it did not run there:
  :meth:`bounced`), the socket is paused: new client messages wait in ``held``.
* **Resume** (:meth:`resume`), once nothing is in flight (each message ACKed or bounced):
  the bounced messages go to the owner first, in their original order (after a REGISTER there),
  then the held ones. If the node that bounced them is still named owner (the directory watch
  lags), the edge waits (50 ms, doubled per round, at most 1.6 s) and tries again; after
  ``MAX_REDELIVERIES`` rounds without an ACK the socket is closed with **1011**.

The socket's fields it uses (``held``, ``bounced``, ``hint``, ``redeliveries``) are documented on
:class:`~duro.edge.socket_state.EdgeSocket`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from duro._backoff import backoff_delay
from duro._pb import node_pb2
from duro.edge.socket_state import CLOSE_INTERNAL, EdgeSocket, release

if TYPE_CHECKING:
    from duro.edge.node_link import NodeLink

__all__ = ["SocketMoves", "MAX_REDELIVERIES"]

log = logging.getLogger("duro.edge.sockets")

MAX_REDELIVERIES = 5
# When the node that bounced a message is still named owner: wait 50 ms, doubled per round.
_REDELIVERY_BACKOFF = 0.05
_REDELIVERY_BACKOFF_CAP = 1.6


class MoveOwner(Protocol):
    """What moving sockets needs of the edge's socket registry (``SocketManager``)."""

    router: Any
    writer: Any

    def link(self, address: str) -> NodeLink: ...
    def register_frame(self, s: EdgeSocket) -> node_pb2.SocketFrame: ...
    def send_up(self, s: EdgeSocket, link: NodeLink, data: bytes, text: bool) -> None: ...
    def owner_address(self, s: EdgeSocket) -> str: ...


class SocketMoves:
    """The paused sockets of one edge, and their redelivery timers."""

    def __init__(self, owner: MoveOwner) -> None:
        self._registry = owner
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def rebind(self, s: EdgeSocket, address: str) -> None:
        """``s``'s object is served at ``address`` now: register it there, and pause it if
        messages are in flight to the old owner."""
        s.node = address
        self._registry.link(address).push(self._registry.register_frame(s))
        if s.unacked and s.up != address and s.held is None:
            # Messages are in flight to the old owner: pause until each is ACKed or bounced, so
            # that none is overtaken by a later one sent straight to the new owner.
            s.held = deque()


    def acked(self, s: EdgeSocket) -> None:
        """Messages of ``s`` were ACKed (they ran): resume it if nothing is in flight now."""
        s.redeliveries = 0
        if s.held is not None and not s.unacked:
            self.resume(s)

    def bounced(self, s: EdgeSocket, seq: int, data: bytes, text: bool, hint: str) -> None:
        """Message ``seq`` of ``s`` did not run where it went (UNKNOWN; ``hint``: the owner the
        node named, if any): keep it, with its number, for the owner, and pause ``s``."""
        if s.bounced is None:
            s.bounced = []
        s.bounced.append((seq, data, text))
        if hint:
            s.hint = hint
        if s.held is None:
            s.held = deque()
        if not s.unacked:
            self.resume(s)

    def resume(self, s: EdgeSocket, *, retry: bool = False) -> None:
        """Unpause ``s`` once nothing is in flight: bounced messages first, in the order the client
        sent them, to the owner; then the messages held meanwhile."""
        registry = self._registry
        timer = self._timers.pop(s.sid, None)
        if timer is not None:
            timer.cancel()
        if s.closed or s.held is None or s.unacked:
            return
        bounced = s.bounced
        if bounced:
            owner = ""
            if s.hint:
                info = registry.router.nodes.nodes.get(s.hint)
                owner = info.address if info is not None else ""
            owner = owner or registry.owner_address(s) or s.node
            if owner == s.up and not retry:
                # The node that bounced them is still the owner as far as we know (our watch
                # lags, or it was briefly unavailable): try again a little later.
                delay = backoff_delay(_REDELIVERY_BACKOFF, s.redeliveries, _REDELIVERY_BACKOFF_CAP)
                self._timers[s.sid] = asyncio.get_running_loop().call_later(
                    delay, lambda: self.resume(s, retry=True))
                return
            s.hint = ""
            s.redeliveries += 1
            if s.redeliveries > MAX_REDELIVERIES:
                log.warning("socket %s: object %s unreachable; closing", s.sid, s.oid.hex()[:16])
                s.held = s.bounced = None
                registry.writer.close_client(s, CLOSE_INTERNAL, "object unreachable")
                return
            s.node = owner
            link = registry.link(owner)
            link.push(registry.register_frame(s))
            bounced.sort(key=lambda m: m[0])
            for _seq, data, text in bounced:
                registry.send_up(s, link, data, text)
        held, s.held, s.bounced = s.held, None, None
        if held:
            link = registry.link(s.node)
            for data, text in held:
                registry.send_up(s, link, data, text)
        release(s)

    def forget(self, s: EdgeSocket) -> None:
        """``s`` is closed: nothing of it is resent."""
        timer = self._timers.pop(s.sid, None)
        if timer is not None:
            timer.cancel()
        s.held = s.bounced = None
