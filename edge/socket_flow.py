"""Flow control of client messages towards objects: per-socket windows and the edge's budget.

* A socket may have at most ``socket_window`` messages and ``socket_window_bytes`` bytes in
  flight to its object (one message is always allowed when none is in flight); the edge at most
  ``socket_inflight_bytes`` over every socket. A client over its window is simply not read (TCP
  pushes back on it), so one slow object or client stalls no one else.
* A message is in flight from :meth:`FlowControl.sent` until the node ACKs it (handled, in
  order: :meth:`acked`), bounces it (did not run: :meth:`bounced`, charged again when resent),
  or its stream breaks or socket closes (:meth:`drop`).
* Sockets stopped by the edge's budget are woken when any socket frees bytes.

No I/O here: the socket manager reads clients and sends frames; this counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from duro.edge.socket_state import EdgeSocket, release

if TYPE_CHECKING:
    from duro.edge.config import EdgeConfig

__all__ = ["FlowControl"]


class FlowControl:
    """The windows of every socket of one edge, and the edge's budget of bytes in flight."""

    __slots__ = ("config", "inflight_bytes", "_blocked")

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        # Client message bytes in flight to objects, over every socket (``socket_inflight_bytes``
        # bounds it), and the sockets waiting for some of it to be freed.
        self.inflight_bytes = 0
        self._blocked: set[EdgeSocket] = set()

    def may_send(self, s: EdgeSocket, n: int) -> bool:
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

    def sent(self, s: EdgeSocket, n: int) -> int:
        """Count a message of ``n`` bytes from ``s`` as in flight; return its number."""
        s.unacked += 1
        s.seq += 1
        if s.inflight is None:
            s.inflight = {}
        s.inflight[s.seq] = n
        s.unacked_bytes += n
        self.inflight_bytes += n
        return s.seq

    def acked(self, s: EdgeSocket, count: int) -> None:
        """The ``count`` oldest messages in flight of ``s`` were handled."""
        inflight = s.inflight
        freed = 0
        while count and inflight:
            freed += inflight.pop(next(iter(inflight)))
            count -= 1
        self._free(s, freed)

    def bounced(self, s: EdgeSocket, seq: int) -> None:
        """Message ``seq`` did not run (UNKNOWN): it is sent again later, and charged again."""
        self._free(s, s.inflight.pop(seq, 0) if s.inflight else 0)

    def drop(self, s: EdgeSocket) -> None:
        """Every message in flight of ``s`` is lost (its stream broke) or moot (it closed)."""
        if s.inflight:
            self._free(s, sum(s.inflight.values()))
        s.inflight = None

    def forget(self, s: EdgeSocket) -> None:
        """``s`` is closed: drop what it has in flight, and stop waking it."""
        self.drop(s)
        self._blocked.discard(s)

    def _free(self, s: EdgeSocket, n: int) -> None:
        if not n:
            return
        s.unacked_bytes -= n
        self.inflight_bytes -= n
        if self._blocked:
            blocked, self._blocked = self._blocked, set()
            for b in blocked:
                release(b)
