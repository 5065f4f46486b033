"""The edge's public HTTP listener against slow and greedy clients: a cap on open connections,
a deadline for each request head, and a deadline for each request body.

* **Connections** (``max_connections``): one more connection than the cap is answered
  ``503`` (JSON, ``Retry-After: 1``) and closed without being read, so that an edge never runs
  out of file descriptors and a client beyond the cap hears why. Connections being refused
  are themselves bounded (``_MAX_REFUSING``); beyond that they are closed at once.
* **Request heads** (``header_timeout``): a connection must send a complete request head within
  the deadline from its start, and, kept alive, from the first byte of each later head; else it
  is closed. A kept-alive connection that sends nothing is closed after ``idle_timeout``
  (aiohttp's keep-alive timer). A WebSocket, once upgraded, has no deadline (idle sockets are
  the point of hibernation; TCP keepalive finds dead ones).
* **Request bodies**: see ``duro.edge.bodies``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["EdgeServer"]

log = logging.getLogger("duro.edge.http")

_MAX_REFUSING = 128  # connections beyond the cap being answered 503 at once
_REFUSE_LINGER = 1.0  # seconds a refused connection may take to read its 503
_LINGER = 2.0  # seconds the rest of a refused body is read and dropped (aiohttp: 10)


def _refusal() -> bytes:
    body = json.dumps({"error": {
        "code": "overloaded", "message": "this edge holds its maximum of connections; retry",
        "retryable": True, "overloaded": True}}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


_REFUSAL = _refusal()


class _ClientFaults(logging.Filter):
    """aiohttp logs every malformed request it answers 400 with a traceback at ERROR: any client
    could fill the edge's log with them. They are the client's fault, and the access log has the
    400: keep them only when ``duro.edge.http`` logs at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            return log.isEnabledFor(logging.DEBUG)
        return True


_CLIENT_FAULTS = _ClientFaults()


class _Refuse(asyncio.Protocol):
    """A connection beyond the cap: answer 503, half-close, drop it shortly after (so the client
    can read the answer before a reset)."""

    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = transport  # type: ignore[assignment]
        assert t is not None
        self.server.refusing += 1
        self.server.on_refused("connections")
        if self.server.refusing > _MAX_REFUSING:
            t.abort()
            return
        t.write(_REFUSAL)
        if t.can_write_eof():
            t.write_eof()
        asyncio.get_running_loop().call_later(_REFUSE_LINGER, t.abort)

    def data_received(self, data: bytes) -> None:
        pass  # its request is not read

    def eof_received(self) -> bool:
        if self.transport is not None:
            self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.refusing -= 1


class _Handler(web.RequestHandler):
    """aiohttp's connection protocol, telling the server when a kept-alive connection starts
    its next request head (its first byte after an answer)."""

    __slots__ = ("_edge", "_between")  # (slots: no __dict__ per idle WebSocket)

    def __init__(self, edge: EdgeServer, **kwargs: Any) -> None:
        super().__init__(edge, **kwargs)
        self._edge = edge
        self._between = False  # answered; no byte of the next request yet

    def data_received(self, data: bytes) -> None:
        if self._between and data:
            self._between = False
            self._edge.head_started(self)
        super().data_received(data)


class EdgeServer(web.Server):
    """aiohttp's low-level server with a cap on open connections and a deadline for every
    request head (from the connection's start, then from the first byte of each later head)."""

    def __init__(self, handler: Any, *, max_connections: int, header_timeout: float,
                 idle_timeout: float,
                 on_refused: Callable[[str], None] = lambda reason: None, **kwargs: Any) -> None:
        # lingering_time: after an early answer (408, 413), the rest of a body is read and
        # dropped for at most this long, so the client sees the answer rather than a reset.
        kwargs.setdefault("lingering_time", _LINGER)
        super().__init__(handler, keepalive_timeout=idle_timeout, **kwargs)
        server_log = logging.getLogger("aiohttp.server")
        if _CLIENT_FAULTS not in server_log.filters:
            server_log.addFilter(_CLIENT_FAULTS)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.on_refused = on_refused
        self.open = 0
        self.refusing = 0
        self._heads: dict[Any, asyncio.TimerHandle] = {}  # connections owing a request head
        # Connections sending a streamed response -> its task, cancelled when the client goes
        # (aiohttp does not cancel handlers; a stream waiting for its next chunk would not know).
        self._streaming: dict[Any, asyncio.Task[Any]] = {}

    def __call__(self) -> Any:
        if self.open >= self.max_connections:
            return _Refuse(self)
        return _Handler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.open += 1
        self.head_started(handler)

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.open -= 1
        streaming = self._streaming.pop(handler, None)
        if streaming is not None:
            streaming.cancel()
        timer = self._heads.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def streaming(self, handler: Any, task: asyncio.Task[Any] | None) -> None:
        """Cancel ``task`` if ``handler``'s client goes away (None: no longer)."""
        if task is None:
            self._streaming.pop(handler, None)
        else:
            self._streaming[handler] = task

    def head_started(self, handler: Any) -> None:
        """A request head is on its way: it must be complete within ``header_timeout``."""
        if handler not in self._heads:
            self._heads[handler] = asyncio.get_running_loop().call_later(
                self.header_timeout, self._head_overdue, handler)

    def head_received(self, handler: Any) -> None:
        """The connection's request head is in (the request is being handled)."""
        if self._heads:
            timer = self._heads.pop(handler, None)
            if timer is not None:
                timer.cancel()

    def answered(self, handler: Any) -> None:
        """The request is handled (not upgraded): the next head's deadline starts with its
        first byte."""
        if isinstance(handler, _Handler):
            handler._between = True

    def _head_overdue(self, handler: Any) -> None:
        if self._heads.pop(handler, None) is not None:
            self.on_refused("header_timeout")
            handler.force_close()
