"""The way from the edge to a client: each socket's own queue and writer, and the slow-client
policy.

* **Fast path**: a client that keeps up (nothing queued, its transport buffer under
  ``DIRECT_WRITE_LIMIT``) gets each frame written into its transport at once, without a task.
* **Queue**: otherwise frames wait in the socket's own queue, drained by its own writer task; the
  node stream's reader never waits on a client.
* **Slow client**: a client whose queue plus transport buffer grows over
  ``max_socket_buffer_bytes`` does not read: it gets a close frame with **1008** ("client too
  slow") written straight into its transport, is dropped if it does not drain within 5 s, and
  its object hears ``web_socket_close(ws, 1008, ...)`` (``on_gone``).
* **Dead clients** (no FIN) are found by TCP keepalive (:func:`tcp_keepalive`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import WSMsgType

from duro.edge.socket_state import CLOSE_SLOW_CLIENT, EdgeSocket
from duro.edge.ws_frames import close_frame, frame_header

if TYPE_CHECKING:
    from duro.edge.config import EdgeConfig
    from duro.edge.metrics import EdgeMetrics

__all__ = ["ClientWriter", "tcp_keepalive", "DIRECT_WRITE_LIMIT"]

log = logging.getLogger("duro.edge.sockets")

DIRECT_WRITE_LIMIT = 64 * 1024


def tcp_keepalive(transport: Any) -> None:
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



class ClientWriter:
    """Frames from objects to their clients, for every socket of one edge."""

    def __init__(self, config: EdgeConfig, metrics: EdgeMetrics,
                 on_gone: Callable[[EdgeSocket], None]) -> None:
        self.config = config
        self.metrics = metrics
        self._on_gone = on_gone  # the client is gone: tell its object

    def enqueue(self, s: EdgeSocket, data: bytes, text: bool) -> None:
        transport = s.transport
        out = s.out
        if (not out and s.writer is None and transport is not None
                and not transport.is_closing() and s.ws is not None and not s.ws.closed
                and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT):
            # Fast path: the client keeps up, so write the frame now, without a task. One
            # transport.write per frame keeps frames whole next to aiohttp's own (pings, close).
            transport.write(frame_header(len(data), text) + data)
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
            transport.write(close_frame(CLOSE_SLOW_CLIENT, s.close_reason))
            transport.close()
            asyncio.get_running_loop().call_later(5.0, transport.abort)
        if s.writer is not None:
            s.writer.cancel()
        self._on_gone(s)

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

    def close_after_queue(self, s: EdgeSocket, code: int, reason: str) -> None:
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

    def close_client(self, s: EdgeSocket, code: int, reason: str) -> None:
        """The edge closes a client socket itself; its object hears ``web_socket_close``."""
        s.close_code, s.close_reason = code, reason
        self.close_after_queue(s, code, reason)
